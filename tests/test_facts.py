"""PatientRecord → PatientFacts: labs in canonical units, medicines by ingredient, current findings, odd shapes."""
from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.config import load_config
from cds_service.facts.build import FactWindows, build_facts
from cds_service.facts.labs import LabSeries
from cds_service.facts.model import PatientFacts
from cds_service.facts.terminology import Terminology
from cds_service.record.model import PatientRecord
from cds_service.record.obtain import obtain_record
from cds_service.record.settings import RecordSettings
from cds_service.wire.hook_request import HookCall

NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
DATA = Path(__file__).parent / "data" / "facts"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PATIENT_ID = "p1"


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def lab(ident: str, loinc: str, value: Any, unit: str | None, *, days: float = 1, text_unit: str | None = None,
        **extra: Any) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity |= {"system": UCUM, "code": unit, "unit": text_unit or unit}
    elif text_unit is not None:
        quantity["unit"] = text_unit
    return {"resourceType": "Observation", "id": ident, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": loinc}]}, "effectiveDateTime": ago(days),
            "valueQuantity": quantity, **extra}


def rx(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": RXNORM, "code": code, "display": display}], "text": display}


def request(ident: str, medication: dict[str, Any] | None = None, *, status: str = "active", days: float = 100,
            **extra: Any) -> dict[str, Any]:
    resource = {"resourceType": "MedicationRequest", "id": ident, "status": status, "intent": "order",
                "authoredOn": ago(days), **extra}
    if medication is not None:
        resource["medicationCodeableConcept"] = medication
    return resource


def condition(ident: str, system: str, code: str, *, clinical: str | None = "active",
              verification: str | None = "confirmed", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Condition", "id": ident,
                                "code": {"coding": [{"system": system, "code": code}]}, **extra}
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                  "code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    return resource


def symptom(ident: str, code: str = "55300003", *, days: float = 3, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": ident, "status": "final",
            "code": {"coding": [{"system": SNOMED, "code": code}]}, "effectiveDateTime": ago(days), **extra}


def record(*resources: Any, gender: str | None = "female", drafts: list[dict[str, Any]] | None = None,
           selections: frozenset[str] = frozenset()) -> PatientRecord:
    grouped: dict[str, list[Any]] = {}
    if gender:
        patient = {"resourceType": "Patient", "id": PATIENT_ID, "gender": gender, "birthDate": "1950-03-01"}
        grouped["Patient"] = [patient]
    for resource in resources:
        kind = resource.get("resourceType", "Observation") if isinstance(resource, dict) else "Observation"
        grouped.setdefault(kind, []).append(resource)
    return PatientRecord(PATIENT_ID, grouped, draft_orders=drafts or [], selections=selections)


def facts_of(terminology: Terminology, *resources: Any, **kwargs: Any) -> PatientFacts:
    return build_facts(record(*resources, **kwargs), terminology, NOW)


# ---------------------------------------------------------------- labs: units
@pytest.mark.parametrize(("loinc", "value", "unit", "text", "analyte", "expected", "canonical"), [
    ("6298-4", 3.1, "mmol/L", None, "potassium", 3.1, "mmol/L"),
    ("2823-3", 3.1, "meq/L", "mEq/L", "potassium", 3.1, "mmol/L"),
    ("2823-3", 3.1, None, "mEq/L", "potassium", 3.1, "mmol/L"),  # no UCUM code: the unit text decides
    ("2951-2", 128, None, "MEQ/L", "sodium", 128.0, "mmol/L"),
    ("19123-9", 0.70, "mmol/L", None, "magnesium", 1.70, "mg/dL"),
    ("19123-9", 1.40, "meq/L", None, "magnesium", 1.70, "mg/dL"),
    ("17861-6", 2.12, "mmol/L", None, "calcium", 8.50, "mg/dL"),
    ("1994-3", 4.49, "mg/dL", None, "calcium_ionized", 1.12, "mmol/L"),
    ("62292-8", 50, "nmol/L", None, "vitamin_d", 20.03, "ng/mL"),  # ng/mL x 2.496 = nmol/L
    ("2132-9", 148, "pmol/L", None, "vitamin_b12", 200.54, "pg/mL"),  # pg/mL x 0.738 = pmol/L
    ("2345-7", 3.9, "mmol/L", None, "glucose", 70.26, "mg/dL"),  # mg/dL / 18.016 = mmol/L
    ("2160-0", 88.42, "umol/L", None, "creatinine", 1.0, "mg/dL"),
    ("1751-7", 35, "g/L", None, "albumin", 3.5, "g/dL"),
    ("8310-5", 100.4, "[degF]", None, "body_temperature", 38.0, "Cel"),
    ("8331-1", 100.4, None, "°F", "body_temperature", 38.0, "Cel"),
    ("3016-3", 5.2, "u[IU]/mL", None, "tsh", 5.2, "m[IU]/L"),
    ("33914-3", 55, "mL/min", None, "egfr", 55.0, "mL/min/{1.73_m2}"),
    ("4548-4", 48, "mmol/mol", None, "hba1c", 6.54, "%"),  # (% - 2.15) x 10.929 = mmol/mol
])
def test_values_are_converted_to_the_canonical_unit(
    terminology: Terminology, loinc: str, value: float, unit: str | None, text: str | None, analyte: str,
    expected: float, canonical: str,
) -> None:
    facts = facts_of(terminology, lab("o1", loinc, value, unit, text_unit=text))
    result = facts.latest(analyte)
    assert result is not None, facts.warnings
    assert result.value == pytest.approx(expected, abs=0.01)
    assert result.unit == canonical
    assert result.reported.startswith(f"{value:g} ")
    assert not facts.warnings


def test_an_unknown_unit_keeps_the_value_as_reported_with_a_warning(terminology: Terminology) -> None:
    facts = facts_of(terminology, lab("abc", "2823-3", 3.1, "xyz"))
    result = facts.latest("potassium")
    assert result is not None and not result.interpretable
    assert (result.value, result.unit, result.reported) == (3.1, "xyz", "3.1 xyz")
    assert facts.warnings == ("Observation/abc: unknown unit 'xyz' for potassium: judged only by the lab's own "
                              "range and flags",)


def test_a_value_without_a_unit_is_kept_as_reported_with_a_warning(terminology: Terminology) -> None:
    facts = facts_of(terminology, lab("bare", "2823-3", 3.1, "mmol/L") | {"valueQuantity": {"value": 0}})
    result = facts.latest("potassium")
    assert result is not None and not result.interpretable
    assert (result.value, result.unit, result.reported) == (0, "", "0")
    assert facts.warnings == ("Observation/bare: no unit for potassium: judged only by the lab's own range and flags",)


@pytest.mark.parametrize(("change", "warning"), [
    ({"valueQuantity": None, "valueString": "<2.0 haemolysed"},
     "Observation/v: no numeric value for potassium (value '<2.0 haemolysed' is text)"),
    ({"valueQuantity": {"value": "low", "code": "mmol/L"}},
     "Observation/v: value 'low' for potassium is not a number, not used"),
    ({"effectiveDateTime": None}, "Observation/v: no effective time for potassium"),
])
def test_unusable_values_are_skipped_with_a_named_warning(
    terminology: Terminology, change: dict[str, Any], warning: str
) -> None:
    observation = lab("v", "2823-3", 3.1, "mmol/L")
    observation.update(change)
    facts = facts_of(terminology, {k: v for k, v in observation.items() if v is not None})
    assert facts.latest("potassium") is None
    assert facts.warnings == (warning,)


def test_a_number_sent_as_a_string_is_read(terminology: Terminology) -> None:
    assert facts_of(terminology, lab("s", "2823-3", "3.2", "mmol/L")).latest("potassium").value == 3.2


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "preliminary"])
def test_unreliable_statuses_are_skipped(terminology: Terminology, status: str) -> None:
    facts = facts_of(terminology, lab("x", "2823-3", 2.1, "mmol/L", status=status))
    assert facts.latest("potassium") is None and not facts.warnings


