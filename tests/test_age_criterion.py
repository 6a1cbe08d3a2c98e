"""The ``age`` criterion: completed years at the evaluation time, unknown without a birth date, its limits
needing a basis like any threshold, and the evidence line a card shows."""
from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from support.rule_files import edit_rule_file

from cds_service.facts.model import PatientFacts
from cds_service.rules.check import load_terminology
from cds_service.rules.criteria import Age, age_in_years, evaluate
from cds_service.rules.engine import RuleError, RuleSet
from cds_service.rules.loader import shipped_rules_dir
from cds_service.rules.model import AgeCriterion
from cds_service.rules.templates import evidence_line, field_value

NOW = datetime(2026, 11, 1, tzinfo=UTC)
TERMINOLOGY = load_terminology(shipped_rules_dir())
RULE = Path("vascular") / "possible-claudication.yaml"


def facts(born: date | None) -> PatientFacts:
    return PatientFacts(patient_id="p", now=NOW, birth_date=born)


@pytest.mark.parametrize(
    ("born", "on", "years"),
    [
        (date(1961, 11, 1), date(2026, 11, 1), 65),  # birthday today
        (date(1961, 11, 2), date(2026, 11, 1), 64),  # birthday tomorrow
        (date(1960, 2, 29), date(2026, 2, 28), 65),  # leap-day birthday: not yet 66 on 28 February
        (date(1960, 2, 29), date(2026, 3, 1), 66),
    ],
)
def test_age_in_completed_years(born: date, on: date, years: int) -> None:
    assert age_in_years(born, on) == years


def test_limits_are_at_least_inclusive_and_below_exclusive() -> None:
    criterion = AgeCriterion(at_least=50, below=65, basis="x")
    assert evaluate(criterion, facts(date(1976, 11, 1))).state is True  # 50
    assert evaluate(criterion, facts(date(1976, 11, 2))).state is False  # 49
    assert evaluate(criterion, facts(date(1961, 11, 2))).state is True  # 64
    assert evaluate(criterion, facts(date(1961, 11, 1))).state is False  # 65


def test_no_birth_date_is_unknown_not_false() -> None:
    """A ``not`` over an unknown age must not turn a missing birth date into 'young enough'."""
    assert evaluate(AgeCriterion(at_least=65, basis="x"), facts(None)).state is None


def test_card_text_names_the_age_and_birth_date() -> None:
    criterion = AgeCriterion(at_least=65, label="PAD risk", basis="x")
    match = evaluate(criterion, facts(date(1950, 1, 1)))
    assert match.evidence == (Age(76, date(1950, 1, 1)),)
    assert evidence_line(criterion, match.evidence[0]) == "PAD risk: age **76 years** (born 1950-01-01)"
    assert field_value(match.evidence, "years") == "76" and field_value(match.evidence, None) == "aged 76"


def test_age_limit_without_a_basis_is_refused(rules_copy: Path) -> None:
    path = rules_copy / RULE
    edit_rule_file(path, lambda d: d["criteria"]["require_pad_risk"]["any"][0].pop("basis"))
    with pytest.raises(RuleError) as caught:
        RuleSet.load(rules_copy, TERMINOLOGY)
    assert str(path) in str(caught.value) and "(at_least 65) needs a basis" in str(caught.value)


def test_age_limit_with_a_foreign_basis_is_refused(rules_copy: Path) -> None:
    path = rules_copy / RULE
    edit_rule_file(path, lambda d: d["criteria"]["require_pad_risk"]["any"][0].update(basis="nice-ng158"))
    with pytest.raises(RuleError) as caught:
        RuleSet.load(rules_copy, TERMINOLOGY)
    assert "'nice-ng158' is not one of the rule's references" in str(caught.value)
