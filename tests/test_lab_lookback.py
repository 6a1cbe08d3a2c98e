"""Leaving out Observations older than the rule set's look-back changes no card: the shipped examples and long
random histories (labs and symptom Observations over eight years) give the same cards with it as with every
Observation read."""
from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds_service.config import load_config
from cds_service.evaluation import Runtime
from cds_service.facts.build import FactWindows, build_facts
from cds_service.hooks import HookCall
from cds_service.record.model import PatientRecord
from cds_service.record.obtain import obtain_record
from cds_service.rules.engine import evaluate
from cds_service.viewer.examples import shipped_examples

NOW = datetime(2026, 11, 1, tzinfo=UTC)
# (LOINC, UCUM unit, low, high) around each analyte's usual range, so that some values fall outside it
ANALYTES = [
    ("2823-3", "mmol/L", 2.6, 5.6), ("19123-9", "mg/dL", 1.0, 2.8), ("2157-6", "U/L", 30, 3000),
    ("3016-3", "m[IU]/L", 0.1, 9.0), ("17861-6", "mg/dL", 7.2, 11.0), ("1751-7", "g/dL", 2.8, 5.2),
    ("2951-2", "mmol/L", 126, 148), ("2160-0", "mg/dL", 0.6, 2.4), ("33914-3", "mL/min/{1.73_m2}", 20, 100),
]


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(load_config(overrides={"now": NOW.isoformat()}))


def cards(runtime: Runtime, record: PatientRecord, hook: str, windows: FactWindows) -> list[dict[str, Any]]:
    facts = build_facts(record, runtime.terminology, NOW, windows)
    issued = evaluate(runtime.ruleset, facts, hook, max_cards=100)
    return [{k: v for k, v in i.card.items() if k != "uuid"} | {"rule": i.rule_id} for i in issued]


def same_either_way(runtime: Runtime, record: PatientRecord, hook: str) -> list[dict[str, Any]]:
    with_lookback = cards(runtime, record, hook, runtime.fact_windows)
    assert _without_uuids(with_lookback) == _without_uuids(cards(runtime, record, hook, FactWindows()))
    return with_lookback


def _without_uuids(found: list[dict[str, Any]]) -> str:
    text = json.dumps(found, sort_keys=True)
    for card in found:  # suggestion uuids are fresh on every call
        for suggestion in card.get("suggestions", []):
            text = text.replace(suggestion["uuid"], "-")
    return text


@pytest.mark.parametrize("name", sorted(shipped_examples()))
def test_each_example_gives_the_same_cards_with_the_lookback(runtime, name):
    body = shipped_examples()[name].request
    service = runtime.registry.for_hook(body["hook"])
    record = obtain_record(HookCall.from_request(service.id, body), service.prefetch, runtime.record_settings)
    same_either_way(runtime, record, body["hook"])


def _history(seed: int) -> PatientRecord:
    rng = random.Random(seed)
    labs = []
    for serial in range(400):
        loinc, unit, low, high = rng.choice(ANALYTES)
        when = NOW - timedelta(days=rng.uniform(0, 8 * 365))
        labs.append({
            "resourceType": "Observation", "id": f"lab-{serial}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": round(rng.uniform(low, high), 2), "system": "http://unitsofmeasure.org",
                              "code": unit, "unit": unit},
        })
    cramp = {"resourceType": "Condition", "id": "cramp", "code": {"coding": [{"system": "http://snomed.info/sct",
             "code": "55300003"}]}, "clinicalStatus": {"coding": [{"code": "active"}]},
             "onsetDateTime": (NOW - timedelta(days=10)).isoformat()}
    symptoms = [{"resourceType": "Observation", "id": f"sym-{serial}", "status": "final",
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
                 "effectiveDateTime": (NOW - timedelta(days=rng.uniform(0, 500))).isoformat()}
                for serial in range(3)]  # cramps recorded as Observations too, some older than any window
    drugs = [("617311", "atorvastatin 40 MG Oral Tablet"), ("313988", "furosemide 40 MG Oral Tablet")]
    orders = [{"resourceType": "MedicationRequest", "id": f"mr-{code}", "status": "active", "intent": "order",
               "authoredOn": (NOW - timedelta(days=200)).isoformat(),
               "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                         "code": code, "display": text}], "text": text}}
              for code, text in rng.sample(drugs, rng.randint(0, 2))]
    patient = {"resourceType": "Patient", "id": "p1", "gender": rng.choice(["male", "female"]), "birthDate": "1950-01-01"}
    return PatientRecord("p1", {"Patient": [patient], "Observation": labs + symptoms, "Condition": [cramp],
                                "MedicationRequest": orders})


def test_long_random_histories_give_the_same_cards_with_the_lookback(runtime):
    fired = 0
    for seed in range(40):
        fired += len(same_either_way(runtime, _history(seed), "patient-view"))
    assert fired > 20  # the histories are meant to fire rules, or the comparison says little