@pytest.mark.parametrize("status", ["entered-in-error ", " cancelled", "entered-in-error\n"])
def test_a_status_with_whitespace_around_it_is_read_as_its_code(terminology: Terminology, status: str) -> None:
    # Oracle Health's published R4 Observation example sends "entered-in-error " (fixtures/vendors/README.md)
    erroneous = facts_of(terminology, lab("x", "2823-3", 2.1, "mmol/L", status=status), symptom("s", status=status))
    assert erroneous.latest("potassium") is None and erroneous.findings == () and not erroneous.warnings
    current = facts_of(terminology, request("m", rx("313988", "furosemide 40 MG Oral Tablet"), status=" active "))
    assert [m.name for m in current.medications] == ["furosemide 40 MG Oral Tablet"]


# ---------------------------------------------------------------- labs: time and order
def test_results_are_newest_first_across_blood_and_serum_codes(terminology: Terminology) -> None:
    facts = facts_of(terminology, lab("old", "6298-4", 4.0, "mmol/L", days=40),
                     lab("new", "2823-3", 3.0, "mmol/L", days=2), lab("mid", "6298-4", 3.5, "mmol/L", days=10))
    assert [r.resource for r in facts.labs["potassium"]] == ["Observation/new", "Observation/mid", "Observation/old"]
    assert facts.latest("potassium").code.code == "2823-3"


def test_effective_time_falls_back_to_period_end_then_issued(terminology: Terminology) -> None:
    period = lab("p", "2823-3", 3.0, "mmol/L", effectivePeriod={"start": "2025-06-01", "end": "2025-06-02T08:00:00Z"})
    del period["effectiveDateTime"]
    issued = lab("i", "2823-3", 3.1, "mmol/L", issued="2025-06-03T08:00:00+02:00")
    del issued["effectiveDateTime"]
    facts = facts_of(terminology, period, issued)
    assert [r.effective for r in facts.labs["potassium"]] == [
        datetime(2025, 6, 3, 6, 0, tzinfo=UTC), datetime(2025, 6, 2, 8, 0, tzinfo=UTC)]


def test_naive_and_date_only_times_are_utc(terminology: Terminology) -> None:
    facts = facts_of(terminology, lab("d", "2823-3", 3.0, "mmol/L", effectiveDateTime="2025-06-01"),
                     lab("n", "2951-2", 140, "mmol/L", effectiveDateTime="2025-06-01T10:30:00"))
    assert facts.latest("potassium").effective == datetime(2025, 6, 1, tzinfo=UTC)
    assert facts.latest("sodium").effective == datetime(2025, 6, 1, 10, 30, tzinfo=UTC)


# ---------------------------------------------------------------- labs: reference ranges and interpretation
def test_the_resource_range_wins_and_is_converted(terminology: Terminology) -> None:
    observation = lab("r", "19123-9", 0.6, "mmol/L", interpretation=[{"coding": [{"code": "L"}]}],
                      referenceRange=[{"low": {"value": 0.7, "code": "mmol/L"},
                                       "high": {"value": 1.0, "unit": "mmol/L"}}])
    result = facts_of(terminology, observation).latest("magnesium")
    assert result.ref_from_resource
    assert (result.ref_low, result.ref_high) == pytest.approx((1.70, 2.43), abs=0.01)
    assert result.interpretation == ("L",)


