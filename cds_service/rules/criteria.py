"""Evaluate one criteria block over the patient facts: a three-valued state plus the evidence that decided it.

A block whose data group is incomplete (``PatientFacts.incomplete``) and that did not match is *unknown*
(None), never False: the absence of a lab, a drug or a finding that may simply not have been fetched must not
make a ``not`` or a ``missing`` criterion true.

A criterion's result depends only on the criterion and the facts, so one evaluation of the rule set shares a
``Memo``: a criterion that many rules repeat (the cramp finding, a statin, a lab window) is evaluated once per
call. The memo is keyed by object identity (hashing a nested frozen dataclass costs about as much as evaluating
it); ``RuleSet`` makes equal criteria one object (``shared_criteria``) so that repeats are found.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, timedelta
from typing import TypeAlias

from ..facts.model import Finding, LabResult, MedicationUse, PatientFacts
from .expression import Tri, all_of, any_of, not_
from .model import (
    AgeCriterion,
    CompositeCriterion,
    Criterion,
    FindingCriterion,
    LabCriterion,
    MedicationCriterion,
)

# Names a record or facts layer may use in ``incomplete`` for the data each kind of criterion reads.
DATA_GROUPS: dict[type, frozenset[str]] = {
    LabCriterion: frozenset({"labs"}),
    MedicationCriterion: frozenset({"medications", "medrequests", "medstatements"}),
    FindingCriterion: frozenset({"conditions", "symptoms", "findings"}),
}
FUTURE_TOLERANCE = timedelta(hours=1)  # clock skew between the EHR and this service


@dataclass(frozen=True, slots=True)
class Absence:
    """Evidence that no result of ``analyte`` exists within the look-back."""

    analyte: str
    within_text: str


@dataclass(frozen=True, slots=True)
class Age:
    """Evidence of the patient's age: whole years at the evaluation time, from the birth date."""

    years: int
    birth_date: date


Evidence: TypeAlias = LabResult | MedicationUse | Finding | Absence | Age
# id(criterion) -> its result over one patient's facts; ids are stable because the rule set holds its criteria
Memo: TypeAlias = "dict[int, Match]"


@dataclass(frozen=True, slots=True)
class Match:
    state: Tri
    evidence: tuple[Evidence, ...] = ()


FALSE, UNKNOWN = Match(False), Match(None)  # shared: most evaluations end in one of these


def evaluate(criterion: Criterion, facts: PatientFacts, memo: Memo | None = None) -> Match:
    """The criterion's state over ``facts``, from ``memo`` when this criterion was already evaluated."""
    if memo is None:
        return _evaluate(criterion, facts, None)
    match = memo.get(id(criterion))
    if match is None:
        match = memo[id(criterion)] = _evaluate(criterion, facts, memo)
    return match


def _evaluate(criterion: Criterion, facts: PatientFacts, memo: Memo | None) -> Match:
    kind = type(criterion)
    if kind is CompositeCriterion:
        return _composite(criterion, facts, memo)
    if kind is LabCriterion:
        return _lab(criterion, facts)
    if kind is AgeCriterion:
        return _age(criterion, facts)
    if kind is MedicationCriterion:
        found: tuple[Evidence, ...] = tuple(
            m for m in facts.medications_in(criterion.classes) if _use_matches(criterion.use, m)
        )
    else:
        found = _current_findings(criterion, facts)
    return Match(True, found) if found else _not_found(criterion, facts)


def _not_found(criterion: Criterion, facts: PatientFacts) -> Match:
    """Nothing matched: False, or unknown (None) when the data the criterion reads is incomplete."""
    return UNKNOWN if _incomplete(criterion, facts) else FALSE


def _incomplete(criterion: Criterion, facts: PatientFacts) -> bool:
    return bool(facts.incomplete) and not DATA_GROUPS[type(criterion)].isdisjoint(facts.incomplete)


