"""Labs and symptoms as real EHR feeds send them (issue 18 items 3-6): units, comparators, the lab's precision and
own range, every effective[x], cramps written only as text. The facts layer on its own, then over real HTTP."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from support.hookcalls import PATIENT_ID, assert_valid_response, empty_prefetch, hook_request, searchset
from support.wsgi_server import running

from cds_service.facts.build import build_facts
from cds_service.facts.model import LabResult
from cds_service.facts.terminology import Terminology
from cds_service.record.model import PatientRecord
from cds_service.rules.criteria import at_lab_precision, bounded, evaluate
from cds_service.rules.model import LabCriterion
from cds_service.server.logs import JsonFormatter

NOW = datetime(2026, 11, 1, tzinfo=UTC)  # FIXTURE_NOW
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
PV = "muscle-cramps-patient-view"
FLAGS = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def day(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


def lab(ident: str, loinc: str, value: Any, unit: str | None, *, text: str | None = None, comparator: str = "",
        dated: dict[str, Any] | None = None, reference: tuple[Any, Any] | None = None,
        **extra: Any) -> dict[str, Any]:
    """A final lab Observation 2 days old (``dated`` replaces its effectiveDateTime); ``reference`` is the lab's
    own (low, high) in the value's unit."""
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity |= {"system": UCUM, "code": unit}
    if text is not None or unit is not None:
        quantity["unit"] = text or unit
    if comparator:
        quantity["comparator"] = comparator
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": ident, "status": "final", "subject": SUBJECT,
        "code": {"coding": [{"system": LOINC, "code": loinc}]}, "valueQuantity": quantity,
        **(dated if dated is not None else {"effectiveDateTime": day(2)}), **extra,
    }
    if reference is not None:
        low, high = reference
        unit_of = {k: v for k, v in quantity.items() if k in ("system", "code", "unit")}
        resource["referenceRange"] = [{k: {"value": v, **unit_of} for k, v in (("low", low), ("high", high))
                                       if v is not None}]
    return resource


def facts_of(terminology: Terminology, *resources: dict[str, Any]) -> Any:
    grouped: dict[str, list[Any]] = {}
    for resource in resources:
        grouped.setdefault(resource["resourceType"], []).append(resource)
    return build_facts(PatientRecord(PATIENT_ID, grouped), terminology, NOW)


# ---------------------------------------------------------------- units: every factor against its source
# (LOINC, value, UCUM code or None, unit text or None, analyte, expected canonical value, source of the figure)
CR1 = "clinical-reference.md §1"
UNITS = [
    ("2157-6", 100, "U/L", None, "ck", 100.0, "identity"),
    ("2157-6", 100, None, "IU/L", "ck", 100.0, "IFCC: U = µmol/min"),
    ("2157-6", 1.67, "ukat/L", None, "ck", 100.2, "SI: 1 µkat/L = 60 U/L (kat = mol/s)"),
    ("2157-6", 1.67, None, "µkat/L", "ck", 100.2, "SI katal, micro sign"),
    ("2157-6", 1.67, None, "μkat/L", "ck", 100.2, "SI katal, Greek mu"),
    ("17861-6", 2.12, "mmol/L", None, "calcium", 8.5, f"{CR1}: 8.5 mg/dL = 2.12 mmol/L"),
    ("17861-6", 4.24, None, "mEq/L", "calcium", 8.5, f"{CR1}: mmol/L x 2 = mEq/L"),
    ("17861-6", 8.5, None, "mg/dl", "calcium", 8.5, "identity, any case"),
    ("19123-9", 0.70, "mmol/L", None, "magnesium", 1.7, f"{CR1}: 1.7 mg/dL = 0.70 mmol/L"),
    ("19123-9", 1.40, None, "mEq/L", "magnesium", 1.7, f"{CR1}: 1.7 mg/dL = 1.40 mEq/L"),
    ("2823-3", 3.1, None, "mEq/L", "potassium", 3.1, f"{CR1}: 1 mEq/L = 1 mmol/L"),
    ("2823-3", 3.1, None, "mmol/l", "potassium", 3.1, "identity, any case"),
    ("2951-2", 128, "meq/L", None, "sodium", 128.0, f"{CR1}: 1 mEq/L = 1 mmol/L"),
    ("2345-7", 3.9, "mmol/L", None, "glucose", 70.0, f"{CR1}: 70 mg/dL = 3.9 mmol/L"),
    ("2345-7", 3.0, None, "mmol/L", "glucose", 54.0, f"{CR1}: 54 mg/dL = 3.0 mmol/L"),
    ("2160-0", 88.42, None, "µmol/L", "creatinine", 1.0, f"{CR1}: mg/dL x 88.42 = µmol/L"),
    ("2160-0", 88.42, None, "mcmol/L", "creatinine", 1.0, f"{CR1}: mg/dL x 88.42 = µmol/L"),
    ("2132-9", 148, "pmol/L", None, "vitamin_b12", 200.0, f"{CR1}: 200 pg/mL = 148 pmol/L"),
    ("2132-9", 200, None, "ng/L", "vitamin_b12", 200.0, f"{CR1}: pg/mL = ng/L"),
    ("62292-8", 50, "nmol/L", None, "vitamin_d", 20.0, f"{CR1}: 20 ng/mL = 50 nmol/L"),
    ("62292-8", 75, None, "nmol/L", "vitamin_d", 30.0, f"{CR1}: 30 ng/mL = 75 nmol/L"),
    ("62292-8", 20, None, "µg/L", "vitamin_d", 20.0, "ng/mL = µg/L (same quantity)"),
    ("3016-3", 5.2, None, "mIU/L", "tsh", 5.2, f"{CR1}: m[IU]/L = u[IU]/mL"),
    ("3016-3", 5.2, None, "µIU/mL", "tsh", 5.2, f"{CR1}: m[IU]/L = u[IU]/mL"),
    ("3016-3", 5.2, None, "uU/mL", "tsh", 5.2, f"{CR1}: m[IU]/L = u[IU]/mL"),
]