def test_a_range_without_units_is_in_the_value_unit(terminology: Terminology) -> None:
    observation = lab("r", "19123-9", 0.6, "mmol/L", referenceRange=[{"low": {"value": 0.7}}])
    result = facts_of(terminology, observation).latest("magnesium")
    assert (result.ref_low, result.ref_high, result.ref_from_resource) == (pytest.approx(1.70, abs=0.01), None, True)


def test_without_a_range_the_cited_default_applies(terminology: Terminology) -> None:
    result = facts_of(terminology, lab("k", "6298-4", 3.2, "mmol/L")).latest("potassium")
    assert (result.ref_low, result.ref_high, result.ref_from_resource) == (3.5, 5.0, False)


@pytest.mark.parametrize(("gender", "uln"), [("female", 200), ("male", 300), (None, 200), ("unknown", 200)])
def test_ck_upper_limit_default_depends_on_sex(terminology: Terminology, gender: str | None, uln: float) -> None:
    result = facts_of(terminology, lab("ck", "2157-6", 2500, "U/L"), gender=gender).latest("ck")
    assert result.ref_high == uln
    assert result.times_uln == pytest.approx(2500 / uln)


def test_ck_range_from_the_resource_overrides_the_default(terminology: Terminology) -> None:
    observation = lab("ck", "2157-6", 2500, "U/L", referenceRange=[{"high": {"value": 170, "code": "U/L"}}])
    assert facts_of(terminology, observation, gender="male").latest("ck").times_uln == pytest.approx(2500 / 170)


# ---------------------------------------------------------------- labs: corrected calcium
def test_corrected_calcium_uses_same_day_albumin(terminology: Terminology) -> None:
    facts = facts_of(terminology, lab("ca", "17861-6", 8.0, "mg/dL", days=1), lab("alb", "1751-7", 20, "g/L", days=1.1),
                     lab("ca-old", "49765-1", 9.0, "mg/dL", days=30))
    corrected = facts.labs["calcium_corrected"]
    assert len(corrected) == 1  # the older calcium has no albumin that day
    assert corrected[0].value == pytest.approx(8.0 + 0.8 * (4.0 - 2.0))
    assert corrected[0].unit == "mg/dL" and corrected[0].resource == "Observation/ca"
    assert (corrected[0].ref_low, corrected[0].ref_high) == (8.5, 10.2)
    assert "albumin 20 g/L" in corrected[0].reported


def test_calcium_in_mmol_is_corrected_in_mg_dl(terminology: Terminology) -> None:
    facts = facts_of(terminology, lab("ca", "2000-8", 2.0, "mmol/L"), lab("alb", "1751-7", 3.0, "g/dL"))
    assert facts.latest("calcium_corrected").value == pytest.approx(2.0 * 4.008 + 0.8)


@pytest.mark.parametrize(("albumin", "expected"), [(4.0, 8.3), (5.4, 8.3), (3.9, 8.3 + 0.8 * 0.1)])
def test_calcium_is_not_corrected_downwards_for_a_normal_or_high_albumin(terminology, albumin, expected) -> None:
    facts = facts_of(terminology, lab("ca", "17861-6", 8.3, "mg/dL"), lab("alb", "1751-7", albumin, "g/dL"))
    assert facts.latest("calcium_corrected").value == pytest.approx(expected)


def test_the_labs_own_corrected_calcium_is_used_and_wins_over_a_same_day_derivation(terminology) -> None:
    facts = facts_of(terminology, lab("cc", "29265-6", 2.05, "mmol/L", days=1),
                     lab("ca", "2000-8", 1.9, "mmol/L", days=1.05), lab("alb", "1751-7", 30, "g/L", days=1.05),
                     lab("ca-old", "17861-6", 8.0, "mg/dL", days=5), lab("alb-old", "1751-7", 3.0, "g/dL", days=5))
    corrected = facts.labs["calcium_corrected"]
    assert [r.resource for r in corrected] == ["Observation/cc", "Observation/ca-old"]  # newest first, no 'ca'
    assert corrected[0].value == pytest.approx(2.05 * 4.008) and corrected[0].reported == "2.05 mmol/L"
    assert corrected[1].value == pytest.approx(8.8)
    assert "calcium_uncorrected" not in facts.labs


def test_total_calcium_without_albumin_is_kept_uncorrected_until_a_corrected_value_supersedes_it(terminology) -> None:
    facts = facts_of(terminology, lab("ca-new", "17861-6", 6.8, "mg/dL", days=1),
                     lab("ca", "17861-6", 8.0, "mg/dL", days=3), lab("alb", "1751-7", 3.0, "g/dL", days=3),
                     lab("ca-older", "49765-1", 7.0, "mg/dL", days=9))
    uncorrected = facts.labs["calcium_uncorrected"]
    assert [r.resource for r in uncorrected] == ["Observation/ca-new"]  # ca-older is older than the corrected ca
    assert uncorrected[0].value == 6.8 and uncorrected[0].unit == "mg/dL"
    assert uncorrected[0].reported == "total calcium 6.8 mg/dL, no albumin the same day"
    assert (uncorrected[0].ref_low, uncorrected[0].ref_high) == (8.5, 10.2)
    assert facts.latest("calcium_corrected").resource == "Observation/ca"


@pytest.mark.parametrize(("comparator", "value", "unit", "loinc", "analyte"), [
    ("<", 8, "ng/mL", "62292-8", "vitamin_d"),
    (">", 5000, "U/L", "2157-6", "ck"),
    ("<=", 0.01, "m[IU]/L", "3016-3", "tsh"),
])
def test_a_reported_bound_is_used_as_the_bound_with_its_comparator(terminology, comparator, value, unit, loinc,
                                                                   analyte) -> None:
    observation = lab("b", loinc, value, unit)
    observation["valueQuantity"]["comparator"] = comparator
    result = facts_of(terminology, observation).latest(analyte)
    assert (result.value, result.comparator) == (pytest.approx(value), comparator)
    assert result.reported.startswith(f"{comparator}{value}")


