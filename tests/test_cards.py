"""Cards: CDS Hooks 2.0.1 invariants on every card the rule cases produce, FHIR R4 validity of suggested
resources (fhir.resources R4B models), and escaping of patient-supplied text."""
from __future__ import annotations

import copy
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.facts.build import build_facts
from cds_service.facts.model import Coding, Finding, LabResult, MedicationUse, PatientFacts
from cds_service.record.model import PatientRecord
from cds_service.rules.cards import service_request
from cds_service.rules.cases import load_cases, run_case
from cds_service.rules.check import load_terminology
from cds_service.rules.engine import RuleSet, evaluate
from cds_service.rules.loader import case_files, shipped_rules_dir
from cds_service.rules.templates import evidence_line, markdown, plain, times_uln_text
from cds_service.wire.validation import card_problems

RULES_DIR = shipped_rules_dir()
TERMINOLOGY = load_terminology(RULES_DIR)
RULESET = RuleSet.load(RULES_DIR, TERMINOLOGY)
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _all_cards() -> list[dict[str, Any]]:
    cards = []
    for path in case_files(RULES_DIR):
        for test in load_cases(path)[1]:
            cards += [c.card for c in run_case(RULESET, test, TERMINOLOGY).cards]
    return cards


CARDS = _all_cards()


def test_the_cases_produce_cards_of_every_indicator() -> None:
    assert {c["indicator"] for c in CARDS} == {"info", "warning", "critical"}
    assert len(CARDS) > 80


@pytest.mark.parametrize("index", range(len(CARDS)))
def test_card_invariants(index: int) -> None:
    card = CARDS[index]
    assert card_problems(card) == []
    assert len(card["summary"]) < 140 and "\n" not in card["summary"]
    assert uuid.UUID(card["uuid"]).version == 4
    assert card["source"]["url"].startswith("https://") and card["source"]["label"]
    for reason in card.get("overrideReasons", ()):
        assert set(reason) == {"code", "system", "display"} and all(reason.values())
    for link in card.get("links", ()):
        assert link["type"] == "absolute" and link["url"].startswith("https://")
    if "suggestions" in card:
        assert card["selectionBehavior"] in ("any", "at-most-one")
    ordered = [_ordered(a) for s in card.get("suggestions", ()) for a in s["actions"]]
    assert len(ordered) == len(set(ordered)), "two suggestions of one card do the same thing"
    for suggestion in card.get("suggestions", ()):
        assert uuid.UUID(suggestion["uuid"]).version == 4 and suggestion["actions"]
        for action in suggestion["actions"]:
            assert action["description"]
            if action["type"] == "create":
                resource = ServiceRequest.model_validate(action["resource"])
                assert (resource.status, resource.intent) == ("draft", "order")
                assert resource.subject.reference == "Patient/case-patient"
                assert resource.code.coding[0].system == "http://loinc.org"
            else:
                assert action["type"] == "delete" and "resource" not in action
                assert re.fullmatch(r"MedicationRequest/[A-Za-z0-9\-.]{1,64}", action["resourceId"])


SUGGESTING = next(
    c for c in CARDS if len(c.get("suggestions", ())) > 1 and c["suggestions"][0]["actions"][0]["type"] == "create"
)
ORDER = ("suggestions", 0, "actions", 0, "resource")


@pytest.mark.parametrize("empty", [None, "", [], {}])
@pytest.mark.parametrize("path", [("detail",), ("source", "label"), (*ORDER, "code", "text"), (*ORDER, "subject"),
                                  ("overrideReasons", 0, "display")])
def test_an_empty_element_anywhere_in_a_card_is_named(path: tuple[Any, ...], empty: Any) -> None:
    card = copy.deepcopy(SUGGESTING)
    parent = card
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = empty
    assert f"empty element at /{'/'.join(map(str, path))}" in card_problems(card)


def test_two_recommended_suggestions_with_at_most_one_are_refused() -> None:
    card = copy.deepcopy(SUGGESTING)
    card["selectionBehavior"] = "at-most-one"
    for suggestion in card["suggestions"]:
        suggestion["isRecommended"] = True
    assert card_problems(card) == ["more than one suggestion isRecommended with selectionBehavior at-most-one"]
    card["suggestions"][0]["isRecommended"] = False
    assert card_problems(card) == []


def _ordered(action: dict[str, Any]) -> tuple[str, ...]:
    """What an action does: the test it orders (system, code) or the draft it removes."""
    if action["type"] == "create":
        (coding,) = action["resource"]["code"]["coding"]
        return "create", coding["system"], coding["code"]
    return action["type"], action["resourceId"]


def test_findings_list_values_units_ranges_dates_and_drugs() -> None:
    cards = [c for c in CARDS if c["summary"].startswith("Low potassium (3.4 mmol/L) on furosemide")]
    detail = cards[0]["detail"]
    assert "Potassium **3.4 mmol/L**, reference 3.5–5.0 mmol/L, service default, 2026-10-27" in detail
    assert "Diuretic: **furosemide 40 MG Oral Tablet** (prescription, active since" in detail
    assert detail.index("**Findings**") < detail.index("**Why it matters.**") < detail.index("**Consider.**")