@pytest.mark.parametrize(("loinc", "value", "code", "text", "analyte", "expected", "source"), UNITS,
                         ids=[f"{u[4]}-{u[2] or u[3]}" for u in UNITS])
def test_each_unit_converts_by_its_cited_factor(terminology, loinc, value, code, text, analyte, expected,
                                                source) -> None:
    facts = facts_of(terminology, lab("u", loinc, value, code, text=text))
    result = facts.latest(analyte)
    assert result is not None and result.interpretable, (source, facts.warnings)
    assert result.value == pytest.approx(expected, rel=0.01), source
    assert not facts.warnings


def test_a_value_in_a_unit_the_service_cannot_convert_is_judged_by_its_own_range(terminology) -> None:
    ck = lab("ck", "2157-6", 40.0, None, text="nkat/s", reference=(None, 3.0))
    result = facts_of(terminology, ck).latest("ck")
    assert result is not None and not result.interpretable
    assert (result.unit, result.ref_high, result.ref_from_resource) == ("nkat/s", 3.0, True)
    assert result.times_uln == pytest.approx(40 / 3)


def test_a_range_in_another_unit_does_not_judge_an_unconvertible_value(terminology) -> None:
    ck = lab("ck", "2157-6", 40.0, None, text="nkat/s")
    ck["referenceRange"] = [{"high": {"value": 200, "unit": "U/L", "code": "U/L"}}]
    result = facts_of(terminology, ck).latest("ck")
    assert (result.ref_high, result.ref_from_resource) == (None, False)


@pytest.mark.parametrize(("flags", "above", "below"), [(["H"], True, False), (["LL"], False, True),
                                                        (["N"], False, False), ([], None, None)])
def test_without_a_range_the_labs_own_flags_decide(terminology, flags, above, below) -> None:
    tsh = lab("tsh", "3016-3", 9.0, None, text="mU/mL (local)")
    tsh["interpretation"] = [{"coding": [{"system": FLAGS, "code": flag}]} for flag in flags]
    facts = facts_of(terminology, tsh)
    checks = {check: evaluate(LabCriterion("tsh", timedelta(days=30), "P30D", range_checks=(check,)), facts).state
              for check in ("above_range", "below_range")}
    assert checks == {"above_range": above, "below_range": below}
    threshold = LabCriterion("tsh", timedelta(days=30), "P30D", comparisons=(("above", 4.5),))
    assert evaluate(threshold, facts).state is None  # 4.5 mIU/L says nothing about a value in an unknown unit


# ---------------------------------------------------------------- comparators and precision
@pytest.mark.parametrize(("op", "value", "comparator", "limit", "expected"), [
    ("below", 2.5, "<", 2.5, True),  # "<2.5" is below 2.5
    ("below", 2.4, "<=", 2.5, True),
    ("below", 2.5, "<=", 2.5, None),  # may be exactly 2.5
    ("below", 2.6, "<", 2.5, None),  # "<2.6": not certainly below 2.5
    ("below", 60, ">", 60, False),  # ">60" eGFR is not low
    ("below", 59, ">", 60, None),
    ("above", 5000, ">", 2000, True),
    ("above", 2000, ">=", 2000, None),
    ("above", 8, "<", 10, False),
    ("at_least", 10, ">=", 10, True),
    ("at_least", 10, "<", 10, False),
    ("at_least", 10, "<=", 10, None),
    ("at_most", 10, "<", 10, True),
    ("at_most", 10, ">", 10, False),
    ("at_most", 10, ">=", 10, None),
    ("below", 3.0, "", 3.5, True),
    ("below", 3.5, "", 3.5, False),
])
def test_a_reported_bound_decides_a_threshold_only_when_it_can(op, value, comparator, limit, expected) -> None:
    assert bounded(op, value, comparator, limit) is expected


