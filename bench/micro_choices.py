"""In-process figures behind library choices the code names without numbers (bench/README.md, "Library choices").

    .venv/bin/python bench/micro_choices.py

Each comparison is timed five times, alternating the two sides; the median ratio is printed.
"""
from __future__ import annotations

import json
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from cds_service.config import load_config
from cds_service.evaluation import Runtime, answer_hook, read_request, service_for
from cds_service.schemas import fast_validator, validator
from cds_service.wire.validation import _sound_cards, compile_schemas, empty_elements

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 5


def ratio(slow: Callable[[], Any], fast: Callable[[], Any], number: int) -> float:
    """Median over ROUNDS of the time of ``slow`` divided by the time of ``fast``."""
    ratios = []
    for _ in range(ROUNDS):
        ratios.append(timeit.timeit(slow, number=number) / timeit.timeit(fast, number=number))
    return statistics.median(ratios)


def prefetch_body(entries: int) -> bytes:
    labs = [
        {
            "resource": {
                "resourceType": "Observation",
                "id": str(i),
                "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
                "valueQuantity": {"value": i / 10, "unit": "mmol/L"},
            }
        }
        for i in range(entries)
    ]
    return json.dumps({"prefetch": {"labs": {"resourceType": "Bundle", "entry": labs}}}).encode()


def main() -> None:
    started = time.perf_counter()
    compile_schemas()
    print(f"compile_schemas: {time.perf_counter() - started:.3f} s")

    runtime = Runtime.load(load_config(overrides={"now": "2026-11-01T00:00:00Z"}))
    raw = (REPO / "fixtures/requests/diuretic-hypokalemia-critical.json").read_bytes()
    body = read_request(runtime, raw)
    response = answer_hook(runtime, service_for(runtime, "muscle-cramps-patient-view"), body).response
    card = response["cards"][0]
    prefetch = prefetch_body(1000)
    slow_schema, fast_schema = validator("request"), fast_validator("request")
    rule_texts = [path.read_text() for path in (REPO / "rules").rglob("*.yaml")]

    comparisons: list[tuple[str, Callable[[], Any], Callable[[], Any], int]] = [
        ("response, json.dumps / orjson.dumps", lambda: json.dumps(response), lambda: orjson.dumps(response), 5000),
        ("1000-entry body, json.loads / orjson.loads", lambda: json.loads(prefetch),
         lambda: orjson.loads(prefetch), 50),
        ("request schema, jsonschema / jsonschema-rs", lambda: slow_schema.is_valid(body),
         lambda: fast_schema.is_valid(body), 100),
        ("card soundness, Python walk / jsonschema-rs", lambda: list(empty_elements(card)),
         lambda: _sound_cards().is_valid({"cards": [card]}), 2000),
        ("rule files, SafeLoader / CSafeLoader", lambda: [yaml.load(t, Loader=yaml.SafeLoader) for t in rule_texts],
         lambda: [yaml.load(t, Loader=yaml.CSafeLoader) for t in rule_texts], 2),
    ]
    for label, slow, fast, number in comparisons:
        print(f"{label}: {ratio(slow, fast, number):.1f}x")

if __name__ == "__main__":
    main()
