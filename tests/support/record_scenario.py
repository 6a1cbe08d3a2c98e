"""One patient's FHIR data for the record-layer tests, and hook calls that carry it in different ways.

Codes come from clinical-reference.md: LOINC 2823-3 potassium, 2157-6 CK, 19123-9 magnesium, 4548-4 HbA1c;
SNOMED 55300003 cramp, 38341003 hypertension; RxNorm 312961 simvastatin 20 MG, 310798 hydrochlorothiazide 25 MG,
313988 furosemide 40 MG.
"""
from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any

from cds_service.facts.terminology import SystemCode
from cds_service.wire.hook_request import HookCall

PATIENT_ID = "scenario-1"
OTHER_PATIENT_ID = "scenario-2"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LAB_CODES = ("2823-3", "2157-6", "19123-9", "4548-4")
SYMPTOM_CODES = (SystemCode(SNOMED, "55300003"),)

Resource = dict[str, Any]


class ScenarioCodes:
    """A short code list in the terminology's shape, so a test can spell out a whole template."""

    def lab_loinc_codes(self) -> tuple[str, ...]:
        return LAB_CODES

    def symptom_observation_codes(self) -> tuple[SystemCode, ...]:
        return SYMPTOM_CODES


def _subject(patient_id: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient_id}"}


def lab(obs_id: str, code: str, value: float, unit: str, when: str, patient_id: str = PATIENT_ID) -> Resource:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": _subject(patient_id),
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def medication(med_id: str, rxnorm: str, display: str) -> Resource:
    return {"resourceType": "Medication", "id": med_id,
            "code": {"coding": [{"system": RXNORM, "code": rxnorm, "display": display}]}}


def med_request(mr_id: str, status: str = "active", patient_id: str = PATIENT_ID, **medication_x: Any) -> Resource:
    return {"resourceType": "MedicationRequest", "id": mr_id, "status": status, "intent": "order",
            "subject": _subject(patient_id), "authoredOn": "2025-01-10", **medication_x}


def scenario_resources() -> list[Resource]:
    """The scenario patient's data plus another patient's, which no search for the scenario may return."""
    furosemide = medication("m1", "313988", "Furosemide 40 MG Oral Tablet")
    return [
        {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1950-03-04"},
        {"resourceType": "Patient", "id": OTHER_PATIENT_ID, "gender": "male", "birthDate": "1960-01-01"},
        lab("k-1", "2823-3", 3.1, "mmol/L", "2025-06-01T09:00:00Z"),
        lab("k-2", "2823-3", 3.9, "mmol/L", "2025-01-01T09:00:00Z"),
        lab("ck-1", "2157-6", 900, "U/L", "2025-06-01T09:00:00Z"),
        lab("mg-1", "19123-9", 1.5, "mg/dL", "2025-06-01T09:00:00Z"),
        lab("k-other", "2823-3", 2.5, "mmol/L", "2025-06-01T09:00:00Z", OTHER_PATIENT_ID),
        {"resourceType": "Observation", "id": "cramp-1", "status": "final",
         "code": {"coding": [{"system": SNOMED, "code": "55300003", "display": "Cramp"}]},
         "subject": _subject(PATIENT_ID), "effectiveDateTime": "2025-06-02T10:00:00Z"},
        {"resourceType": "Condition", "id": "htn-1", "subject": _subject(PATIENT_ID),
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "38341003", "display": "Hypertension"}]}},
        medication("med-hctz", "310798", "Hydrochlorothiazide 25 MG Oral Tablet"),
        med_request("mr-statin", medicationCodeableConcept={
            "coding": [{"system": RXNORM, "code": "312961", "display": "Simvastatin 20 MG Oral Tablet"}]}),
        med_request("mr-hctz", medicationReference={"reference": "Medication/med-hctz"}),
        med_request("mr-furosemide", contained=[furosemide], medicationReference={"reference": "#m1"}),
        med_request("mr-stopped", status="stopped", medicationCodeableConcept={"text": "Old drug"}),
    ]


def expected_ids() -> set[tuple[str, str]]:
    """The type+id of every resource the record must hold for the scenario patient."""
    return {
        ("Patient", PATIENT_ID),
        ("Observation", "k-1"), ("Observation", "k-2"), ("Observation", "ck-1"), ("Observation", "mg-1"),
        ("Observation", "cramp-1"),
        ("Condition", "htn-1"),
        ("Medication", "med-hctz"),
        ("MedicationRequest", "mr-statin"), ("MedicationRequest", "mr-hctz"), ("MedicationRequest", "mr-furosemide"),
    }


def ids_of(resources: Mapping[str, list[Resource]]) -> set[tuple[str, str]]:
    return {(rtype, r["id"]) for rtype, items in resources.items() for r in items}


def searchset(resources: list[Resource]) -> Resource:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": copy.deepcopy(r), "search": {"mode": "match"}} for r in resources]}


OPERATION_OUTCOME: Resource = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "exception", "diagnostics": "EHR search failed"}],
}


def hook_call(
    prefetch: Mapping[str, Any] | None = None,
    fhir_server: str | None = None,
    token: str | None = None,
    patient_id: str = PATIENT_ID,
) -> HookCall:
    """A patient-view call as an EHR would send it."""
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "cds-service"}
    if prefetch is not None:
        body["prefetch"] = dict(prefetch)
    return HookCall.from_request("cramps-patient-view", body)
