"""One patient's hook call, exactly as the service answers it: the request body, read, checked and answered.

The body is assembled from the export's own lines (no re-serialisation): each prefetch key holds a searchset
Bundle of the resources its template would return, ``patient`` holds the Patient resource (``null`` when the
export has none for the id the other resources name). It then takes the path of an HTTP call: read_request
(limits, old labs left out unparsed), validate_envelope (the request schema), answer_hook (record, facts, rules,
cards) at the settings' ``now``. The context is the patient's, plus what the hook needs (scan/hooks.py: the
encounter of encounter-start, which its worklist rows name).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any, assert_never

import orjson

from ..config import Settings
from ..evaluation import Runtime, answer_hook, read_request, validate_envelope
from ..facts.model import Finding, LabResult, MedicationUse
from ..rules.criteria import Absence, Age, Evidence, Pairing, Timing
from ..rules.engine import IssuedCard
from ..rules.templates import analyte_name, evidence_date, timing_text, unit_text, value_text
from ..wire.errors import CdsError
from ..wire.services import Service
from .hooks import ENCOUNTER_ID, hook_context
from .lines import Lines
from .routing import Router
from .tally import Tally

log = logging.getLogger("cds_service.scan")
USER = "Practitioner/population-scan"  # the hook's userId: no clinician opens these records
ENTRY_START, ENTRY_END = b'{"resource":', b',"search":{"mode":"match"}}'  # around each line in a searchset
ENTRY_BETWEEN = ENTRY_END + b"," + ENTRY_START
INSTANCES = uuid.UUID("6f0c2f4e-3c1b-4d7e-9a43-7d5c1f0e2a91")  # namespace of the hookInstance of each patient


@lru_cache(maxsize=4)
def _runtime(settings_json: str) -> Runtime:
    """One runtime per worker process and settings (rules and terminology load once, not per task)."""
    logging.getLogger("cds_service").setLevel(logging.ERROR)  # incomplete records are counted, not logged
    return Runtime.load(Settings.model_validate_json(settings_json))


def group_lines(records: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """The lines of ``records`` (key, line) under each key."""
    lines: dict[str, list[bytes]] = {}
    for key, line in records:
        lines.setdefault(key, []).append(line)
    return lines


def request_body(
    patient: str, by_key: dict[str, list[bytes]], router: Router, hook: str, context: dict[str, str]
) -> bytes:
    """The CDS Hooks request for ``patient`` with every prefetch key filled from its lines, ``context`` added
    to the patient's."""
    head = {
        "hookInstance": str(uuid.uuid5(INSTANCES, patient)),
        "hook": hook,
        "context": {"userId": USER, "patientId": patient, **context},
    }
    parts = []
    for key in router.single_keys():
        lines = by_key.get(key)
        parts.append(b'"%s":%s' % (key.encode(), lines[0] if lines else b"null"))
    for key in router.search_keys():
        lines = by_key.get(key, [])
        entries = ENTRY_START + ENTRY_BETWEEN.join(lines) + ENTRY_END if lines else b""  # one join, not one per line
        bundle = b'{"resourceType":"Bundle","type":"searchset","total":%d,"entry":[%s]}' % (len(lines), entries)
        parts.append(b'"%s":%s' % (key.encode(), bundle))
    return orjson.dumps(head)[:-1] + b',"prefetch":{' + b",".join(parts) + b"}}"


def evaluate_partition(
    groups: Iterable[tuple[str, Lines]], settings_json: str, router: Router, hook: str
) -> list[tuple[Tally, list[dict[str, Any]]]]:
    """Each patient of one partition answered: the partition's tally and worklist rows (one per card).

    ``groups`` are the shuffle's output: each patient and its (key, line) pairs."""
    runtime = _runtime(settings_json)
    service = runtime.registry.for_hook(hook)
    if service is None:
        raise ValueError(f"no service answers {hook}")
    single, now = router.single_keys(), runtime.now()
    tally, rows = Tally(), []
    for patient, pairs in groups:
        lines = group_lines(pairs)
        tally.patients += 1
        if not single & lines.keys():
            tally.without_patient_resource += 1
        context = hook_context(hook, lines, now)
        if isinstance(context, str):
            tally.not_evaluated[context] += 1
            continue
        issued = _answer(runtime, service, request_body(patient, lines, router, hook, context), tally)
        if issued is None:
            continue
        tally.cards_per_patient[len(issued)] += 1
        for card, deployment in issued:
            evidence = [(evidence_value(item), evidence_date(item)) for item in card.evidence_items]
            tally.cards[card.rule_id, card.indicator] += 1
            tally.evidence.update((card.rule_id, value) for value in {v for v, _d in evidence})
            rows.append(_row(patient, card, deployment, evidence, context))
    return [(tally, rows)]


def _answer(runtime: Runtime, service: Service, body: bytes, tally: Tally) -> list[tuple[IssuedCard, str]] | None:
    """The hook's cards for ``body`` with their deployment: the cards it shows (active rules), then its silent
    rules' would-be cards; None (counted with the reason) when the call is refused or fails. No repeat check:
    a scan has no earlier calls."""
    try:
        request = read_request(runtime, body)
        validate_envelope(request)
        answer = answer_hook(runtime, service, request)
    except CdsError as error:
        tally.not_evaluated[f"the hook call was refused: {error.kind.code} {error.detail or error.kind.text}"] += 1
        return None
    except Exception as exc:  # a bug on unexpected data costs this patient, not the run (logged with its trace)
        log.exception("a patient's hook call failed")
        tally.not_evaluated[f"the hook call failed: {type(exc).__name__}"] += 1
        return None
    tally.incomplete.update(answer.record.warnings)
    return [(card, "active") for card in answer.issued] + [(card, "silent") for card in answer.silent]


def _row(
    patient: str, card: IssuedCard, deployment: str, evidence: list[tuple[str, datetime | None]],
    context: dict[str, str],
) -> dict[str, Any]:
    return {
        "patient": patient,
        **({"encounter": context[ENCOUNTER_ID]} if ENCOUNTER_ID in context else {}),
        "rule": card.rule_id,
        "indicator": card.indicator,
        "summary": card.card["summary"],
        "deployment": deployment,
        "evidence_dates": sorted({d.date().isoformat() for _v, d in evidence if d is not None}),
        "evidence": [value for value, _d in evidence],
        "related_rules": list(card.related),
    }


def evidence_value(item: Evidence) -> str:
    """A piece of evidence as a short value a committee compares across patients (``Potassium 2.4 mmol/L``)."""
    if isinstance(item, LabResult):
        return f"{analyte_name(item.analyte)} {value_text(item)} {unit_text(item.unit)}"
    if isinstance(item, MedicationUse):
        return item.name
    if isinstance(item, Finding):
        return item.display
    if isinstance(item, Absence):
        return f"no {analyte_name(item.analyte)} result within {item.within_text}"
    if isinstance(item, Pairing):
        return f"{item.first.name} with {item.second.name}"
    if isinstance(item, Timing):
        return timing_text(item)
    if isinstance(item, Age):
        return f"age {item.years}"
    assert_never(item)  # a new kind of evidence must be named here (mypy checks that every kind is)
