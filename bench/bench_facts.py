"""Benchmark: building PatientFacts from a prefetch with 200, 1000 and 5000 labs, against json.loads of the body.

Run: ``python bench/bench_facts.py [--repeat N] [--models]``. Prints one row per size with the median times (ms)
of ``json.loads`` of the whole hook request body, of turning the parsed prefetch into a ``PatientRecord`` (the
record layer, shown for context), and of ``build_facts``, and the ratio build_facts / json.loads of the
medians. The three are run in turn in every round, so that load on a busy machine hits them alike. The goal is
a ratio of at most 0.5. ``--models`` adds the time fhir.resources (R4B) takes to validate the same lab
Observations once, which is why the facts layer reads plain JSON. Not a test: timings depend on the machine.

The bodies are Synthea-shaped (clinical-reference.md §6): basic metabolic panels of eight Blood/Serum codes
drawn together, UCUM quantities with long float tails, no reference ranges, plus medication requests (some
through ``medicationReference`` to an included Medication) and SNOMED conditions; each lab carries the ``meta``
a FHIR server adds (profile, versionId, lastUpdated), as in the sandbox request's prefetch.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from cds_service.config import load_config
from cds_service.facts.build import build_facts
from cds_service.facts.labs import DERIVED_FROM
from cds_service.facts.terminology import Terminology
from cds_service.record.obtain import obtain_record
from cds_service.record.settings import RecordSettings
from cds_service.record.templates import build_prefetch_templates
from cds_service.wire.hook_request import HookCall

PATIENT = "bench-patient"
NOW = datetime(2025, 7, 1, tzinfo=UTC)
PANEL = [  # (LOINC, display, UCUM unit, low, high): a Synthea basic metabolic panel (Blood codes)
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 65.0, 99.0),
    ("6299-2", "Urea nitrogen [Mass/volume] in Blood", "mg/dL", 7.0, 20.0),
    ("38483-4", "Creatinine [Mass/volume] in Blood", "mg/dL", 0.6, 1.3),
    ("49765-1", "Calcium [Mass/volume] in Blood", "mg/dL", 8.5, 10.2),
    ("2947-0", "Sodium [Moles/volume] in Blood", "mmol/L", 136.0, 144.0),
    ("6298-4", "Potassium [Moles/volume] in Blood", "mmol/L", 3.7, 5.2),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0),
    ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", 1.7, 2.3),
]
MEDS = [("316672", "Simvistatin 10 MG"), ("310798", "Hydrochlorothiazide 25 MG Oral Tablet"),
        ("313988", "Furosemide 40 MG Oral Tablet"), ("897718", "Verapamil Hydrochloride 40 MG"),
        ("314076", "lisinopril 10 MG Oral Tablet"), ("966222", "Levothyroxine Sodium 0.075 MG Oral Tablet")]
CONDITIONS = [("38341003", "Hypertension"), ("55822004", "Hyperlipidemia"), ("44054006", "Diabetes"),
              ("433144002", "Chronic kidney disease stage 3"), ("83664006", "Idiopathic atrophic hypothyroidism")]


LAB_PROFILE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"


def meta(index: int, profile: str) -> dict[str, Any]:
    """What a FHIR server adds to every resource it returns (as in the sandbox request's prefetch)."""
    return {"profile": [profile], "versionId": str(uuid.UUID(int=index + 1)), "lastUpdated": "2025-07-01T00:00:00.000Z"}


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def lab(index: int, when: datetime, spec: tuple[str, str, str, float, float], rng: random.Random) -> dict[str, Any]:
    code, display, unit, low, high = spec
    return {
        "resourceType": "Observation", "id": f"lab-{index}", "meta": meta(index, LAB_PROFILE),
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{PATIENT}"}, "encounter": {"reference": f"Encounter/enc-{index // 8}"},
        "effectiveDateTime": when.isoformat(), "issued": when.isoformat(),
        "valueQuantity": {"value": rng.uniform(low, high), "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit},
    }


def hook_body(labs: int, seed: int = 7) -> str:
    """A patient-view request body whose prefetch holds ``labs`` lab Observations plus meds and conditions."""
    rng = random.Random(seed)
    start = NOW - timedelta(days=3650)
    panels = labs // len(PANEL) or 1  # spread over ten years, one panel per draw
    observations = [lab(i, start + timedelta(days=(i // len(PANEL)) * 3650 / panels), PANEL[i % len(PANEL)], rng)
                    for i in range(labs)]
    medications = [{"resourceType": "Medication", "id": f"med-{i}",
                    "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": c,
                                         "display": d}], "text": d}} for i, (c, d) in enumerate(MEDS)]
    requests = []
    for i, (code, display) in enumerate(MEDS * 5):
        request: dict[str, Any] = {
            "resourceType": "MedicationRequest", "id": f"mr-{i}", "status": rng.choice(["active", "completed"]),
            "intent": "order", "subject": {"reference": f"Patient/{PATIENT}"},
            "authoredOn": (start + timedelta(days=60 * i)).isoformat(),
        }
        if i % 5 == 0:
            request["medicationReference"] = {"reference": f"Medication/med-{i % len(MEDS)}"}
        else:
            request["medicationCodeableConcept"] = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                 "code": code, "display": display}], "text": display}
        requests.append(request)
    conditions = [{"resourceType": "Condition", "id": f"cond-{i}",
                   "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                  "code": "active"}]},
                   "verificationStatus": {"coding": [{"code": "confirmed"}]},
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": c, "display": d}], "text": d},
                   "subject": {"reference": f"Patient/{PATIENT}"}, "onsetDateTime": start.isoformat(),
                   "recordedDate": start.isoformat()} for i, (c, d) in enumerate(CONDITIONS * 4)]
    body = {
        "hook": "patient-view", "hookInstance": "bench", "context": {"userId": "Practitioner/1", "patientId": PATIENT},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1950-03-01"},
            "labs": searchset(observations),
            "symptoms": searchset([]),
            "conditions": searchset(conditions),
            "medrequests": searchset(requests + medications),
            "medstatements": searchset([]),
        },
    }
    return json.dumps(body)


