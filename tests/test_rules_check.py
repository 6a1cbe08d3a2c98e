"""``cds-service rules check`` (run_check): the shipped rule set passes; each kind of defect fails with a
report that names the file and what is wrong."""
from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.rule_files import edit_rule_file

from cds_service.rules.check import load_terminology, run_check
from cds_service.rules.engine import RuleError, RuleSet


def check(directory: Path | None) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(directory, stream=out)
    return code, out.getvalue()


def _drop_tests(path: Path, leave_out: Callable[[dict[str, Any]], bool]) -> None:
    """Remove every test ``leave_out`` selects from a cases file (and groups left empty)."""
    def change(data: dict[str, Any]) -> None:
        for case in data["cases"]:
            case["tests"] = [t for t in case["tests"] if not leave_out(t)]
        data["cases"] = [c for c in data["cases"] if c["tests"]]

    edit_rule_file(path, change)


def _labs(test: dict[str, Any]) -> list[dict[str, Any]]:
    return list((test.get("given") or {}).get("labs") or ())


def test_shipped_rules_pass() -> None:
    code, report = check(None)
    assert code == 0, report
    assert "rules check: OK" in report and re.search(r"cases: \d+ passed \(\d+ known gaps\)", report)


def test_a_failing_case_is_reported(rules_copy: Path) -> None:
    cases = rules_copy / "diuretic" / "diuretic-hypokalemia.cases.yaml"
    edit_rule_file(cases, lambda d: d["cases"][0]["tests"][1].update(expect={"fires": {"indicator": "warning"}}))
    code, report = check(rules_copy)
    assert code == 1
    assert f"FAIL {cases}: case" in report and "'K 3.5 mmol/L is silent': expected a warning card" in report


def test_a_wrong_indicator_is_reported(rules_copy: Path) -> None:
    cases = rules_copy / "diuretic" / "diuretic-hypokalemia.cases.yaml"
    edit_rule_file(cases, lambda d: d["cases"][0]["tests"][3]["expect"]["fires"].update(indicator="warning"))
    code, report = check(rules_copy)
    assert code == 1 and "indicator 'critical', expected 'warning'" in report


def test_an_invalid_rule_is_reported_with_its_path(rules_copy: Path) -> None:
    rule = rules_copy / "statin" / "statin-interaction.yaml"
    edit_rule_file(rule, lambda d: d["card"].update(indicator="urgent"))
    code, report = check(rules_copy)
    assert code == 1 and f"FAIL {rule}: at card/indicator:" in report


def test_a_suggestion_with_an_invalid_fhir_resource_is_reported_on_one_line(rules_copy: Path) -> None:
    """A display of a no-break space alone is no FHIR string; pydantic's message quotes a pattern that holds a
    line break, which the report writes escaped."""
    rule = rules_copy / "electrolytes" / "hypocalcemia.yaml"
    edit_rule_file(rule, lambda d: d["card"]["suggestions"][1]["actions"][0]["order"].update(display="\u00a0"))
    code, report = check(rules_copy)
    assert code == 1
    assert (
        f"FAIL {rule}: at card/suggestions/1/actions/0/order: suggestion 'Order 25-OH vitamin D' creates a "
        "ServiceRequest that is not valid FHIR R4: at code.coding.0.display: String should match pattern "
        "'[ \\r\\n\\t\\S]+' (and 1 more)\n"
    ) in report


def test_a_rule_without_cases_and_orphan_cases_fail(rules_copy: Path) -> None:
    (rules_copy / "metabolic" / "ckd.cases.yaml").rename(rules_copy / "metabolic" / "ckd-old.cases.yaml")
    code, report = check(rules_copy)
    assert code == 1
    assert "ckd.yaml: has no cases file ckd.cases.yaml" in report
    assert "ckd-old.cases.yaml: at rule: 'ckd' must match the file name" in report


def test_cases_need_a_silent_case_per_exclusion(rules_copy: Path) -> None:
    cases = rules_copy / "electrolytes" / "hyponatremia-no-diuretic.cases.yaml"
    _drop_tests(cases, lambda t: t["expect"] == "silent")
    code, report = check(rules_copy)
    assert code == 1 and "needs a silent case for every exclude_* block" in report


def test_a_passing_todo_case_fails_the_check(rules_copy: Path) -> None:
    cases = rules_copy / "metabolic" / "ckd.cases.yaml"
    edit_rule_file(cases, lambda d: d["cases"][0]["tests"][0].update(todo="eGFR should not count"))
    code, report = check(rules_copy)
    assert code == 1 and "todo case now passes" in report


