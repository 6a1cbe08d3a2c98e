"""Partial prefetch benchmark: a hook call whose lab Bundle holds 500 of 1,500 labs and a ``next`` link.

The local FHIR engine (tests/fhir_server: Medplum's, on loopback, as the tests start it) holds the whole record of
bench_http.py's patient with 1,500 labs (its generators: visits of several analytes, newest lab two days ago).
Each hook request prefetches every key in full except the labs: their Bundle holds the 500 oldest labs (the first
page of an oldest-first search; ``--order newest`` sends the 500 newest instead, as a server honouring the
template's ``_sort=-date`` would) and a ``next`` link to the rest on the server. The production server
(``cds-service serve``, ``fhir_allowlist`` holding the engine, open and http on loopback allowed) answers it,
each call from a clinician new to the patient (``bench_http.as_new_user``: the repeat check runs and finds nothing);
sequentially, alternating request by request, the script also times

* one date-filtered search of the same server for those labs: the service's own lab search (its template plus
  ``date=ge`` the first day of the rules' longest look-back, its next pages followed), run by the record layer's
  own client (``obtain_record`` with the labs key absent and the others null), in this process;
* for comparison, the walk the service did before: the prefetched Bundle's next link followed page after page
  (``obtain_record`` without look-backs).

The test server caches a search's matches until its data changes, so every measurement runs warm (one warm-up
round first). Goal: the hook's median at most 1.5x the date-filtered search's.

    .venv/bin/python bench/bench_partial_prefetch.py              # about a minute on 2 cores
    .venv/bin/python bench/bench_partial_prefetch.py --order newest --requests 30
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from bench_http import (  # its generators and server
    PATIENT_ID,
    SERVICE_ID,
    USER_PLACEHOLDER,
    Client,
    as_new_user,
    machine,
    make_prefetch,
    running,
)

from cds_service.config import load_config
from cds_service.evaluation import Runtime
from cds_service.facts.build import first_day_within
from cds_service.record.obtain import obtain_record
from cds_service.record.settings import RecordSettings
from cds_service.record.templates import LABS, Lookback, fill
from cds_service.server.cli import _tune_gc
from cds_service.wire.hook_request import HookCall

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' way of starting the engine
from support.fhir_server import running_fhir_server

LAB_COUNT = 1500
FIRST_PAGE = 500
SERVER_PAGE = 100  # the test server's largest page
BODY_VARIANTS = 12  # fresh hookInstance per body, cycled
GOAL = 1.5


def on_the_server(prefetch: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource of a full prefetch, as the FHIR server holds them."""
    return [prefetch["patient"], *(e["resource"] for key, value in prefetch.items() if key != "patient"
                                   for e in value.get("entry", []))]


def partial_labs(template: str, base: str, order: str) -> dict[str, Any]:
    """The first ``FIRST_PAGE`` labs of the labs template's search in ``order`` (oldest or newest first) as the
    server pages them, in one Bundle with a next link to the server's page after them."""
    query = fill(template, {"patientId": PATIENT_ID})
    assert query is not None
    query = query.replace("_sort=-date", "_sort=-date" if order == "newest" else "_sort=date")
    query = query.replace("_count=500", f"_count={SERVER_PAGE}")
    pages = [requests.get(f"{base}/{query}&_offset={offset}", timeout=60).json()
             for offset in range(0, FIRST_PAGE, SERVER_PAGE)]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": pages[0]["total"],
        "link": [{"relation": "next", "url": f"{base}/{query}&_offset={FIRST_PAGE}"}],
        "entry": [entry for page in pages for entry in page["entry"]],
    }


def discovery(port: int) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/cds-services")
    services = json.loads(conn.getresponse().read())["services"]
    return next(s for s in services if s["id"] == SERVICE_ID)["prefetch"]


def hook_bodies(templates: dict[str, str], prefetch: dict[str, Any], base: str) -> list[dict[str, Any]]:
    return [
        {
            "hookInstance": str(uuid.uuid4()),
            "hook": "patient-view",
            "fhirServer": base,
            "context": {"userId": USER_PLACEHOLDER.decode(), "patientId": PATIENT_ID},
            "prefetch": {key: prefetch[key] for key in templates},
        }
        for _ in range(BODY_VARIANTS)
    ]


