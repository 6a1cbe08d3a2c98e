"""The oracle of the scan's tests: each scanned patient's record as the hook call an EHR would send with full
prefetch (the fixture patients' own requests' prefetch, the generated patients' whole records)."""
from __future__ import annotations

import json
from typing import Any

from cds_service.facts.terminology import Terminology
from support.bulk import GENERATED, REQUESTS, generated_patient
from support.hookcalls import searchset


def hook_call(hook: str, prefetch: dict[str, Any], patient_id: str, **context: str) -> dict[str, Any]:
    """A ``hook`` call for ``patient_id`` with ``prefetch`` and any further ``context`` (an encounterId)."""
    return {
        "hookInstance": f"00000000-0000-4000-8000-{abs(hash(patient_id)) % 10**12:012d}",
        "hook": hook,
        "context": {"userId": "Practitioner/test", "patientId": patient_id, **context},
        "prefetch": prefetch,
    }


def fixture_prefetch() -> dict[str, dict[str, Any]]:
    """Each fixture patient's prefetch, from its own request (whatever its hook)."""
    prefetch = {}
    for path in sorted(REQUESTS.glob("*.json")):
        request = json.loads(path.read_text())
        prefetch[request["context"]["patientId"]] = request["prefetch"]
    return prefetch


def generated_prefetch() -> dict[str, dict[str, Any]]:
    """Each generated patient's whole record as full prefetch: what an EHR holds for each template's search."""
    terminology = Terminology.load()
    labs = {("http://loinc.org", code) for code in terminology.lab_loinc_codes()}
    symptoms = {(c.system, c.code) for c in terminology.symptom_observation_codes()}

    def coded(observation: dict[str, Any], wanted: set[tuple[str, str]]) -> bool:
        return any((c["system"], c["code"]) in wanted for c in observation["code"]["coding"])

    prefetch = {}
    for seed in range(GENERATED):
        resources = generated_patient(seed)
        of = {kind: [r for r in resources if r["resourceType"] == kind] for kind in
              ("Patient", "Observation", "Condition", "MedicationRequest")}
        prefetch[f"gen-{seed}"] = {
            "patient": of["Patient"][0],
            "labs": searchset(*(o for o in of["Observation"] if coded(o, labs))),
            "symptoms": searchset(*(o for o in of["Observation"] if coded(o, symptoms))),
            "conditions": searchset(*of["Condition"]),
            "medrequests": searchset(*(m for m in of["MedicationRequest"] if m["status"] in ("active", "on-hold"))),
            "medstatements": searchset(),
        }
    return prefetch