def test_case_descriptions_follow_the_style(rules_copy: Path) -> None:
    cases = rules_copy / "metabolic" / "ckd.cases.yaml"
    edit_rule_file(cases, lambda d: d["cases"][0]["tests"][0].update(description="eGFR 59 should fire"))
    code, report = check(rules_copy)
    assert code == 1 and f"FAIL {cases}: at cases/0/tests/0/description" in report


def test_bad_value_sets_stop_the_check(rules_copy: Path) -> None:
    (rules_copy / "valuesets" / "findings.json").write_text("{not json", "utf-8")
    code, report = check(rules_copy)
    assert code == 1 and "FAIL value sets: findings.json" in report


def test_cases_without_a_rule_fail(rules_copy: Path) -> None:
    (rules_copy / "metabolic" / "dehydration.yaml").unlink()
    code, report = check(rules_copy)
    assert code == 1 and "dehydration.cases.yaml: no rule has the id 'dehydration'" in report


def test_a_threshold_without_its_basis_fails(rules_copy: Path) -> None:
    rule = rules_copy / "diuretic" / "diuretic-hypokalemia.yaml"
    edit_rule_file(rule, lambda d: d["criteria"]["require_low_potassium"].pop("basis"))
    code, report = check(rules_copy)
    assert code == 1
    assert f"FAIL {rule}: at criteria/require_low_potassium: the threshold (below 3.5) needs a basis" in report


def test_a_basis_must_be_one_of_the_rules_references(rules_copy: Path) -> None:
    rule = rules_copy / "electrolytes" / "hypocalcemia.yaml"
    edit_rule_file(rule, lambda d: d["criteria"]["require_low_calcium"]["any"][0].update(basis="someone-2020"))
    code, report = check(rules_copy)
    assert code == 1
    assert f"FAIL {rule}: at criteria/require_low_calcium/any/0/basis: 'someone-2020' is not one of" in report


def test_a_wrong_answer_of_the_rule_set_is_reported(rules_copy: Path) -> None:
    """A case's ``answer`` is judged over the whole rule set: one card per problem, with the rules merged in."""
    cases = rules_copy / "orders" / "draft-statin-raised-ck.cases.yaml"
    edit_rule_file(cases, lambda d: next(
        t for c in d["cases"] for t in c["tests"] if t["description"] == "order-sign gives the same one card"
    )["expect"].update(answer=[{"card": "draft-statin-raised-ck"}, {"card": "statin-muscle-symptoms-ck"}]))
    code, report = check(rules_copy)
    assert code == 1
    assert ("'order-sign gives the same one card': the rule set answers "
            "[draft-statin-raised-ck (merged: statin-muscle-symptoms-ck)], expected "
            "[draft-statin-raised-ck, statin-muscle-symptoms-ck]") in report


def test_merging_with_a_group_no_rule_has_fails(rules_copy: Path) -> None:
    rule = rules_copy / "orders" / "draft-statin-raised-ck.yaml"
    edit_rule_file(rule, lambda d: d.update(merges_with=["statin-muscles"]))
    code, report = check(rules_copy)
    assert code == 1 and f"FAIL {rule}: at merges_with: no rule has the group 'statin-muscles'" in report
    with pytest.raises(RuleError, match="no rule has the group 'statin-muscles'"):
        RuleSet.load(rules_copy, load_terminology(rules_copy))


def test_a_rule_needs_its_clinical_review_beside_it(rules_copy: Path) -> None:
    review = rules_copy / "diuretic" / "diuretic-hypokalemia.review.md"
    review.unlink()
    code, report = check(rules_copy)
    assert code == 1
    assert f"FAIL {rules_copy / 'diuretic' / 'diuretic-hypokalemia.yaml'}: has no clinical review" in report


def test_the_review_names_every_threshold_of_its_rule(rules_copy: Path) -> None:
    rule = rules_copy / "diuretic" / "diuretic-hypokalemia.yaml"
    edit_rule_file(rule, lambda d: d["criteria"]["require_low_potassium"].update(below=3.45))
    code, report = check(rules_copy)
    assert code == 1
    assert f"FAIL {rule.with_name('diuretic-hypokalemia.review.md')}: does not name the threshold 3.45" in report


