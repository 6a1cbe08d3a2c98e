"""``cds-service rules check`` (run_check): the shipped rule set passes; each kind of defect fails with a
report that names the file and what is wrong."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from support.rule_files import edit_rule_file

from cds_service.rules.check import load_terminology, run_check
from cds_service.rules.engine import RuleError, RuleSet


def check(directory: Path | None) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(directory, stream=out)
    return code, out.getvalue()


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
    edit_rule_file(
        cases, lambda d: d["cases"][0].update(tests=[t for t in d["cases"][0]["tests"] if t["expect"] != "silent"])
    )
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
    edit_rule_file(cases, lambda d: d["cases"][-1]["tests"][-1]["expect"].update(answer=[
        {"card": "draft-statin-raised-ck"}, {"card": "statin-muscle-symptoms-ck"}]))
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