def test_a_value_sufficient_to_achieve_is_not_a_measurement(terminology) -> None:
    observation = lab("ad", "2157-6", 200, "U/L")
    observation["valueQuantity"]["comparator"] = "ad"
    facts = facts_of(terminology, observation)
    result = facts.latest("ck")
    assert result is not None and not result.interpretable and result.reported == "ad200 U/L"
    assert facts.warnings == ("Observation/ad: unknown comparator 'ad' for ck: judged only by the lab's own range "
                              "and flags",)


def test_lab_series_builds_results_on_demand_and_reads_like_a_tuple(terminology: Terminology) -> None:
    facts = facts_of(terminology, *(lab(f"k{i}", "6298-4", 4.0 - i / 10, "mmol/L", days=i) for i in range(1, 6)))
    series = facts.labs["potassium"]
    assert isinstance(series, LabSeries) and len(series) == 5
    assert series[0] is series[0] and series[-1].resource == "Observation/k5"
    assert series[1:3] == tuple(series)[1:3] and series == tuple(series)
    assert [r.value for r in series] == pytest.approx([3.9, 3.8, 3.7, 3.6, 3.5])


# ---------------------------------------------------------------- medications
def test_synthea_scdc_codes_are_classified(terminology: Terminology) -> None:
    facts = facts_of(terminology, request("a", rx("316672", "Simvistatin 10 MG")),
                     request("b", rx("315971", "Lasix 40mg")),
                     request("c", rx("197886", "hydrochlorothiazide 12.5 MG / lisinopril 20 MG Oral Tablet")))
    by_ref = {m.reference: m for m in facts.medications}
    assert by_ref["MedicationRequest/a"].classes == {"statin"}
    assert by_ref["MedicationRequest/b"].ingredients == {"furosemide"}
    assert by_ref["MedicationRequest/b"].classes == {"loop_diuretic"}
    assert by_ref["MedicationRequest/c"].ingredients == {"hydrochlorothiazide", "lisinopril"}
    assert by_ref["MedicationRequest/c"].classes == {"thiazide_diuretic", "ace_inhibitor"}
    assert facts.medications_in({"statin"})[0].name == "Simvistatin 10 MG"


def test_unknown_codes_fall_back_on_ingredient_names(terminology: Terminology) -> None:
    facts = facts_of(terminology, request("a", rx("999999", "Atorvastatin 10 MG Oral Capsule")),
                     request("b", rx("834061", "Penicillin V Potassium 250 MG Oral Tablet")))
    by_ref = {m.reference: m for m in facts.medications}
    assert by_ref["MedicationRequest/a"].classes == {"statin"}
    assert by_ref["MedicationRequest/b"].classes == frozenset()


def test_ingredient_codes_removed_as_unverified_still_classify_by_name(terminology: Terminology) -> None:
    """RxNorm IN 4109, 2396 and 644 are not shipped (issue 23: unconfirmed); the orders still reach their class."""
    facts = facts_of(terminology, request("a", rx("4109", "ethacrynic acid")),
                     request("b", rx("2396", "chlorothiazide")), request("c", rx("644", "amiloride")))
    assert {m.reference: m.classes for m in facts.medications} == {
        "MedicationRequest/a": {"loop_diuretic"}, "MedicationRequest/b": {"thiazide_diuretic"},
        "MedicationRequest/c": {"potassium_sparing_diuretic"}}


def test_atc_coding_alone_classifies(terminology: Terminology) -> None:
    atc = {"coding": [{"system": "http://www.whocc.no/atc", "code": "C03CA01", "display": "Furosemid"}]}
    assert facts_of(terminology, request("a", atc)).medications[0].classes == {"loop_diuretic"}


MEDICATION = {"resourceType": "Medication", "id": "med-1", "code": rx("259255", "atorvastatin 80 MG Oral Tablet")}


@pytest.mark.parametrize(("reference", "contained", "in_record"), [
    ("#med-1", True, False),  # contained
    ("urn:uuid:med-1", False, True),  # included in the Bundle (Synthea transaction style)
    ("Medication/med-1", False, True),  # read from the FHIR server by the record layer
    ("http://ehr.example/fhir/Medication/med-1", False, True),  # absolute reference
])
def test_medication_reference_is_followed(
    terminology: Terminology, reference: str, contained: bool, in_record: bool
) -> None:
    holder = request("mr", medicationReference={"reference": reference})
    if contained:
        holder["contained"] = [MEDICATION]
    facts = facts_of(terminology, holder, *([MEDICATION] if in_record else []))
    (use,) = facts.medications
    assert (use.name, use.ingredients, use.classes) == ("atorvastatin 80 MG Oral Tablet", {"atorvastatin"}, {"statin"})
    assert use.codes[0].code == "259255" and not facts.warnings