def text_bound(ident: str, loinc: str, text: str, reference: tuple[Any, Any] | None, unit: str) -> dict[str, Any]:
    """A lab whose value came as ``valueString`` (no valueQuantity), with its own range in ``unit``."""
    resource = lab(ident, loinc, 0, unit, reference=reference)
    del resource["valueQuantity"]
    if reference is None:
        resource.pop("referenceRange", None)
    return resource | {"valueString": text}


@pytest.mark.parametrize(("loinc", "text", "reference", "unit", "analyte", "value", "comparator", "reported"), [
    ("2823-3", "<2.5", (3.5, 5.1), "mmol/L", "potassium", 2.5, "<", "<2.5 mmol/L"),
    ("33914-3", "> 60", (60, None), "mL/min/{1.73_m2}", "egfr", 60.0, ">", ">60 mL/min/{1.73_m2}"),
    ("3016-3", "<=0.5", (0.4, 4.0), "m[IU]/L", "tsh", 0.5, "<=", "<=0.5 m[IU]/L"),
    ("2157-6", " >5000 ", (None, 200), "U/L", "ck", 5000.0, ">", ">5000 U/L"),
    ("2157-6", ">80", (None, 3.3), "ukat/L", "ck", 4800.0, ">", ">80 ukat/L"),  # the range's unit converts
])
def test_a_comparator_written_as_text_is_read_in_the_unit_of_the_labs_range(
        terminology, loinc, text, reference, unit, analyte, value, comparator, reported) -> None:
    facts = facts_of(terminology, text_bound("t", loinc, text, reference, unit))
    result = facts.latest(analyte)
    assert result is not None and result.interpretable, facts.warnings
    assert (result.value, result.comparator, result.reported) == (pytest.approx(value), comparator, reported)
    assert result.ref_from_resource and not facts.warnings


def test_a_comparator_as_text_without_a_range_unit_is_a_result_judged_only_by_its_flags(terminology) -> None:
    facts = facts_of(terminology, text_bound("t", "2823-3", "<2.5", None, "mmol/L"))
    result = facts.latest("potassium")
    assert result is not None and not result.interpretable
    assert (result.value, result.comparator, result.reported) == (2.5, "<", "<2.5")
    assert facts.warnings == ("Observation/t: no unit for potassium: judged only by the lab's own range and flags",)


@pytest.mark.parametrize("text", ["2.5", "<2.5 mmol/L", "<2.5 (hemolysed)", "< ", "2.5-3.0", "<<2.5", "=<2.5",
                                  "<2,5", "≤2.5", "<1e3", "see comment"])
def test_any_other_text_value_stays_unread_with_a_warning(terminology, text) -> None:
    facts = facts_of(terminology, text_bound("t", "2823-3", text, (3.5, 5.1), "mmol/L"))
    assert facts.latest("potassium") is None
    assert facts.warnings == (f"Observation/t: no numeric value for potassium (value {text!r} is text)",)


def result_of(value: float, *, factor: float = 1.0, decimals: int | None = 2) -> LabResult:
    return LabResult("calcium", value * factor, "mg/dL", NOW, None, None, None, False, (), "", "Observation/x",  # type: ignore[arg-type]
                     factor=factor, decimals=decimals)


@pytest.mark.parametrize(("reported", "decimals", "below"), [
    (2.12, 2, False), (2.11, 2, True), (2.13, 2, False), (2.12, None, False),
    (2, 0, True),  # "2.00" sent by a server that drops trailing zeros
    (2.121, 3, False), (2.12, 3, True),  # finer than the limit's three digits: the lab's own decimals
])
def test_a_converted_value_is_compared_at_the_precision_the_lab_reported(reported, decimals, below) -> None:
    result = result_of(reported, factor=4.008, decimals=decimals)
    value, limit = at_lab_precision(result, 8.5)
    assert (value < limit) is below


def test_without_the_labs_precision_its_lower_limit_would_be_low() -> None:
    assert 2.12 * 4.008 < 8.5  # 8.497 mg/dL: why the comparison is made at the precision the lab reported


