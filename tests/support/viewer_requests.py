"""A patient-view request that fires a critical card under the project's fixture time (2026-11-01).

Cramps (SNOMED 55300003) on furosemide (RxNorm 313988) with a potassium (LOINC 2823-3) of 2.4 mmol/L five days
earlier: rule ``diuretic-hypokalemia`` escalates to critical below 2.5 mmol/L. Used by the viewer and analytics
tests until, and beside, the shipped example requests.
"""
from __future__ import annotations

from typing import Any

from support.hookcalls import PATIENT_ID, empty_prefetch, hook_request, searchset

RULE_ID = "diuretic-hypokalemia"
SUMMARY = "Severe low potassium (2.4 mmol/L)"
SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}


def critical_request(hook: str = "patient-view") -> dict[str, Any]:
    prefetch = empty_prefetch()
    prefetch["conditions"] = searchset({
        "resourceType": "Condition", "id": "cramp-1", "subject": SUBJECT, "onsetDateTime": "2026-10-22",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003", "display": "Cramp"}]},
    })
    prefetch["medrequests"] = searchset({
        "resourceType": "MedicationRequest", "id": "mr-furosemide", "status": "active", "intent": "order",
        "subject": SUBJECT, "authoredOn": "2026-05-01",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": "313988", "display": "furosemide 40 MG Oral Tablet"}]},
    })
    prefetch["labs"] = searchset({
        "resourceType": "Observation", "id": "k-1", "status": "final", "subject": SUBJECT,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3",
                             "display": "Potassium [Moles/volume] in Serum or Plasma"}]},
        "effectiveDateTime": "2026-10-27T09:00:00Z",
        "valueQuantity": {"value": 2.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 5.1, "unit": "mmol/L"}}],
    })
    return hook_request(hook, prefetch)
