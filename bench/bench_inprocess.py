"""In-process CPU of one patient-view hook call: bench_http.py's bodies through the Flask test client, no server.

Each call comes from a clinician new to the patient (``bench_http.as_new_user``), so the repeat check reads the
database and finds nothing and every call builds and returns its cards. Prints the median and mean thread CPU
time per call for each round (CPU time, not wall-clock: on a machine shared with other work it moves far less);
``--profile`` prints cProfile's cumulative listing instead. To compare two checkouts, run it once with each on
``PYTHONPATH``, alternating.

    .venv/bin/python bench/bench_inprocess.py                           # 200 labs, 5 rounds of 300 calls
    .venv/bin/python bench/bench_inprocess.py --repeat-after PT0S       # the repeat check off
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/bench_inprocess.py --rounds 2
"""
from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import statistics
import tempfile
import time
from typing import Any

from bench_http import SERVICE_ID, as_new_user, hook_bodies

from cds_service.app import create_app

KEYS = ["patient", "labs", "symptoms", "conditions", "medrequests", "medstatements"]
BODY_VARIANTS = 12
WARMUP_CALLS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=200)
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat-after", help="the repeat_after setting (default: the service's)")
    parser.add_argument("--profile", action="store_true", help="one round under cProfile")
    args = parser.parse_args()
    config: dict[str, Any] = {"data_dir": tempfile.mkdtemp(prefix="cds-bench-"), "log_level": "WARNING"}
    if args.repeat_after:
        config["repeat_after"] = args.repeat_after
    client = create_app(config).test_client()
    logging.disable(logging.INFO)  # the request log line is measured by bench_http.py, not here
    bodies = hook_bodies(args.labs, KEYS, BODY_VARIANTS)
    serial = 0

    def call() -> None:
        nonlocal serial
        serial += 1
        body = as_new_user(bodies[serial % len(bodies)], serial)
        response = client.post(f"/cds-services/{SERVICE_ID}", data=body, content_type="application/json")
        if response.status_code != 200 or not response.get_json()["cards"]:
            raise SystemExit(f"unexpected answer {response.status_code}: {response.get_data(as_text=True)[:300]}")

    for _ in range(WARMUP_CALLS):
        call()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(lambda: [call() for _ in range(args.calls)])
        pstats.Stats(profile).sort_stats("cumulative").print_stats(50)
        return
    for round_ in range(args.rounds):
        times = []
        for _ in range(args.calls):
            started = time.thread_time()
            call()
            times.append(time.thread_time() - started)
        print(f"round {round_ + 1}: thread CPU per call median {statistics.median(times) * 1000:.2f} ms, "
              f"mean {statistics.mean(times) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