def test_medication_ingredients_classify_a_compounded_medication(terminology: Terminology) -> None:
    medication = {"resourceType": "Medication", "id": "m2", "code": {"text": "house mix"},
                  "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "9997"}]}}]}
    facts = facts_of(terminology, request("mr", medicationReference={"reference": "Medication/m2"}), medication)
    assert facts.medications[0].classes == {"potassium_sparing_diuretic", "mineralocorticoid_antagonist"}


def test_an_unresolved_reference_uses_its_display_with_a_warning(terminology: Terminology) -> None:
    reference = {"reference": "Medication/gone", "display": "Furosemide 40 MG"}
    facts = facts_of(terminology, request("mr", medicationReference=reference))
    assert facts.medications[0].classes == {"loop_diuretic"}
    assert facts.warnings == (
        "MedicationRequest/mr: medication reference 'Medication/gone' not found; classified by its text",)


@pytest.mark.parametrize(("status", "extra", "counted"), [
    ("active", {}, True),
    ("on-hold", {}, True),
    ("stopped", {}, False),
    ("cancelled", {}, False),
    ("completed", {}, False),
    ("completed", {"dispenseRequest": {"validityPeriod": {"start": ago(20), "end": ago(-10)}}}, True),
    ("completed", {"dispenseRequest": {"validityPeriod": {"start": ago(60), "end": ago(30)}}}, False),
    ("active", {"doNotPerform": True}, False),
])
def test_which_requests_are_current(
    terminology: Terminology, status: str, extra: dict[str, Any], counted: bool
) -> None:
    hctz = rx("310798", "Hydrochlorothiazide 25 MG Oral Tablet")
    facts = facts_of(terminology, request("mr", hctz, status=status, **extra))
    assert bool(facts.medications) is counted


def statement(ident: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationStatement", "id": ident, "status": status,
            "medicationCodeableConcept": rx("7646", "omeprazole"), **extra}


@pytest.mark.parametrize(("status", "extra", "counted"), [
    ("active", {}, True),
    ("intended", {}, True),
    ("completed", {"effectivePeriod": {"start": ago(200), "end": ago(10)}}, True),
    ("completed", {"effectivePeriod": {"start": ago(200), "end": ago(31)}}, False),
    ("stopped", {"effectiveDateTime": ago(5)}, True),
    ("completed", {}, False),
    ("entered-in-error", {}, False),
    ("not-taken", {"effectivePeriod": {"end": ago(1)}}, False),
    ("active", {"effectivePeriod": {"start": ago(900), "end": ago(700)}}, False),  # never updated: not current
    ("active", {"effectivePeriod": {"start": ago(900), "end": ago(10)}}, True),
])
def test_which_statements_are_current(
    terminology: Terminology, status: str, extra: dict[str, Any], counted: bool
) -> None:
    facts = facts_of(terminology, statement("ms", status, **extra))
    assert [m.classes for m in facts.medications] == ([{"proton_pump_inhibitor"}] if counted else [])
    if counted:
        assert facts.medications[0].kind == "statement"


def test_duplicate_orders_of_one_ingredient_keep_the_newest(terminology: Terminology) -> None:
    facts = facts_of(terminology, request("old", rx("312961", "Simvastatin 20 MG Oral Tablet"), days=6000),
                     request("new", rx("314231", "Simvastatin 10 MG Oral Tablet"), days=300),
                     statement("st", "active"), request("ppi", rx("7646", "omeprazole")))
    assert sorted(m.reference for m in facts.medications) == [
        "MedicationRequest/new", "MedicationRequest/ppi", "MedicationStatement/st"]


def test_draft_orders_carry_selection(terminology: Terminology) -> None:
    drafts = [request("d1", rx("617311", "atorvastatin 40 MG Oral Tablet"), status="draft"),
              request("d2", rx("7646", "omeprazole"), status="draft"),
              request("d3", None, status="draft"),  # no medication chosen yet: skipped, no warning
              {"resourceType": "ServiceRequest", "id": "s1", "status": "draft"}]
    facts = facts_of(terminology, drafts=drafts, selections=frozenset({"MedicationRequest/d1"}))
    assert [(m.reference, m.kind, m.selected) for m in facts.medications] == [
        ("MedicationRequest/d1", "draft", True), ("MedicationRequest/d2", "draft", False)]
    assert not facts.warnings


def test_order_sign_selects_every_draft(terminology: Terminology) -> None:
    drafts = [request("d1", rx("617311", "atorvastatin 40 MG Oral Tablet"), status="draft"),
              request("d2", rx("7646", "omeprazole"), status="draft")]
    body = {"hook": "order-sign", "hookInstance": "h", "context": {
        "userId": "Practitioner/1", "patientId": PATIENT_ID,
        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}}}
    call = HookCall.from_request("svc", body)
    facts = facts_of(terminology, drafts=list(call.draft_orders), selections=call.selections)
    assert [m.selected for m in facts.medications] == [True, True]


# ---------------------------------------------------------------- findings: conditions
@pytest.mark.parametrize(("system", "code", "concepts"), [
    (SNOMED, "55300003", ["cramp"]),
    (ICD, "R25.2", ["cramp", "spasm"]),
    (ICD, "G47.62", ["cramp"]),
    (SNOMED, "45352006", ["spasm"]),
    (ICD, "M62.830", ["spasm"]),
])
def test_cramp_and_spasm_conditions(terminology: Terminology, system: str, code: str, concepts: list[str]) -> None:
    facts = facts_of(terminology, condition("c", system, code, onsetDateTime=ago(5)))
    assert [f.concept for f in facts.findings] == concepts
    assert facts.findings[0].source == "Condition" and facts.findings[0].date == NOW - timedelta(days=5)


def test_a_problem_coded_in_two_systems_is_named_by_its_text(terminology: Terminology) -> None:
    # Epic and Oracle Health code a problem by SNOMED CT beside ICD-10-CM, the clinician's words in code.text
    coded = condition("c", SNOMED, "55300003", onsetDateTime=ago(5))
    coded["code"]["coding"] = [{"system": SNOMED, "code": "55300003", "display": "Cramp (finding)"},
                               {"system": ICD, "code": "R25.2", "display": "Cramp and spasm"}]
    named = facts_of(terminology, coded | {"code": coded["code"] | {"text": "Leg cramps"}}).findings
    assert [(f.concept, f.display, f.code.code) for f in named] == [
        ("cramp", "Leg cramps", "55300003"), ("spasm", "Leg cramps", "R25.2")]
    assert [f.display for f in facts_of(terminology, coded).findings] == [
        "Cramp (finding)", "Cramp (finding)"]  # without text, the first coding's display: still one name


