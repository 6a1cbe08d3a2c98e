"""Micro-benchmark: what a site's code maps (``concept_maps_dir``) cost a hook call's ``build_facts``.

Run: ``python bench/bench_concept_maps.py [--labs N] [--repeat N]``. The patient is ``bench_facts.py``'s (labs of a
Synthea basic metabolic panel, 30 medication requests, 20 conditions). The site's maps, written to a temporary
folder as three ConceptMap files and read by ``read_site_maps`` as the service does at start, map a local code
onto every LOINC, RxNorm and SNOMED CT code of that patient the service reads, plus ``--extra`` local lab codes
onto the other analytes' LOINC codes (a hospital's whole lab catalogue). Three ``build_facts`` runs are
interleaved in every round and timed in CPU time of this process (``time.process_time``, less disturbed by other
load than wall time):

- shipped: the standard-coded record, the shipped value sets alone (the service without ``concept_maps_dir``);
- with maps: the same record, the value sets plus the site's maps (what the maps cost a record that needs none);
- local codes: the record with every code replaced by its local code, read through the maps.

Prints the medians and the ratios to "shipped", and how long reading and checking the maps took once.
Not a test: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench_facts import NOW, hook_body  # run as a script: this folder is on sys.path

from cds_service.config import load_config
from cds_service.facts.build import build_facts
from cds_service.facts.concept_maps import read_site_maps
from cds_service.facts.terminology import LOINC, RXNORM, SNOMED, SystemCode, Terminology
from cds_service.record.obtain import obtain_record
from cds_service.record.settings import RecordSettings
from cds_service.record.templates import build_prefetch_templates
from cds_service.wire.hook_request import HookCall

LOCAL = {LOINC: "http://hospital.example.org/lab-codes", RXNORM: "urn:oid:2.16.840.1.113883.3.9999.1.2",
         SNOMED: "http://hospital.example.org/problem-codes"}


def local_code(code: str) -> str:
    return f"L-{code}"


def codes_in(node: Any, found: set[tuple[str, str]]) -> None:
    """Every (system, code) of a coding in ``node`` whose system has a local twin."""
    if isinstance(node, list):
        for item in node:
            codes_in(item, found)
    elif isinstance(node, dict):
        if node.get("system") in LOCAL and isinstance(node.get("code"), str):
            found.add((node["system"], node["code"]))
        for value in node.values():
            codes_in(value, found)


def localised(node: Any) -> Any:
    """``node`` with every standard coding replaced by its local twin."""
    if isinstance(node, list):
        return [localised(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("system") in LOCAL and isinstance(node.get("code"), str):
        return {**node, "system": LOCAL[node["system"]], "code": local_code(node["code"])}
    return {key: localised(value) for key, value in node.items()}


def write_maps(folder: Path, codes: set[tuple[str, str]], terminology: Terminology, extra: int) -> None:
    """One ConceptMap per target system; ``extra`` more local lab codes onto the other LOINC codes, in turn."""
    others = [code for code in terminology.lab_loinc_codes() if (LOINC, code) not in codes]
    groups: dict[str, list[dict[str, Any]]] = {system: [] for system in LOCAL}
    for system, code in sorted(codes):
        groups[system].append({"code": local_code(code), "target": [{"code": code, "equivalence": "equivalent"}]})
    for index in range(extra):
        groups[LOINC].append({"code": f"X-{index}", "target": [
            {"code": others[index % len(others)], "equivalence": "equivalent"}]})
    for number, (system, elements) in enumerate(groups.items()):
        resource = {"resourceType": "ConceptMap", "status": "active",
                    "group": [{"source": LOCAL[system], "target": system, "element": elements}]}
        (folder / f"map-{number}.json").write_text(json.dumps(resource), "utf-8")


def interleaved(actions: list[Callable[[], object]], repeat: int) -> list[list[float]]:
    """CPU ms of each run of each action, run in turn within every round."""
    times: list[list[float]] = [[] for _ in actions]
    for _ in range(repeat):
        for action, samples in zip(actions, times, strict=True):
            started = time.process_time()
            action()
            samples.append((time.process_time() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=1000, help="lab Observations in the record")
    parser.add_argument("--extra", type=int, default=2000, help="more local lab codes in the maps")
    parser.add_argument("--repeat", type=int, default=60, help="rounds (median reported)")
    args = parser.parse_args()
    logging.getLogger("cds_service.record").setLevel(logging.WARNING)
    shipped = Terminology.load()
    body = json.loads(hook_body(args.labs))
    codes: set[tuple[str, str]] = set()
    codes_in(body["prefetch"], codes)
    codes = {code for code in codes if shipped.reads(SystemCode(*code))}  # a map onto any other code is refused
    with tempfile.TemporaryDirectory() as folder:
        write_maps(Path(folder), codes, shipped, args.extra)
        started = time.process_time()
        maps = read_site_maps(Path(folder), shipped)
        load_ms = (time.process_time() - started) * 1000
    assert not maps.problems, maps.problems
    site = shipped.with_site_maps({source: m.target for source, m in maps.mappings.items()})
    templates, settings = build_prefetch_templates(shipped), RecordSettings.from_settings(load_config())
    record = obtain_record(HookCall.from_request("bench", body), templates, settings)
    local_body = {**body, "prefetch": localised(body["prefetch"])}
    local_record = obtain_record(HookCall.from_request("bench", local_body), templates, settings)
    standard, local = build_facts(record, shipped, NOW), build_facts(local_record, site, NOW)
    assert {k: len(v) for k, v in standard.labs.items()} == {k: len(v) for k, v in local.labs.items()}
    assert [m.classes for m in standard.medications] == [m.classes for m in local.medications]
    times = interleaved([partial(build_facts, record, shipped, NOW), partial(build_facts, record, site, NOW),
                         partial(build_facts, local_record, site, NOW)], args.repeat)
    base, with_maps, local_ms = (statistics.median(t) for t in times)
    print(f"{args.labs} labs; maps: {len(maps.mappings)} local codes, read and checked once in {load_ms:.0f} ms CPU")
    print(f"{'build_facts (CPU ms, median)':<36} {'ms':>8} {'ratio':>6}")
    for name, value in (("shipped value sets", base), ("with maps, standard codes", with_maps),
                        ("with maps, local codes", local_ms)):
        print(f"{name:<36} {value:>8.2f} {value / base:>6.2f}")


if __name__ == "__main__":
    main()