def test_a_lab_dated_only_by_period_instant_or_issued_is_read(terminology) -> None:
    dates = [{"effectivePeriod": {"start": day(3)}}, {"effectivePeriod": {"start": day(9), "end": day(4)}},
             {"effectiveInstant": day(5)}, {"issued": day(6)}]
    facts = facts_of(terminology, *(lab(f"k{i}", "2823-3", 3.0, "mmol/L", dated=d) for i, d in enumerate(dates)))
    assert [r.effective for r in facts.labs["potassium"]] == [NOW - timedelta(days=d) for d in (3, 4, 5, 6)]


# ---------------------------------------------------------------- cramps written as text
@pytest.mark.parametrize(("text", "concepts"), [
    ("Leg cramps", ["cramp"]), ("Nocturnal leg cramping", ["cramp"]), ("charley horses at night", ["cramp"]),
    ("Charlie horse", ["cramp"]), ("Muscle spasms, calves", ["spasm"]), ("No fever, leg cramps", ["cramp"]),
    ("Denies fever; reports cramps", ["cramp"]),
    ("no cramps", []), ("Denies cramps", []), ("cramps: no", []), ("Cramps - none", []),
    ("negative for cramps", []), ("without cramps", []), ("no fever or cramps", []), ("cramps absent", []),
    ("abdominal cramps", []), ("menstrual cramping", []), ("bronchospasm", []),
])
def test_text_cramps_and_their_negations(terminology, text, concepts) -> None:
    assert terminology.symptom_text.concepts(text) == concepts


def test_text_only_conditions_and_observations_are_findings(terminology) -> None:
    resources = [
        {"resourceType": "Condition", "id": "c1", "clinicalStatus": ACTIVE, "code": {"text": "Leg cramps"}},
        {"resourceType": "Condition", "id": "c2", "clinicalStatus": ACTIVE, "code": {"text": "Denies cramps"}},
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "Chief complaint"},
         "valueString": "calf cramping at night", "effectivePeriod": {"start": day(3)}},
        {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "Muscle spasms"},
         "valueBoolean": False, "effectiveDateTime": day(3)},
    ]
    facts = facts_of(terminology, *resources)
    assert sorted((f.resource, f.concept, f.display) for f in facts.findings) == [
        ("Condition/c1", "cramp", "Leg cramps"), ("Observation/o1", "cramp", "calf cramping at night")]


# ---------------------------------------------------------------- over HTTP, against the real app
@pytest.fixture
def base_url(make_app) -> Iterator[str]:
    with running(make_app()) as url:
        yield url


STATIN = {"resourceType": "MedicationRequest", "id": "statin-1", "status": "active", "intent": "order",
          "subject": SUBJECT, "authoredOn": "2026-06-01",
          "medicationCodeableConcept": {"text": "atorvastatin 40 MG Oral Tablet", "coding": [
              {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "617311"}]}}


