"""One test per rule case (rules/<area>/<rule-id>.cases.yaml): ``test_<rule>_<case>_<description>``.

Each case runs the whole chain (compact description -> FHIR R4 resources -> PatientRecord -> build_facts ->
the rule -> card) at the frozen now of the case runner. Cases marked ``todo`` are strict expected failures.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from cds_service.rules.cases import CaseTest, load_cases, run_case
from cds_service.rules.check import load_terminology
from cds_service.rules.engine import RuleSet
from cds_service.rules.loader import case_files, shipped_rules_dir

RULES_DIR = shipped_rules_dir()
TERMINOLOGY = load_terminology(RULES_DIR)
RULESET = RuleSet.load(RULES_DIR, TERMINOLOGY)


def _make(test: CaseTest) -> Callable[[], None]:
    def check() -> None:
        outcome = run_case(RULESET, test, TERMINOLOGY)
        assert not outcome.problems, f"{test.path.name}: {test.description}: {outcome.report()}"

    check.__doc__ = f"{test.rule_id}: {test.case} / {test.description}"
    if test.todo:
        return pytest.mark.xfail(strict=True, reason=test.todo)(check)
    return check


for _path in case_files(RULES_DIR):
    for _test in load_cases(_path)[1]:
        globals()[f"test_{_test.name}"] = _make(_test)


def test_every_rule_has_cases() -> None:
    with_cases = {load_cases(path)[0] for path in case_files(RULES_DIR)}
    assert {rule.id for rule in RULESET.rules} <= with_cases
