"""Benchmark of ``cds-service scan``: patients per second against a floor, scaling from one worker to two, and
peak memory per worker as the population grows. Method and figures: bench/README.md ("Population scan").

Every patient has three years of Synthea-shaped history (bench/synthea_shaped.py: about 180 resources and 150 KB
each, as Synthea's own patients have; no cramps); for a minority, one of the project's fixture patients (cramps
with the labs and drugs their rules read) is cloned into that history under the new id. The population is
written as a Bulk export (one NDJSON file per type). The floor is the same Dask pipeline (read, parse
each line for its patient, join Medications, shuffle by patient, group each partition's lines per patient) that
counts the patients instead of answering.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from synthea_shaped import history

from cds_service.config import load_config
from cds_service.evaluation import Runtime
from cds_service.scan.pipeline import BLOCK_SIZE, Plan, connect, run
from cds_service.scan.source import open_source

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-01T00:00:00Z"
CRAMPS_SHARE = 0.15  # patients cloned from a fixture (all of which document cramps)


def fixtures() -> list[list[dict[str, Any]]]:
    return [[e["resource"] for e in json.loads(p.read_text())["entry"]]
            for p in sorted((ROOT / "fixtures" / "bundles").glob("*.json"))]


def clone(resources: list[dict[str, Any]], patient_id: str) -> list[dict[str, Any]]:
    """A fixture patient under a new id (every id and patient reference rewritten)."""
    text = json.dumps(resources)
    old = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return json.loads(text.replace(old, patient_id))


def write_population(folder: Path, patients: int, seed: int = 7) -> int:
    rng, now = random.Random(seed), datetime.fromisoformat(NOW)
    templates = fixtures()
    files: dict[str, Any] = {}
    count = 0
    lines: dict[str, list[str]] = defaultdict(list)
    for number in range(patients):
        pid = f"bench-{number}"
        resources = history(rng, pid, now)
        if rng.random() < CRAMPS_SHARE:  # the fixture's Patient and findings, labs and drugs, within the history
            resources = clone(rng.choice(templates), pid) + [r for r in resources if r["resourceType"] != "Patient"]
        for item in resources:
            lines[item["resourceType"]].append(orjson.dumps(item).decode())
            count += 1
        if number % 1000 == 999 or number == patients - 1:  # flush: the generator never holds the population
            for rtype, chunk in lines.items():
                stream = files.get(rtype) or files.setdefault(rtype, (folder / f"{rtype}.ndjson").open("w"))
                stream.write("\n".join(chunk) + "\n")
            lines.clear()
    for stream in files.values():
        stream.close()
    return count


def cpu_seconds() -> float:
    """This process's CPU time so far, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak() -> None:
    """Start this process's peak resident set size (``VmHWM``) afresh: Linux's /proc/self/clear_refs, value 5."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    """This process's peak resident set size since ``reset_peak``, in MB (``VmHWM`` of /proc/self/status).

    Not getrusage's ru_maxrss: a process started by fork and exec, as Dask starts its workers, keeps there the
    peak of the process it was forked from (here the one that generated the population)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def measure(folder: Path, workers: int, *, evaluate: bool, block_size: int) -> dict[str, float]:
    """One run on a fresh local cluster: wall seconds, the workers' CPU seconds summed (what the run cost,
    whatever else loads the machine) and the largest worker's peak RSS during the run."""
    settings = load_config(None, overrides={"now": NOW})
    runtime = Runtime.load(settings)
    plan = Plan(open_source(folder), runtime, "patient-view", block_size=block_size, evaluate=evaluate)
    with tempfile.TemporaryDirectory() as spool, connect(None, workers) as client:
        client.run(reset_peak)  # every worker up (and its peak memory reset) before the clock starts
        before = client.run(cpu_seconds)
        started = time.perf_counter()
        outcome = run(plan, client, Path(spool), progress=False)
        seconds = time.perf_counter() - started
        after = client.run(cpu_seconds)
        peaks = client.run(peak_mb)
    return {"patients": outcome.tally.patients, "seconds": seconds, "per_second": outcome.tally.patients / seconds,
            "worker_cpu": sum(after[w] - before[w] for w in after), "peak_mb": max(peaks.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000, help="the smaller population of the memory check")
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (args.small, args.patients):
            folder = Path(tmp) / str(size)
            folder.mkdir()
            resources = write_population(folder, size)
            megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            print(f"{size} patients: {resources} resources, {megabytes:.0f} MB NDJSON", file=sys.stderr)
            runs = [("floor", 2, False), ("scan", 2, True)] + ([("scan", 1, True)] if size == args.patients else [])
            for name, workers, evaluate in runs:
                key = f"{name} {workers}w {size}"
                results[key] = measure(folder, workers, evaluate=evaluate, block_size=args.block_size)
                print(key, json.dumps({k: round(v, 2) for k, v in results[key].items()}), file=sys.stderr)
    big, small = args.patients, args.small
    ratio = results[f"scan 2w {big}"]["seconds"] / results[f"floor 2w {big}"]["seconds"]
    speedup = results[f"scan 1w {big}"]["seconds"] / results[f"scan 2w {big}"]["seconds"]
    growth = results[f"scan 2w {big}"]["peak_mb"] / results[f"scan 2w {small}"]["peak_mb"]
    print("| run | patients | seconds | patients/s | worker CPU s | peak RSS per worker |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, value in results.items():
        print(f"| {key} | {value['patients']:.0f} | {value['seconds']:.1f} | {value['per_second']:.0f} | "
              f"{value['worker_cpu']:.1f} | {value['peak_mb']:.0f} MB |")
    cpu_ratio = results[f"scan 2w {big}"]["worker_cpu"] / results[f"floor 2w {big}"]["worker_cpu"]
    print(f"(worker CPU, scan / floor: {cpu_ratio:.2f})")
    goals = [("scan / floor <= 1.5", ratio, ratio <= 1.5), ("speed-up 1 -> 2 workers >= 1.6", speedup, speedup >= 1.6),
             (f"peak memory {big} / {small} patients <= 1.2", growth, growth <= 1.2)]
    for text, value, met in goals:
        print(f"{text}: {value:.2f} {'met' if met else 'NOT met'}")
    return 0 if all(met for _t, _v, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