def timed(task: Callable[[], Any]) -> float:
    started = time.perf_counter()
    task()
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cds-bench-partial-"))
    try:
        with running_fhir_server() as fhir:
            base = fhir.base_url
            print(f"machine: {machine()}", flush=True)
            full = make_prefetch(LAB_COUNT, datetime.now(UTC), seed=0)
            labs = [entry["resource"] for entry in full[LABS]["entry"]]
            fhir.load(on_the_server(full))
            env = {
                **os.environ,
                "CDS_DATA_DIR": str(work / "data"),
                "CDS_FHIR_ALLOWLIST": json.dumps([base]),
                "CDS_FHIR_ALLOW_UNAUTHENTICATED": "true",
            }
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            service_cmd = [sys.executable, "-m", "cds_service.server.cli", "serve", "--workers", "2", "--threads", "4"]
            with running(service_cmd, env, work / "service.log") as service:
                templates = discovery(service.port)
                partial = {**full, LABS: partial_labs(templates[LABS], base, args.order)}
                bodies = [json.dumps(body).encode() for body in hook_bodies(templates, partial, base)]
                settings = RecordSettings.from_settings(load_config(overrides={
                    "fhir_allowlist": [base], "fhir_allow_unauthenticated": True, "fhir_max_pages": 20,
                    "hook_budget_seconds": 30.0, "fhir_read_timeout": 30.0,  # the engine's first, cold search is slow
                }))
                now = datetime.now(UTC)
                runtime = Runtime.load(load_config())
                lookbacks = {LABS: Lookback(first_day_within(now, runtime.fact_windows.lab_lookback), search=True)}
                call = json.loads(bodies[0])
                search_call = HookCall.from_request(SERVICE_ID, {**call, "prefetch": {
                    key: None for key in templates if key != LABS}})
                walk_call = HookCall.from_request(SERVICE_ID, {**call, "prefetch": {
                    **dict.fromkeys(templates), LABS: call["prefetch"][LABS]}})
                found = obtain_record(search_call, templates, settings, lookbacks=lookbacks).of_type("Observation")
                walked = obtain_record(walk_call, templates, settings).of_type("Observation")
                print(f"{len(labs)} labs on the server, {FIRST_PAGE} prefetched ({args.order} first); the "
                      f"date-filtered search finds {len(found)} (from {lookbacks[LABS].since}), the walk reads "
                      f"{len(walked) - FIRST_PAGE} more", flush=True)
                _tune_gc(None, None)  # the collector settings of the service's workers, for the in-process searches
                client = Client(service.port)
                for body in (hook_bodies(templates, full, base)[0], json.loads(bodies[0])):  # rules: full, partial
                    if not client.post(json.dumps(body).encode())[1]:
                        raise SystemExit(f"the service failed; see {work / 'service.log'}")
                samples: dict[str, list[float]] = {"hook": [], "search": [], "walk": []}
                tasks: dict[str, Callable[[], Any]] = {
                    "search": lambda: obtain_record(search_call, templates, settings, lookbacks=lookbacks),
                    "walk": lambda: obtain_record(walk_call, templates, settings),
                }
                errors = 0
                for i in range(args.warmup + args.requests):
                    order = ["hook", "search", "walk"] if i % 2 == 0 else ["walk", "search", "hook"]
                    for name in order:
                        if name == "hook":
                            seconds, ok = client.post(as_new_user(bodies[i % len(bodies)], i + 1))
                            errors += not ok
                        else:
                            seconds = timed(tasks[name])
                        if i >= args.warmup:
                            samples[name].append(seconds)
                client.close()
                log_tail = (work / "service.log").read_text(errors="replace").splitlines()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    ratio = medians["hook"] / medians["search"]
    print()
    print("| labs prefetched / on the server | order | hook median | date-filtered search median | hook / search "
          "| page walk median (before) | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| {FIRST_PAGE} / {len(labs)} | {args.order} first | {medians['hook']:.1f} ms | {medians['search']:.1f} ms "
          f"| {ratio:.2f}x | {medians['walk']:.1f} ms | {errors} |")
    print(f"\n{args.requests} requests each, alternating, after {args.warmup} warm-up rounds")
    hooks = [json.loads(line) for line in log_tail if '"hookInstance"' in line]
    last = {key: hooks[-1].get(key) for key in ("rules", "incomplete", "record_ms", "fhir_calls")}
    print(f"the service's last hook call: {last}")
    same = hooks[0]["rules"] == hooks[-1]["rules"] and not hooks[-1]["incomplete"]
    print(f"{'met' if same else 'NOT MET':8} the cards' rules equal those of the full prefetch: {hooks[0]['rules']}")
    met = ratio <= GOAL and errors == 0 and same
    print(f"\n{'met' if met else 'NOT MET':8} hook median <= {GOAL}x one date-filtered search: {ratio:.2f}x")
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", choices=("oldest", "newest"), default="oldest",
                        help="which 500 labs the prefetch holds: the oldest (default) or the newest")
    parser.add_argument("--requests", type=int, default=150, help="measured requests per target (default 150)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory with the server log")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