def test_a_condition_coded_as_both_cramp_and_spasm_is_listed_once() -> None:
    """ICD-10-CM R25.2 "Cramp and spasm" maps to both concepts: two findings, one line in the card."""
    condition = {
        "resourceType": "Condition", "id": "c1", "onsetDateTime": "2026-10-20",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.2"}]},
    }
    potassium = {
        "resourceType": "Observation", "id": "k1", "status": "final", "effectiveDateTime": "2026-10-30",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "valueQuantity": {"value": 3.0, "unit": "mmol/L"},
    }
    record = PatientRecord("p1", {"Condition": [condition], "Observation": [potassium]})
    facts = build_facts(record, TERMINOLOGY, NOW)
    assert sorted(f.concept for f in facts.findings) == ["cramp", "spasm"]
    (issued,) = evaluate(RULESET, facts, "patient-view", max_cards=5)
    assert issued.card["detail"].count("Condition, active since 2026-10-20") == 1


def test_a_merged_card_does_not_suggest_the_same_order_twice() -> None:
    """A contraindicated interaction and statin myopathy (CK 12x) make one card; each order appears once."""
    def resource(kind: str, rid: str, **fields: Any) -> dict[str, Any]:
        return {"resourceType": kind, "id": rid, "status": "final", **fields}

    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    ck = resource(
        "Observation", "ck", effectiveDateTime="2026-10-30",
        code={"coding": [{"system": "http://loinc.org", "code": "2157-6"}]},
        valueQuantity={"value": 2400, "unit": "U/L"}, referenceRange=[{"high": {"value": 200, "unit": "U/L"}}],
    )
    cramp = resource(
        "Observation", "s1", effectiveDateTime="2026-10-29",
        code={"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
    )
    def order(rid: str, status: str, rxcui: str) -> dict[str, Any]:
        drug = {"coding": [{"system": rxnorm, "code": rxcui}]}
        return {**resource("MedicationRequest", rid, medicationCodeableConcept=drug), "status": status,
                "intent": "order"}

    statin, draft = order("sim", "active", "36567"), order("d1", "draft", "21212")  # simvastatin; clarithromycin
    record = PatientRecord(
        "p1", {"Observation": [ck, cramp], "MedicationRequest": [statin]},
        draft_orders=[draft], selections=frozenset({"MedicationRequest/d1"}),
    )
    (issued,) = evaluate(RULESET, build_facts(record, TERMINOLOGY, NOW), "order-sign", max_cards=5)
    assert issued.rule_id == "statin-interaction" and "statin-muscle-symptoms-ck" in issued.related
    ordered = [_ordered(a) for s in issued.card["suggestions"] for a in s["actions"]]
    assert ("create", "http://loinc.org", "2157-6") in ordered
    assert len(ordered) == len(set(ordered))


def test_service_request_is_valid_r4() -> None:
    resource = service_request("p-1", "http://loinc.org", "2157-6", "Creatine kinase")
    assert ServiceRequest.model_validate(resource).model_dump(exclude_none=True)["subject"] == {
        "reference": "Patient/p-1"
    }


def test_patient_text_cannot_inject_markdown_or_html() -> None:
    hostile = "<img src=x onerror=alert(1)> [click](https://evil.example) **bold**\n# heading"
    assert "<" not in markdown(hostile) and "](" not in markdown(hostile) and "\n" not in markdown(hostile)
    assert plain("a\x00b\n\tc") == "a b c"
    potassium = LabResult(
        "potassium", 3.0, "mmol/L", NOW - timedelta(days=1), Coding("http://loinc.org", "2823-3"),
        3.5, 5.0, True, (), "3.0 mmol/L", "Observation/k",
    )
    diuretic = MedicationUse(
        hostile, frozenset({"furosemide"}), frozenset({"loop_diuretic"}), "request", "active", False, None,
        "MedicationRequest/m",
    )
    cramp = Finding(
        "cramp", hostile, "Condition", Coding("http://snomed.info/sct", "55300003"), "active", None, None, "Condition/c"
    )
    facts = PatientFacts(
        patient_id="p1", now=NOW, labs={"potassium": (potassium,)}, medications=(diuretic,), findings=(cramp,)
    )
    (issued,) = evaluate(RULESET, facts, "patient-view", max_cards=5)
    detail = issued.card["detail"]
    assert "<img" not in detail and "](https://evil" not in detail and "\n# heading" not in detail
    assert issued.card["summary"] == "Low potassium (3.0 mmol/L) on furosemide may explain cramps"


def test_a_multiple_of_the_upper_limit_keeps_the_comparator_of_a_bound() -> None:
    """Issue 18: a CK reported as ">5000" against a limit of 200 is more than 25 times the limit, not 25 times."""
    ck = LabResult(
        "ck", 5000, "U/L", NOW - timedelta(days=1), Coding("http://loinc.org", "2157-6"),
        None, 200, True, (), ">5000 U/L", "Observation/ck", comparator=">",
    )
    exact = LabResult(
        "ck", 2420, "U/L", NOW - timedelta(days=1), Coding("http://loinc.org", "2157-6"),
        None, 200, True, (), "2420 U/L", "Observation/ck2",
    )
    assert (times_uln_text(ck), times_uln_text(exact)) == (">25.0", "12.1")
    rule = RULESET.by_id["rhabdomyolysis-no-statin"]
    assert "\\>25.0× the upper limit" in evidence_line(rule.criteria["require_ck_over_5x"], ck)