@pytest.mark.parametrize(("kwargs", "counted"), [
    ({"verification": "refuted"}, False),
    ({"verification": "entered-in-error"}, False),
    ({"verification": "unconfirmed"}, True),
    ({"clinical": "recurrence"}, True),
    ({"clinical": "relapse"}, True),
    ({"clinical": "resolved", "abatementDateTime": ago(10)}, True),
    ({"clinical": "resolved", "abatementDateTime": ago(45)}, False),
    ({"clinical": "inactive"}, False),
    ({"clinical": "remission", "abatementPeriod": {"end": ago(3)}}, True),
    ({"clinical": None}, True),  # no clinicalStatus and no abatement: active
    ({"clinical": None, "abatementDateTime": ago(400)}, False),
    ({"clinical": None, "abatementString": "in childhood"}, False),
])
def test_which_conditions_are_current(terminology: Terminology, kwargs: dict[str, Any], counted: bool) -> None:
    facts = facts_of(terminology, condition("c", SNOMED, "55300003", **kwargs))
    assert bool(facts.findings_of({"cramp"})) is counted


def _category(*codes: str, system: str = "http://terminology.hl7.org/CodeSystem/condition-category") -> list[Any]:
    return [{"coding": [{"system": system, "code": code}]} for code in codes]


ENCOUNTER, PROBLEM = _category("encounter-diagnosis"), _category("problem-list-item")


@pytest.mark.parametrize(("kwargs", "counted"), [
    ({"category": ENCOUNTER, "recordedDate": ago(10)}, True),
    ({"category": ENCOUNTER, "recordedDate": ago(29)}, True),
    ({"category": ENCOUNTER, "recordedDate": ago(31)}, False),
    ({"category": ENCOUNTER, "onsetDateTime": ago(3 * 365), "recordedDate": ago(3 * 365)}, False),  # one old visit
    ({"category": ENCOUNTER, "onsetDateTime": ago(400), "recordedDate": ago(5)}, True),  # noted at a recent visit
    ({"category": ENCOUNTER, "onsetDateTime": ago(5)}, True),  # no recordedDate: the onset dates the statement
    ({"category": ENCOUNTER, "recordedDate": ago(5), "clinical": "resolved", "abatementDateTime": ago(60)}, False),
    ({"category": PROBLEM, "onsetDateTime": ago(3 * 365), "recordedDate": ago(3 * 365)}, True),  # while active
    ({"category": PROBLEM, "recordedDate": ago(3 * 365), "clinical": "inactive"}, False),
    ({"category": _category("encounter-diagnosis", "problem-list-item"), "recordedDate": ago(400)}, True),
    ({"category": _category("encounter-diagnosis", system="http://example.org/local"), "recordedDate": ago(400)},
     False),  # matched by code, whatever the system
    ({"category": _category("health-concern"), "recordedDate": ago(400)}, True),  # neither: its status decides
])
def test_an_encounter_diagnosis_speaks_for_its_visit(
    terminology: Terminology, kwargs: dict[str, Any], counted: bool
) -> None:
    facts = facts_of(terminology, condition("c", SNOMED, "55300003", **kwargs))
    assert bool(facts.findings_of({"cramp"})) is counted
    assert len(facts.finding_history) == 1  # timing criteria still see every Condition


def test_an_undated_encounter_diagnosis_is_not_used(terminology: Terminology) -> None:
    facts = facts_of(terminology, condition("c", SNOMED, "55300003", category=ENCOUNTER))
    assert not facts.findings
    assert "Condition/c: encounter diagnosis without a date, not used" in facts.warnings


def test_conditions_the_rules_need(terminology: Terminology) -> None:
    facts = facts_of(terminology, condition("t", SNOMED, "83664006"), condition("k", ICD, "N18.32"),
                     condition("d", SNOMED, "44054006"), condition("h", SNOMED, "38341003"))
    assert sorted(f.concept for f in facts.findings) == ["ckd", "ckd_stage_3_5", "diabetes", "hypothyroidism"]


# ---------------------------------------------------------------- findings: symptom observations
def test_symptom_observations_are_findings(terminology: Terminology) -> None:
    panel = {"resourceType": "Observation", "id": "panel", "status": "final",
             "code": {"coding": [{"system": LOINC, "code": "75325-1", "display": "Symptom"}]},
             "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "45352006", "display": "Spasm"}]},
             "effectiveDateTime": ago(2)}
    facts = facts_of(terminology, symptom("s1"), panel)
    assert [(f.concept, f.source, f.resource) for f in facts.findings] == [
        ("cramp", "Observation", "Observation/s1"), ("spasm", "Observation", "Observation/panel")]


@pytest.mark.parametrize("negation", [
    {"valueBoolean": False},
    {"valueString": "No"},
    {"valueString": " absent "},
    {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "2667000", "display": "Absent"}]}},
    {"valueCodeableConcept": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0136", "code": "N"}]}},
    {"interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                     "code": "NEG"}]}]},
])
def test_negated_symptoms_are_not_present(terminology: Terminology, negation: dict[str, Any]) -> None:
    assert facts_of(terminology, symptom("s", **negation)).findings == ()


@pytest.mark.parametrize(("extra", "counted"), [
    ({"valueBoolean": True}, True),
    ({"valueString": "both calves at night"}, True),
    ({"status": "entered-in-error"}, False),
    ({"effectiveDateTime": ago(89)}, True),
    ({"effectiveDateTime": ago(91)}, False),
])
def test_which_symptom_observations_are_current(terminology: Terminology, extra: dict[str, Any], counted: bool) -> None:
    assert bool(facts_of(terminology, symptom("s", **extra)).findings) is counted


