"""The benchmark's floor: a bare Flask app that parses a CDS Hooks request and answers ``{"cards": []}``.

It runs under exactly the gunicorn settings of ``cds-service serve`` (cds_service.server.cli.gunicorn_options), so the
difference between it and the service is the service's own work: validation, the record, facts, rules, cards,
the feedback bookkeeping, logs and metrics.

    python bench/floor_app.py --port 8090 [--workers 2 --threads 4]
"""
from __future__ import annotations

import argparse

from flask import Flask, request

from cds_service.server.cli import gunicorn_options, run_gunicorn

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def hook(service_id: str) -> dict[str, list[object]]:
    request.get_json(force=True)  # parse the whole body, as the service must
    return {"cards": []}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    run_gunicorn(app, gunicorn_options("127.0.0.1", args.port, args.workers, args.threads, "WARNING"))


if __name__ == "__main__":
    main()
