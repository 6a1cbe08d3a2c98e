"""Build CDS Hooks requests the way EHRs and the sandbox do, and check responses against the 2.0.1 rules."""
from __future__ import annotations

import copy
import uuid
from typing import Any

from cds_service.wire.validation import first_error, response_problems

SERVICE_IDS = {
    "patient-view": "muscle-cramps-patient-view",
    "encounter-start": "muscle-cramps-encounter-start",
    "order-select": "muscle-cramps-order-select",
    "order-sign": "muscle-cramps-order-sign",
}
PREFETCH_KEYS = ("patient", "labs", "symptoms", "conditions", "medrequests", "medstatements")
PATIENT_ID = "pat-cramps-1"


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


def empty_prefetch(patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """Every prefetch key answered, with a patient and no other data."""
    prefetch: dict[str, Any] = {key: searchset() for key in PREFETCH_KEYS}
    prefetch["patient"] = {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1950-02-01"}
    return prefetch


def cramp_condition(patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """An active problem-list Condition of cramp (SNOMED CT 55300003), with onset 2026-10-20."""
    return {
        "resourceType": "Condition", "id": "cramp-1", "subject": {"reference": f"Patient/{patient_id}"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003", "display": "Cramp"}]},
        "onsetDateTime": "2026-10-20",
    }


def sandbox_draft_orders(*, with_medication: bool = True) -> dict[str, Any]:
    """A draftOrders Bundle shaped like the public sandbox's: no Bundle.type, category as an object."""
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": "2026-11-01",
        "category": {"coding": [{"code": "outpatient"}]},
        "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 1, "unit": "pill", "code": "{pill}"}}]}],
    }
    if with_medication:
        order["medicationCodeableConcept"] = {
            "text": "Atorvastatin 40 MG Oral Tablet",
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "617311"}],
        }
    return {"resourceType": "Bundle", "entry": [{"resource": order}]}


def hook_request(hook: str, prefetch: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A valid request for ``hook`` with full prefetch (override pieces with ``extra``)."""
    context: dict[str, Any] = {"userId": "Practitioner/COREPRACTITIONER1", "patientId": PATIENT_ID}
    if hook == "encounter-start":
        context["encounterId"] = "enc-1"
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = sandbox_draft_orders()
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/request-123"]
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        "context": context,
        "prefetch": copy.deepcopy(prefetch) if prefetch is not None else empty_prefetch(),
    }
    body.update(extra)
    return body


def assert_valid_response(body: Any) -> None:
    """The response obeys the project's response schema and every CDS Hooks 2.0.1 card rule."""
    problems = response_problems(body)
    assert not problems, problems


def assert_operation_outcome(body: Any, code: str | None = None) -> None:
    """An error body is a FHIR OperationOutcome with a coded diagnostics text and no stack trace."""
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal") and issue["code"]
    assert issue["diagnostics"].startswith("CDS-")
    if code:
        assert issue["diagnostics"].startswith(code), issue["diagnostics"]
    assert "Traceback" not in issue["diagnostics"]


def assert_valid_discovery(body: Any) -> None:
    assert first_error("discovery", body) is None, first_error("discovery", body)