def interleaved(actions: list[Callable[[], object]], repeat: int) -> list[list[float]]:
    """ms of each run of each action, run in turn within every round so that machine load hits all alike."""
    times: list[list[float]] = [[] for _ in actions]
    for _ in range(repeat):
        for action, samples in zip(actions, times, strict=True):
            started = time.perf_counter()
            action()
            samples.append((time.perf_counter() - started) * 1000)
    return times


def validate_labs(observations: list[dict[str, Any]]) -> float:
    """ms to validate every Observation with fhir.resources R4B models (after one warm-up validation)."""
    from fhir.resources.R4B.observation import Observation  # only for this comparison

    Observation.model_validate(observations[0])
    started = time.perf_counter()
    for observation in observations:
        Observation.model_validate(observation)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="runs per measurement (median reported)")
    parser.add_argument("--models", action="store_true", help="also time fhir.resources validation of the labs")
    args = parser.parse_args()
    logging.getLogger("cds_service.record").setLevel(logging.WARNING)  # one summary line per record otherwise
    terminology = Terminology.load()
    templates = build_prefetch_templates(terminology)
    settings = RecordSettings.from_settings(load_config())
    header = f"{'labs':>6} {'body MB':>8} {'json.loads ms':>14} {'record ms':>10} {'build_facts ms':>15} {'ratio':>6}"
    print(header + (f" {'fhir.resources ms':>18}" if args.models else ""))
    for size in (200, 1000, 5000):
        text = hook_body(size)
        parsed = json.loads(text)
        call = HookCall.from_request("bench", parsed)
        record = obtain_record(call, templates, settings)
        facts = build_facts(record, terminology, NOW)
        assert sum(len(v) for k, v in facts.labs.items() if k not in DERIVED_FROM) == size, "every lab is read"
        loads_ms, record_ms, build_ms = interleaved([
            partial(json.loads, text),
            partial(obtain_record, call, templates, settings),
            partial(build_facts, record, terminology, NOW),
        ], args.repeat)
        loads, to_record, build = (statistics.median(t) for t in (loads_ms, record_ms, build_ms))
        ratio = build / loads
        row = f"{size:>6} {len(text) / 1e6:>8.2f} {loads:>14.2f} {to_record:>10.2f} {build:>15.2f} {ratio:>6.2f}"
        print(row + (f" {validate_labs(record.of_type('Observation')):>18.0f}" if args.models else ""))


if __name__ == "__main__":
    main()
