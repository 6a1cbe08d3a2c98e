"""Read one block of one NDJSON file: each line's patient and prefetch keys, kept as the line's own bytes.

What cannot be used is counted by reason, and each line that is wrong (not JSON, not a resource, an unknown
resource type, no patient reference) is reported with its file and line, up to ``PROBLEMS_PER_BLOCK`` per block.
Resources of types no template reads, and resources no template would return (a stopped MedicationRequest, an
Observation of another code), are counted only: an export holds millions of them and nothing is wrong with them.
A resource routed to a context field (an Encounter, for encounter-start) travels as its id, status and period
only: that is all the choice of the patient's encounter reads, and a record holds many of them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from .routing import Router, medication_id, patient_of

PROBLEMS_PER_BLOCK = 50
CONTEXT_ELEMENTS = ("resourceType", "id", "status", "period")
READ, USED = "read", "used"
Record = tuple[str, str, int, bytes]  # (patient id, prefetch key, line number in the block, the NDJSON line)
Lines = list[tuple[str, bytes]]  # (prefetch key, NDJSON line) of one patient


@dataclass(slots=True)
class Block:
    """What one block of a file yielded. Line numbers in ``problems`` count from the block's first line."""

    file: str
    index: int
    lines: int = 0
    records: list[Record] = field(default_factory=list)
    medications: list[tuple[str, int, bytes]] = field(default_factory=list)  # (Medication id, line number, line)
    references: list[tuple[str, str, str]] = field(default_factory=list)  # (Medication id, patient, key)
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[dict[str, Any]] = field(default_factory=list)

    def problem(self, line: int, text: str) -> None:
        self.counts[text.split(":", 1)[0]] += 1
        if len(self.problems) < PROBLEMS_PER_BLOCK:
            self.problems.append({"file": self.file, "block": self.index, "line": line, "problem": text})


def read_block(data: bytes, file: str, index: int, router: Router) -> Block:
    """Every line of ``data`` (the ``index``-th block of ``file``, whole lines) sorted into records and counts."""
    block = Block(file, index)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    block.lines = len(lines)
    wanted = router.resource_types
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        block.counts[READ] += 1
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            block.problem(number, f"malformed NDJSON line: {exc}")
            continue
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(kind, str):
            block.problem(number, "not a FHIR resource: no resourceType")
        elif kind not in wanted:
            if is_fhir_resource_type(kind):
                block.counts[f"{kind}: a type the rules do not read"] += 1
            else:
                block.problem(number, f"unknown resource type: {kind[:64]}")
        elif kind == "Medication":
            _medication(block, number, resource, line)
        else:
            _patient_resource(block, number, resource, line, router)
    return block


def _medication(block: Block, number: int, resource: dict[str, Any], line: bytes) -> None:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        block.medications.append((rid, number, line))
    else:
        block.problem(number, "Medication without an id: no order can reference it")


def _patient_resource(block: Block, number: int, resource: dict[str, Any], line: bytes, router: Router) -> None:
    patient = patient_of(resource)
    if patient is None:
        block.problem(number, f"no patient reference: a {resource['resourceType']} without subject or patient")
        return
    keys = router.keys_of(resource)
    if not keys:
        block.counts[f"{resource['resourceType']}: no prefetch template asks for it"] += 1
        return
    block.counts[USED] += 1
    for test in keys:
        block.records.append((patient, test.key, number, _context_line(resource) if test.context else line))
        if test.includes_medications and (med := medication_id(resource)) is not None:
            block.references.append((med, patient, test.key))


def _context_line(resource: dict[str, Any]) -> bytes:
    return orjson.dumps({name: resource[name] for name in CONTEXT_ELEMENTS if name in resource})


@cache
def is_fhir_resource_type(name: str) -> bool:
    """Whether ``name`` is a FHIR R4 resource type (Encounter is; Quantity and Foo are not)."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except (ValueError, KeyError, AttributeError):
        return False