FUROSEMIDE = {**STATIN, "id": "furosemide-1", "medicationCodeableConcept": {
    "text": "furosemide 40 MG Oral Tablet", "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                        "code": "313988"}]}}


def cramps(text: str | None = None) -> dict[str, Any]:
    code: dict[str, Any] = {"text": text} if text else {
        "coding": [{"system": "http://snomed.info/sct", "code": "55300003", "display": "Cramp"}]}
    return {"resourceType": "Condition", "id": "cramp-1", "subject": SUBJECT, "clinicalStatus": ACTIVE,
            "code": code, "onsetDateTime": "2026-10-20"}


def call(base_url: str, *, labs: list[dict[str, Any]] = (), meds: list[dict[str, Any]] = (),  # type: ignore[assignment]
         condition: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    prefetch = empty_prefetch()
    prefetch["labs"] = searchset(*labs)
    prefetch["medrequests"] = searchset(*meds)
    prefetch["conditions"] = searchset(condition or cramps())
    response = requests.post(f"{base_url}/cds-services/{PV}", json=hook_request("patient-view", prefetch), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid_response(body)
    return body["cards"]


def text_of(cards: list[dict[str, Any]]) -> str:
    return json.dumps(cards, ensure_ascii=False)


def test_http_a_ck_in_ukat_per_litre_fires_the_statin_ck_card(base_url) -> None:
    ck = lab("ck-si", "2157-6", 40.0, "ukat/L", text="µkat/L", reference=(None, 3.3))  # 2400 U/L, 12x ULN
    cards = call(base_url, labs=[ck], meds=[STATIN])
    text = text_of(cards)
    assert "no CK" not in text
    assert any("CK" in c["summary"] for c in cards) and "12.1× the upper limit" in text, text


def test_http_a_ck_in_an_unknown_unit_is_never_no_ck(base_url, caplog) -> None:
    caplog.set_level(logging.INFO)
    ck = lab("ck-odd", "2157-6", 40.0, None, text="nkat/s")
    cards = call(base_url, labs=[ck], meds=[STATIN])
    assert "no CK" not in text_of(cards)
    assert "CK **40 nkat/s**, no reference range, **could not be interpreted**" in text_of(cards)
    [line] = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "cds_service.requests"]
    assert line["warnings"] == [
        "Observation/ck-odd: unknown unit 'nkat/s' for ck: judged only by the lab's own range and flags"]


def test_http_an_unknown_comparator_is_a_result_with_a_warning(base_url, caplog) -> None:
    caplog.set_level(logging.INFO)
    potassium = lab("k-odd", "2823-3", 2.0, "mmol/L", comparator="~")
    assert any("no potassium" in card["summary"] for card in call(base_url, meds=[FUROSEMIDE]))
    cards = call(base_url, labs=[potassium], meds=[FUROSEMIDE])
    assert not any("no potassium" in card["summary"] for card in cards)
    line = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "cds_service.requests"][-1]
    assert line["warnings"] == [
        "Observation/k-odd: unknown comparator '~' for potassium: judged only by the lab's own range and flags"]


def test_http_an_unknown_unit_with_its_own_range_fires_and_says_so(base_url) -> None:
    ck = lab("ck-odd", "2157-6", 40.0, None, text="nkat/s", reference=(None, 3.0))  # 13x the lab's own limit
    text = text_of(call(base_url, labs=[ck], meds=[STATIN]))
    assert "13.3× the upper limit" in text and "a unit the service cannot convert" in text


def test_http_a_potassium_below_2_5_is_critical(base_url) -> None:
    cards = call(base_url, labs=[lab("k", "2823-3", 2.5, "mmol/L", comparator="<")])
    assert [c["indicator"] for c in cards if "potassium" in c["summary"].lower()] == ["critical"], cards
    assert "&lt;2.5" in text_of(cards) or "<2.5" in text_of(cards)


def test_http_a_potassium_written_as_text_below_2_5_is_critical(base_url) -> None:
    cards = call(base_url, labs=[text_bound("k", "2823-3", "<2.5", (3.5, 5.1), "mmol/L")])
    assert [c["indicator"] for c in cards if "potassium" in c["summary"].lower()] == ["critical"], cards
    assert "&lt;2.5 mmol/L" in text_of(cards) or "<2.5 mmol/L" in text_of(cards)


def test_http_a_potassium_below_2_6_is_not_certainly_critical(base_url) -> None:
    cards = call(base_url, labs=[lab("k", "2823-3", 2.6, "mmol/L", comparator="<")])
    assert "critical" not in [c["indicator"] for c in cards]
    assert any("potassium" in c["summary"].lower() for c in cards)  # "<2.6" is certainly below 3.5


def test_http_an_egfr_above_60_is_not_low(base_url) -> None:
    egfr = lab("e", "33914-3", 60, "mL/min/{1.73_m2}", comparator=">")
    text = text_of(call(base_url, labs=[egfr], meds=[STATIN]))
    assert "Reduced kidney function" not in text


def calcium_panel(calcium: float) -> list[dict[str, Any]]:
    return [lab("ca", "17861-6", calcium, "mmol/L", reference=(2.12, 2.62)),
            lab("alb", "1751-7", 42, "g/L", reference=(35, 50))]


def test_http_a_calcium_at_the_labs_lower_limit_is_silent(base_url) -> None:
    assert "calcium" not in text_of(call(base_url, labs=calcium_panel(2.12))).lower()
    assert "calcium" in text_of(call(base_url, labs=calcium_panel(2.05))).lower()


@pytest.mark.parametrize("dated", [{"effectivePeriod": {"start": day(2)}}, {"effectiveInstant": day(2)},
                                   {"issued": day(2)}], ids=["period-start", "instant", "issued"])
def test_http_a_potassium_dated_only_by_period_instant_or_issued_fires(base_url, dated) -> None:
    cards = call(base_url, labs=[lab("k", "2823-3", 3.0, "mmol/L", dated=dated)])
    assert any("potassium" in c["summary"].lower() for c in cards), cards


def test_http_text_only_leg_cramps_fire_and_denied_cramps_are_silent(base_url) -> None:
    potassium = [lab("k", "2823-3", 3.0, "mmol/L")]
    assert call(base_url, labs=potassium, condition=cramps("Leg cramps"))
    assert call(base_url, labs=potassium, condition=cramps("Patient denies cramps")) == []