def test_the_symptom_window_is_configurable(terminology: Terminology) -> None:
    narrow = FactWindows(observation_window=timedelta(days=7))
    assert build_facts(record(symptom("s", days=10)), terminology, NOW, narrow).findings == ()


def test_a_symptom_without_time_is_not_used(terminology: Terminology) -> None:
    observation = symptom("s")
    del observation["effectiveDateTime"]
    facts = facts_of(terminology, observation)
    assert facts.findings == () and facts.warnings == ("Observation/s: symptom without effective time, not used",)


def test_a_disorder_code_on_an_observation_is_not_a_symptom(terminology: Terminology) -> None:
    assert facts_of(terminology, symptom("s", code="43339004")).findings == ()


# ---------------------------------------------------------------- patient and odd shapes
def test_patient_demographics(terminology: Terminology) -> None:
    facts = facts_of(terminology, gender="male")
    assert (facts.patient_id, facts.sex, facts.birth_date, facts.now) == (PATIENT_ID, "male", date(1950, 3, 1), NOW)
    assert facts_of(terminology, gender=None).sex is None


def test_naive_now_is_utc(terminology: Terminology) -> None:
    assert build_facts(record(), terminology, datetime(2025, 7, 1)).now == datetime(2025, 7, 1, tzinfo=UTC)


def test_odd_shapes_never_crash(terminology: Terminology) -> None:
    odd_lab = lab("odd", "2823-3", "3.3", None, text_unit="mmol/l", days=0.5)
    odd_lab["category"] = {"coding": {"code": "laboratory"}}  # object instead of array, twice
    odd_lab["code"] = {"coding": {"system": LOINC, "code": "2823-3"}}
    broken: list[Any] = [
        "not a resource",
        {"resourceType": "Observation", "id": "nocode"},
        {"resourceType": "Observation", "id": "badcode", "code": [{"coding": [{"code": 42}]}]},
        {"resourceType": "Observation", "id": "badrange", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "6298-4"}]},
         "effectiveDateTime": ago(1), "valueQuantity": {"value": 3.0, "code": "mmol/L"}, "referenceRange": "3.5-5.0"},
        {"resourceType": "Observation", "id": "baddate", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "2951-2"}]},
         "effectiveDateTime": "yesterday", "valueQuantity": {"value": 140, "code": "mmol/L"}},
        {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": SNOMED, "code": 55300003}]},
         "clinicalStatus": "active", "onsetDateTime": 2020},
        {"resourceType": "Condition", "id": "c2"},
        {"resourceType": "Condition", "id": "c3", "code": "cramp", "verificationStatus": ["confirmed"]},
        {"resourceType": "MedicationRequest", "id": "m1", "status": "active",
         "medicationCodeableConcept": "simvastatin"},
        {"resourceType": "MedicationRequest", "id": "m2", "status": "active", "medicationReference": "Medication/x"},
        {"resourceType": "MedicationRequest", "id": "m3", "status": ["active"],
         "medicationCodeableConcept": rx("316672", "x")},
        {"resourceType": "MedicationStatement", "id": "s1", "status": "active",
         "medicationCodeableConcept": {"coding": None}},
        {"resourceType": "Medication"},
        odd_lab,
    ]
    facts = facts_of(terminology, *broken)
    assert facts.latest("potassium").value == 3.3  # number as a string, unit only as text, coding as an object
    assert facts.labs["potassium"][-1].resource == "Observation/badrange"  # a text range falls back to the default
    assert facts.labs["potassium"][-1].ref_from_resource is False
    assert [f.concept for f in facts.findings] == ["cramp"]  # numeric code and string status are forgiven
    assert facts.medications_in({"statin"})[0].reference == "MedicationRequest/m1"  # a bare string names the drug
    assert "Observation/baddate: no effective time for sodium" in facts.warnings
    assert any(w.startswith("Observation item 0: not a FHIR resource") for w in facts.warnings)
    no_medication = "MedicationRequest/m2: no medication (neither medicationCodeableConcept nor medicationReference)"
    assert no_medication in facts.warnings
    assert any(w.startswith("MedicationRequest/m3: could not be read (TypeError") for w in facts.warnings)


def test_record_warnings_and_incomplete_keys_are_kept(terminology: Terminology) -> None:
    source = PatientRecord(PATIENT_ID, {}, incomplete=frozenset({"labs"}), warnings=["labs: page cap reached"])
    facts = build_facts(source, terminology, NOW)
    assert facts.incomplete == {"labs"} and facts.warnings == ("labs: page cap reached",)


# ---------------------------------------------------------------- a sandbox-shaped request, through the record layer
def test_a_sandbox_request_becomes_facts(terminology: Terminology) -> None:
    body = json.loads((DATA / "sandbox-patient-view.json").read_text("utf-8"))
    call = HookCall.from_request("cramps-patient-view", body)
    templates = {"patient": "Patient/{{context.patientId}}",
                 "hba1c": "Observation?patient={{context.patientId}}&code=4548-4",
                 "meds": "MedicationRequest?patient={{context.patientId}}&status=active"}
    source = obtain_record(call, templates, RecordSettings.from_settings(load_config()))
    facts = build_facts(source, terminology, datetime(2020, 7, 1, tzinfo=UTC))
    assert (facts.patient_id, facts.sex, facts.birth_date) == ("sbx-patient-1", "male", date(1957, 7, 20))
    a1c = facts.labs["hba1c"]
    assert [r.value for r in a1c] == [6.0, 6.1]
    assert (a1c[0].ref_low, a1c[0].ref_high, a1c[0].ref_from_resource, a1c[0].interpretation) == (4, 5.6, True, ("H",))
    assert a1c[1].ref_from_resource is False
    assert {m.name: m.classes for m in facts.medications} == {
        "Penicillin V Potassium 250 MG Oral Tablet": frozenset(),
        "lisinopril 10 MG Oral Tablet": frozenset({"ace_inhibitor"}),
        "Hydrochlorothiazide 25 MG Oral Tablet": {"thiazide_diuretic"},
    }
    assert facts.incomplete == {"meds"}  # the next page could not be fetched: rules relying on absence stay silent