def test_a_rule_reading_a_lab_needs_a_case_in_another_unit(rules_copy: Path) -> None:
    """Issue 18: the eGFR rule reads egfr, which the value sets also accept in mL/min; without that case the check
    names the analyte. A unit text that is only another spelling of the canonical unit does not count."""
    cases = rules_copy / "metabolic" / "ckd.cases.yaml"
    _drop_tests(cases, lambda t: any(lab["unit"] == "mL/min" for lab in _labs(t)))
    edit_rule_file(cases, lambda d: d["cases"][0]["tests"][0]["given"]["labs"][0].update(unit_text="mL/min/1.73m2"))
    code, report = check(rules_copy)
    assert code == 1
    assert (f"FAIL {cases}: no case gives egfr in a unit other than the canonical one (an SI or conventional unit "
            "the value sets convert)\n") in report
    assert report.count("FAIL") == 1, report


def test_a_rule_comparing_a_lab_needs_a_comparator_case(rules_copy: Path) -> None:
    cases = rules_copy / "metabolic" / "vitamin-b12-deficiency.cases.yaml"
    _drop_tests(cases, lambda t: any("comparator" in lab for lab in _labs(t)))
    code, report = check(rules_copy)
    assert code == 1
    assert f"FAIL {cases}: no case gives vitamin_b12 with a comparator (<, <=, >, >=) on its value\n" in report
    assert report.count("FAIL") == 1, report


def test_a_presence_check_needs_no_comparator_case(rules_copy: Path) -> None:
    """``at_least: 0`` only asks whether a result exists: the CK-order rule of statin interactions compares
    nothing, so it needs a CK in µkat/L (a CK on file) but no CK given as a bound."""
    cases = rules_copy / "statin" / "statin-interaction.cases.yaml"
    _drop_tests(cases, lambda t: any(lab["unit"] != "U/L" for lab in _labs(t)))
    code, report = check(rules_copy)
    assert code == 1 and report.count("FAIL") == 1, report
    assert f"FAIL {cases}: no case gives ck in a unit other than the canonical one" in report


def test_a_derived_analyte_is_covered_by_the_lab_it_is_computed_from(rules_copy: Path) -> None:
    """The thyroid-surgery calcium rule reads corrected calcium; the labs sent are total calcium (and ionized)."""
    cases = rules_copy / "electrolytes" / "hypocalcemia-after-thyroid-surgery.cases.yaml"
    _drop_tests(cases, lambda t: any(lab.get("loinc") in ("2000-8", "17863-2") for lab in _labs(t)))
    code, report = check(rules_copy)
    assert code == 1 and report.count("FAIL") == 1, report
    assert f"FAIL {cases}: no case gives calcium or calcium_ionized in a unit other than the canonical one" in report


def test_a_rule_reading_a_class_with_branded_products_needs_a_branded_case(rules_copy: Path) -> None:
    """The dehydration rule reads loop and thiazide diuretics, which have branded SBDs (Lasix, Maxzide)."""
    cases = rules_copy / "metabolic" / "dehydration.cases.yaml"
    _drop_tests(cases, lambda t: t["description"].startswith("Lasix"))
    code, report = check(rules_copy)
    assert code == 1 and report.count("FAIL") == 1, report
    assert (f"FAIL {cases}: no case codes a medication only by a branded RxNorm product of a class the rule reads "
            "(such as ") in report and "93252" in report  # Maxzide, among the first codes named


def test_a_class_known_only_by_brand_names_needs_a_brand_text_case(rules_copy: Path) -> None:
    """With a brand name for a class and no branded code, a case must name the drug by that brand in text only.
    Prilosec (omeprazole) is added to a copy of the value sets: the PPI monitoring rule reads PPIs alone."""
    brands = rules_copy / "valuesets" / "medication-brands.json"
    data = json.loads(brands.read_text("utf-8"))
    data["brands"].append({"name": "Prilosec", "ingredients": ["omeprazole"], "source": "public-code-lists"})
    brands.write_text(json.dumps(data), "utf-8")
    cases = rules_copy / "monitoring" / "ppi-no-recent-magnesium.cases.yaml"
    code, report = check(rules_copy)
    assert code == 1 and report.count("FAIL") == 1, report
    assert f"FAIL {cases}: no case names a medication only by a brand of a class the rule reads (prilosec)\n" in report
    edit_rule_file(cases, lambda d: d["cases"][0]["tests"].append({
        "description": "Prilosec in text only for three years suggests a magnesium",
        "given": {"medications": [{"text": "PRILOSEC 20 MG CAPSULE", "since": "-P3Y"}]},
        "expect": {"fires": {"indicator": "info"}},
    }))
    code, report = check(rules_copy)
    assert code == 0, report
