"""What makes one evaluation of the rule set cheap without changing its answers: criteria shared across rules are
one object evaluated once per call, and a rule's condition reads its criteria lazily and stops once decided."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import pytest
from test_rules_engine import RULESET, facts, lab, med

from cds_service.facts.model import PatientFacts
from cds_service.rules.criteria import Memo
from cds_service.rules.criteria import evaluate as evaluate_criterion
from cds_service.rules.engine import RuleSet, evaluate, fire
from cds_service.rules.expression import Tri, all_of, any_of
from cds_service.rules.model import CompositeCriterion, Criterion

TRI: tuple[Tri, ...] = (True, False, None)


def kleene_and(values: tuple[Tri, ...]) -> Tri:
    return False if False in values else None if None in values else True


def kleene_or(values: tuple[Tri, ...]) -> Tri:
    return True if True in values else None if None in values else False


@pytest.mark.parametrize("values", [v for n in range(4) for v in itertools.product(TRI, repeat=n)])
def test_all_of_and_any_of_are_kleene_logic(values: tuple[Tri, ...]) -> None:
    assert all_of(iter(values)) is kleene_and(values)
    assert any_of(iter(values)) is kleene_or(values)


def _then_fail(*values: Tri) -> Iterator[Tri]:
    yield from values
    raise AssertionError("read past the deciding value")


def test_all_of_and_any_of_stop_at_the_deciding_value() -> None:
    assert all_of(_then_fail(None, False)) is False
    assert any_of(_then_fail(None, True)) is True


def _all_criteria() -> list[Criterion]:
    return _walk(c for rule in RULESET.rules for c in rule.criteria.values())


def _walk(criteria: Iterable[Criterion]) -> list[Criterion]:
    """``criteria`` and every composite's children, repeats included."""
    found: list[Criterion] = []
    pending = list(criteria)
    while pending:
        criterion = pending.pop()
        found.append(criterion)
        if isinstance(criterion, CompositeCriterion):
            pending.extend(criterion.children)
    return found


def test_equal_criteria_across_rules_are_one_object() -> None:
    criteria = _all_criteria()
    first_of: dict[Criterion, Criterion] = {}
    for criterion in criteria:
        assert first_of.setdefault(criterion, criterion) is criterion
    assert len({id(c) for c in criteria}) < len(criteria)  # the shipped rules do repeat criteria



def test_rule_sets_made_from_another_s_rules_share_its_criteria() -> None:
    """The active and silent rule sets (cds_service.governance) are made from the loaded set's rules: a criterion
    both use is one object, so one memo per call evaluates it once for both."""
    rules = RULESET.rules
    first, second = RuleSet.of(rules[::2]), RuleSet.of(rules[1::2])

    def ids(ruleset: RuleSet) -> set[int]:
        return {id(c) for rule in ruleset.rules for c in _walk(rule.criteria.values())}

    assert ids(first) | ids(second) <= {id(c) for c in _all_criteria()}
    assert ids(first) & ids(second)  # the shipped rules repeat criteria across the halves too
    record = facts(labs=[lab("potassium", 3.1, "mmol/L")], meds=[med("furosemide", "loop_diuretic")])
    memo: Memo = {}
    shared = evaluate(first, record, "patient-view", max_cards=99, memo=memo)
    after_first = len(memo)
    shared += evaluate(second, record, "patient-view", max_cards=99, memo=memo)
    memo_alone: Memo = {}
    alone = evaluate(first, record, "patient-view", max_cards=99)
    alone += evaluate(second, record, "patient-view", max_cards=99, memo=memo_alone)
    assert len(memo) - after_first < len(memo_alone)  # the second set reused what the first evaluated
    assert [(c.rule_id, c.indicator, c.evidence) for c in shared] == [
        (c.rule_id, c.indicator, c.evidence) for c in alone
    ]

PATIENTS: dict[str, PatientFacts] = {
    "low potassium on a loop diuretic": facts(labs=[lab("potassium", 3.1, "mmol/L")],
                                              meds=[med("furosemide", "loop_diuretic")]),
    "statin, high CK": facts(labs=[lab("ck", 900, "U/L", high=200)], meds=[med("atorvastatin", "statin")]),
    "statin, no CK": facts(meds=[med("atorvastatin", "statin")]),
    "statin, labs not fetched": facts(meds=[med("atorvastatin", "statin")], incomplete=("labs",)),
    "medications not fetched": facts(labs=[lab("potassium", 3.1, "mmol/L")], incomplete=("medications",)),
    "cramps only": facts(),
    "statin being ordered": facts(meds=[med("atorvastatin", "statin", "draft", True)]),
}


@pytest.mark.parametrize("patient", PATIENTS)
def test_lazy_shared_evaluation_gives_the_eager_answer(patient: str) -> None:
    record = PATIENTS[patient]
    memo: Memo = {}
    for rule in RULESET.rules:
        eager = {name: evaluate_criterion(c, record).state for name, c in rule.criteria.items()}
        firing = fire(rule, record, memo)
        assert (firing is not None) is (rule.condition.evaluate(eager) is True), rule.id
        if firing is not None:
            assert firing.states == eager, rule.id


def test_a_rule_stops_at_its_first_failed_requirement() -> None:
    rule = RULESET.by_id["diuretic-hypokalemia"]
    memo: Memo = {}
    assert fire(rule, facts(labs=[lab("potassium", 3.1, "mmol/L")]), memo) is None  # no diuretic
    assert id(rule.criteria["require_diuretic"]) in memo
    assert id(rule.criteria["require_low_potassium"]) not in memo