# ---------------------------------------------------------------- any JSON in any field: never an exception
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["code", "system", "value", "unit", "coding", "text", "low", "high", "type", "end"]),
        inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["status", "code", "valueQuantity", "referenceRange", "interpretation", "effectiveDateTime",
          "effectivePeriod", "issued", "valueCodeableConcept", "valueString", "valueBoolean", "id"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4),
       condition_changes=st.dictionaries(
           st.sampled_from(["clinicalStatus", "verificationStatus", "code", "onsetDateTime", "abatementDateTime"]),
           JSON, max_size=3),
       request_changes=st.dictionaries(
           st.sampled_from(["status", "medicationCodeableConcept", "medicationReference", "authoredOn",
                            "dispenseRequest", "contained"]), JSON, max_size=3))
def test_any_shape_builds_and_every_result_materialises(
    terminology: Terminology, changes: dict[str, Any], condition_changes: dict[str, Any],
    request_changes: dict[str, Any],
) -> None:
    observation = lab("fuzz", "2823-3", 3.0, "mmol/L") | changes
    facts = facts_of(terminology, observation, symptom("sym") | changes,
                     condition("c", SNOMED, "55300003") | condition_changes,
                     request("mr", rx("316672", "Simvistatin 10 MG")) | request_changes)
    for series in facts.labs.values():
        for result in series:  # built lazily: must not raise either
            # a value with no unit is kept in the lab's own terms (unit "") and judged by its range and flags
            assert isinstance(result.unit, str) and isinstance(result.reported, str)


# --- the rule set's lab look-back -------------------------------------------------------------------------------

LOOKBACK = FactWindows(lab_lookback=timedelta(days=360))


def test_labs_older_than_the_lookback_are_left_out_and_the_rest_kept(terminology):
    kept_days = [1, 300, 359.5, 361]  # 361: inside the two-day margin, kept (the rules apply the exact window)
    resources = [lab(f"k{d}", "2823-3", 3.1, "mmol/L", days=d) for d in kept_days]
    resources += [lab("old", "2823-3", 2.0, "mmol/L", days=400), lab("older", "2823-3", 2.0, "mmol/L", days=3000)]
    resources.append(lab("year-only", "2823-3", 2.0, "mmol/L", effectiveDateTime="2019"))
    facts = build_facts(record(*resources), terminology, NOW, LOOKBACK)
    assert [r.resource for r in facts.labs["potassium"]] == [f"Observation/k{d}" for d in kept_days]
    assert not facts.warnings  # dropped for their age, silently
    everything = build_facts(record(*resources), terminology, NOW)
    assert len(everything.labs["potassium"]) == len(resources)


def test_a_lab_dated_another_way_is_read_in_full_whatever_its_age(terminology):
    period = lab("period", "2823-3", 3.0, "mmol/L", effectiveDateTime=None,
                 effectivePeriod={"start": ago(500), "end": ago(499)})
    facts = build_facts(record(period), terminology, NOW, LOOKBACK)
    assert [r.resource for r in facts.labs["potassium"]] == ["Observation/period"]


def test_the_lookback_is_the_longest_window_of_any_lab_criterion():
    from cds_service.rules.engine import RuleSet
    from cds_service.rules.model import CompositeCriterion, LabCriterion

    ruleset = RuleSet.load(None, None)

    def windows(criteria):
        for criterion in criteria:
            if isinstance(criterion, LabCriterion):
                yield criterion.within
            elif isinstance(criterion, CompositeCriterion):
                yield from windows(criterion.children)

    every = [w for rule in ruleset.rules for w in windows(rule.criteria.values())]
    assert every and ruleset.lab_lookback == max(every)


def test_a_finding_sent_as_a_bare_code_is_named_from_the_value_set(terminology):
    bare = condition("c-bare", SNOMED, "55300003")  # no display, no text
    named = {**condition("c-named", SNOMED, "55300003"),
             "code": {"coding": [{"system": SNOMED, "code": "55300003"}], "text": "Night cramps"}}
    [finding] = facts_of(terminology, bare).findings
    assert finding.display == "Cramp (finding)"
    [finding] = facts_of(terminology, named).findings
    assert finding.display == "Night cramps"  # what the EHR wrote comes first


@pytest.mark.parametrize(("dosage", "expected"), [
    (None, None),  # no dosage recorded
    ([{"text": "2 puffs as needed", "asNeededBoolean": True}], True),
    ([{"asNeededCodeableConcept": {"text": "wheeze"}}], True),
    ([{"text": "2 puffs twice daily", "asNeededBoolean": False}], False),
    ([{"text": "twice daily"}, {"text": "extra as needed", "asNeededBoolean": True}], False),  # regular part counts
])
def test_as_needed_is_read_from_the_dosage(terminology: Terminology, dosage: Any, expected: bool | None) -> None:
    extra = {} if dosage is None else {"dosageInstruction": dosage}
    facts = facts_of(terminology, request("mr", rx("745679", "albuterol 0.09 MG/ACTUAT inhaler"), **extra))
    assert facts.medications[0].as_needed is expected


def test_a_statement_dosage_counts_too(terminology: Terminology) -> None:
    statement = {"resourceType": "MedicationStatement", "id": "ms", "status": "active",
                 "medicationCodeableConcept": rx("745679", "albuterol inhaler"),
                 "dosage": [{"asNeededBoolean": True}]}
    assert facts_of(terminology, statement).medications[0].as_needed is True
