"""Compact, clinician-readable patient descriptions (the ``given`` of a rule case) turned into FHIR R4 JSON.

A description names codes by system (``snomed: 55300003``, ``loinc: 2823-3``, ``rxnorm: 310798``, or
``code: "icd10|R25.2"``) and dates as ISO 8601 offsets from ``now`` (``-P10D``). The result is a real
:class:`PatientRecord`, so a case exercises the whole chain: FHIR -> facts -> rules -> card.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..record.model import PatientRecord, Resource

SYSTEMS: dict[str, str] = {
    "snomed": "http://snomed.info/sct",
    "icd10": "http://hl7.org/fhir/sid/icd-10-cm",
    "loinc": "http://loinc.org",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "atc": "http://www.whocc.no/atc",
    "ucum": "http://unitsofmeasure.org",
}
_OFFSET = re.compile(r"^([-+]?)P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")
PATIENT_ID = "case-patient"
RECORD_KEYS = (
    "hook", "patient", "conditions", "observations", "labs", "medications", "statements", "draft_orders",
    "incomplete",
)


def at(now: datetime, offset: str) -> datetime:
    """``now`` moved by an ISO 8601 offset such as ``-P10D`` (a year is 365 days, a month 30)."""
    match = _OFFSET.match(str(offset))
    if not match:
        raise ValueError(f"not an ISO 8601 offset: {offset!r}")
    sign = -1 if match.group(1) == "-" else 1
    years, months, weeks, days, hours, minutes = (int(g or 0) for g in match.groups()[1:])
    delta = timedelta(days=years * 365 + months * 30 + weeks * 7 + days, hours=hours, minutes=minutes)
    return now + sign * delta


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def merge(*records: Mapping[str, Any] | None) -> dict[str, Any]:
    """Descriptions combined: lists are concatenated, single values taken from the last that has one."""
    merged: dict[str, Any] = {}
    for record in records:
        for key, value in (record or {}).items():
            if isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value]
            else:
                merged[key] = value
    return merged


def coding(item: Mapping[str, Any], default_system: str | None = None) -> dict[str, str]:
    """The FHIR Coding named by ``snomed:``/``icd10:``/``loinc:``/``rxnorm:``/``atc:`` or ``code: sys|code``."""
    for key, system in SYSTEMS.items():
        if key in item:
            result = {"system": system, "code": str(item[key])}
            break
    else:
        if "code" not in item:
            raise ValueError(f"no code in {dict(item)!r}")
        prefix, _, code = str(item["code"]).partition("|")
        result = {"system": SYSTEMS.get(prefix, prefix if "://" in prefix else default_system or prefix), "code": code}
    if item.get("display"):
        result["display"] = str(item["display"])
    return result


def _concept(item: Mapping[str, Any]) -> dict[str, Any]:
    code = coding(item)
    concept: dict[str, Any] = {"coding": [code]}
    if "display" in code:
        concept["text"] = code["display"]
    return concept


def _subject(patient_id: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient_id}"}


def condition(item: Mapping[str, Any], index: int, now: datetime, patient_id: str = PATIENT_ID) -> Resource:
    resource: Resource = {
        "resourceType": "Condition",
        "id": f"{patient_id}-cond-{index}",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": item.get("status", "active"),
                }
            ]
        },
        "code": _concept(item),
        "subject": _subject(patient_id),
    }
    if "verification" in item:
        resource["verificationStatus"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": item["verification"]}
            ]
        }
    if "category" in item:
        category = {"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": item["category"]}
        resource["category"] = [{"coding": [category]}]
    if "onset" in item:
        resource["onsetDateTime"] = _stamp(at(now, item["onset"]))
        resource["recordedDate"] = resource["onsetDateTime"]
    if "recorded" in item:
        resource["recordedDate"] = _stamp(at(now, item["recorded"]))
    if "abated" in item:
        resource["abatementDateTime"] = _stamp(at(now, item["abated"]))
    return resource


def observation(item: Mapping[str, Any], index: int, now: datetime, patient_id: str = PATIENT_ID) -> Resource:
    """A symptom or sign recorded as an Observation whose code is the finding."""
    resource: Resource = {
        "resourceType": "Observation",
        "id": f"{patient_id}-sym-{index}",
        "status": item.get("status", "final"),
        "code": _concept(item),
        "subject": _subject(patient_id),
        "effectiveDateTime": _stamp(at(now, item.get("onset", "-P1D"))),
    }
    return resource


def lab(item: Mapping[str, Any], index: int, now: datetime, patient_id: str = PATIENT_ID) -> Resource:
    resource: Resource = {
        "resourceType": "Observation",
        "id": f"{patient_id}-lab-{index}",
        "status": item.get("status", "final"),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": _concept(item),
        "subject": _subject(patient_id),
        "effectiveDateTime": _stamp(at(now, item["at"])),
        "valueQuantity": {
            "value": item["value"],
            "unit": item["unit"],
            "system": SYSTEMS["ucum"],
            "code": item["unit"],
        },
    }
    if "comparator" in item:
        resource["valueQuantity"]["comparator"] = item["comparator"]
    if "range" in item:
        low, high = item["range"]
        bounds = {}
        if low is not None:
            bounds["low"] = {"value": low, "unit": item["unit"], "system": SYSTEMS["ucum"], "code": item["unit"]}
        if high is not None:
            bounds["high"] = {"value": high, "unit": item["unit"], "system": SYSTEMS["ucum"], "code": item["unit"]}
        if bounds:
            resource["referenceRange"] = [bounds]
    return resource


def medication_request(
    item: Mapping[str, Any], index: int, now: datetime, patient_id: str = PATIENT_ID, *, draft: bool = False
) -> Resource:
    resource: Resource = {
        "resourceType": "MedicationRequest",
        "id": item.get("id", f"{patient_id}-{'draft' if draft else 'medreq'}-{index}"),
        "status": "draft" if draft else item.get("status", "active"),
        "intent": "order",
        "medicationCodeableConcept": _concept(item),
        "subject": _subject(patient_id),
    }
    if "since" in item:
        resource["authoredOn"] = _stamp(at(now, item["since"]))
    if "until" in item:
        resource["dispenseRequest"] = {"validityPeriod": {"end": _stamp(at(now, item["until"]))}}
    if "as_needed" in item:
        resource["dosageInstruction"] = [_dosage(item["as_needed"])]
    return resource


def medication_statement(item: Mapping[str, Any], index: int, now: datetime, patient_id: str = PATIENT_ID) -> Resource:
    resource: Resource = {
        "resourceType": "MedicationStatement",
        "id": item.get("id", f"{patient_id}-medstmt-{index}"),
        "status": item.get("status", "active"),
        "medicationCodeableConcept": _concept(item),
        "subject": _subject(patient_id),
    }
    period = {key: _stamp(at(now, item[name])) for key, name in (("start", "since"), ("end", "until")) if name in item}
    if period:
        resource["effectivePeriod"] = period
    if "as_needed" in item:
        resource["dosage"] = [_dosage(item["as_needed"])]
    return resource


def _dosage(as_needed: bool) -> dict[str, Any]:
    """A FHIR Dosage: as needed, or once daily."""
    if as_needed:
        return {"text": "as needed", "asNeededBoolean": True}
    return {"text": "once daily", "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            "asNeededBoolean": False}


def patient(item: Mapping[str, Any] | None, patient_id: str = PATIENT_ID) -> Resource:
    resource: Resource = {"resourceType": "Patient", "id": patient_id}
    item = item or {}
    if "gender" in item:
        resource["gender"] = item["gender"]
    if "birth_date" in item:
        resource["birthDate"] = str(item["birth_date"])
    return resource


def resources_of(
    description: Mapping[str, Any], now: datetime, patient_id: str = PATIENT_ID
) -> dict[str, list[Resource]]:
    """The FHIR resources a description stands for, grouped by prefetch key (draft orders apart)."""

    def each(key: str) -> Sequence[Mapping[str, Any]]:
        return description.get(key) or ()

    return {
        "patient": [patient(description.get("patient"), patient_id)],
        "conditions": [condition(c, i, now, patient_id) for i, c in enumerate(each("conditions"))],
        "symptoms": [observation(o, i, now, patient_id) for i, o in enumerate(each("observations"))],
        "labs": [lab(x, i, now, patient_id) for i, x in enumerate(each("labs"))],
        "medrequests": [medication_request(m, i, now, patient_id) for i, m in enumerate(each("medications"))],
        "medstatements": [medication_statement(m, i, now, patient_id) for i, m in enumerate(each("statements"))],
        "draft_orders": [
            medication_request(m, i, now, patient_id, draft=True) for i, m in enumerate(each("draft_orders"))
        ],
    }


def record_of(description: Mapping[str, Any], now: datetime, patient_id: str = PATIENT_ID) -> PatientRecord:
    """The PatientRecord the record layer would hand over for this description."""
    grouped = resources_of(description, now, patient_id)
    by_type: dict[str, list[Resource]] = {}
    for key, items in grouped.items():
        if key == "draft_orders":
            continue
        for resource in items:
            by_type.setdefault(resource["resourceType"], []).append(resource)
    drafts = grouped["draft_orders"]
    # order-select: the drafts the clinician chose (``selected: false`` leaves one out); order-sign signs them all
    chosen = [
        draft for draft, item in zip(drafts, description.get("draft_orders") or (), strict=True)
        if item.get("selected", True) or description.get("hook") == "order-sign"
    ]
    return PatientRecord(
        patient_id=patient_id,
        resources=by_type,
        draft_orders=drafts,
        selections=frozenset(f"MedicationRequest/{d['id']}" for d in chosen),
        incomplete=frozenset(description.get("incomplete") or ()),
    )
