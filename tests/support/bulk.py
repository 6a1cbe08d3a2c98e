"""Bulk FHIR exports for the scan's tests: the fixture patients and generated histories as NDJSON files, and a
real Dask cluster (``dask scheduler`` and two ``dask worker`` processes on loopback)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from support.histories import long_history
from support.live import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent.parent
BUNDLES = ROOT / "fixtures" / "bundles"
REQUESTS = ROOT / "fixtures" / "requests"
NOW = "2026-11-01T00:00:00Z"  # the fixtures' evaluation time (fixtures/expectations.json)
GENERATED = 30  # generated patients


def fixture_resources() -> list[dict[str, Any]]:
    """Every resource of every fixture patient Bundle."""
    return [e["resource"] for path in sorted(BUNDLES.glob("*.json")) for e in json.loads(path.read_text())["entry"]]


def generated_patient(seed: int) -> list[dict[str, Any]]:
    """One generated history (tests/support/histories.py) as an export holds it: own ids, subject references."""
    patient_id = f"gen-{seed}"
    record = long_history(seed, datetime(2026, 11, 1, tzinfo=UTC))
    resources = []
    for rtype, items in record.resources.items():
        for item in items:
            resource = {**item, "id": f"{patient_id}-{item['id']}"}
            if rtype == "Patient":
                resource["id"] = patient_id
            else:
                resource["subject"] = {"reference": f"Patient/{patient_id}"}
            resources.append(resource)
    return resources


def population() -> list[dict[str, Any]]:
    return fixture_resources() + [r for seed in range(GENERATED) for r in generated_patient(seed)]


def write_export(folder: Path, resources: list[dict[str, Any]]) -> Path:
    """Write ``resources`` as a Bulk Data export writes them: one type per file, Observations split over two
    files, the second gzipped (as Synthea's and servers' exports may be)."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for resource in resources:
        by_type[resource["resourceType"]].append(json.dumps(resource).encode() + b"\n")
    for rtype, lines in by_type.items():
        if rtype == "Observation":
            half = len(lines) // 2
            (folder / "Observation.ndjson").write_bytes(b"".join(lines[:half]))
            (folder / "Observation.2.ndjson.gz").write_bytes(gzip.compress(b"".join(lines[half:])))
        else:
            (folder / f"{rtype}.ndjson").write_bytes(b"".join(lines))
    return folder


def scan_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cds_service.server.cli", "scan", *args]


def run_scan(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``cds-service scan`` as a command, its output captured."""
    return subprocess.run(
        scan_command(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@contextmanager
def dask_cluster(tmp: Path, workers: int = 2) -> Iterator[str]:
    """A real scheduler and ``workers`` single-threaded worker processes on loopback; yield the address."""
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = []
    logs = []
    try:
        log = open(tmp / "scheduler.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        processes.append(subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT,
        ))
        for number in range(workers):
            log = open(tmp / f"worker-{number}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            processes.append(subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                 "--name", f"test-worker-{number}"],
                stdout=log, stderr=subprocess.STDOUT,
            ))
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(workers, timeout=120)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for process in reversed(processes):
            stop_process(process, 20)
        for log in logs:
            log.close()