def _composite(criterion: CompositeCriterion, facts: PatientFacts, memo: Memo | None) -> Match:
    matches = []
    for child in criterion.children:
        match = evaluate(child, facts, memo)
        if match.state is False and criterion.op == "all":
            return FALSE  # Kleene: one False decides a conjunction, and a state that is not True has no evidence
        matches.append(match)
    if criterion.op == "not":
        return Match(not_(matches[0].state))
    combine = all_of if criterion.op == "all" else any_of
    state = combine(m.state for m in matches)
    evidence = tuple(e for m in matches if m.state for e in m.evidence) if state else ()
    return Match(state, evidence)


def shared_criteria(criteria: Mapping[str, Criterion], pool: dict[Criterion, Criterion]) -> dict[str, Criterion]:
    """``criteria`` with each criterion (and composite child) replaced by the equal one already in ``pool``."""

    def one(criterion: Criterion) -> Criterion:
        if isinstance(criterion, CompositeCriterion):
            criterion = replace(criterion, children=tuple(one(child) for child in criterion.children))
        return pool.setdefault(criterion, criterion)

    return {name: one(criterion) for name, criterion in criteria.items()}


def _use_matches(use: str, medication: MedicationUse) -> bool:
    if use == "any":
        return medication.kind != "draft" or medication.selected
    if use == "ordering":
        return medication.kind == "draft" and medication.selected
    return medication.kind != "draft"


def _current_findings(criterion: FindingCriterion, facts: PatientFacts) -> tuple[Finding, ...]:
    """The findings of the criterion's concepts dated within its window (undated ones count), none in the future."""
    latest = facts.now + FUTURE_TOLERANCE
    earliest = None if criterion.within is None else facts.now - criterion.within
    found = []
    for finding in facts.findings_of(criterion.concepts):
        when = finding.date
        if when is not None:
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            if when > latest or (earliest is not None and when < earliest):
                continue
        found.append(finding)
    return tuple(found)


def latest_within(facts: PatientFacts, analyte: str, within: timedelta) -> LabResult | None:
    """The newest result of ``analyte`` dated within ``within`` before now (results after now are ignored)."""
    earliest, latest = facts.now - within, facts.now + FUTURE_TOLERANCE
    for result in facts.labs.get(analyte, ()):  # newest first (PatientFacts.labs): stop at the first one not ahead
        if result.effective <= latest:
            return result if result.effective >= earliest else None
    return None


def _lab(criterion: LabCriterion, facts: PatientFacts) -> Match:
    result = latest_within(facts, criterion.analyte, criterion.within)
    if criterion.missing:
        if result is not None:
            return FALSE
        if _incomplete(criterion, facts):
            return UNKNOWN
        return Match(True, (Absence(criterion.analyte, criterion.within_text),))
    if result is None:
        return _not_found(criterion, facts)
    states = [_compare(result, op, limit) for op, limit in criterion.comparisons]
    states += [_in_range(result, check) for check in criterion.range_checks]
    state = all_of(states)
    return Match(state, (result,) if state else ())


def age_in_years(born: date, on: date) -> int:
    """Completed years of life on ``on`` (a 29 February birthday falls on 1 March in other years)."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _age(criterion: AgeCriterion, facts: PatientFacts) -> Match:
    """Unknown without a birth date: a missing date of birth says nothing about the patient's age."""
    if facts.birth_date is None:
        return UNKNOWN
    years = age_in_years(facts.birth_date, facts.now.date())
    state = (criterion.at_least is None or years >= criterion.at_least) and (
        criterion.below is None or years < criterion.below)
    return Match(True, (Age(years, facts.birth_date),)) if state else FALSE


def _compare(result: LabResult, op: str, limit: float) -> Tri:
    if op == "above_uln":
        ratio = result.times_uln
        return None if ratio is None else ratio > limit
    value = result.value
    if op == "below":
        return value < limit
    if op == "above":
        return value > limit
    return value >= limit if op == "at_least" else value <= limit


def _in_range(result: LabResult, check: str) -> Tri:
    if check == "above_range":
        return None if result.ref_high is None else result.value > result.ref_high
    return None if result.ref_low is None else result.value < result.ref_low
