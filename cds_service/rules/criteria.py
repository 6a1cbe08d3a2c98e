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
from datetime import UTC, date, datetime, timedelta
from math import floor, log10
from typing import TypeAlias

from ..facts.model import Finding, LabResult, MedicationUse, PatientFacts
from .expression import Tri, all_of, any_of, not_
from .model import (
    CRAMP_CONCEPTS,
    AgeCriterion,
    CompositeCriterion,
    Criterion,
    FindingCriterion,
    InteractionCriterion,
    LabCriterion,
    MedicationCriterion,
    TimingCriterion,
)

# Names a record or facts layer may use in ``incomplete`` for the data each kind of criterion reads.
DATA_GROUPS: dict[type, frozenset[str]] = {
    LabCriterion: frozenset({"labs"}),
    MedicationCriterion: frozenset({"medications", "medrequests", "medstatements"}),
    InteractionCriterion: frozenset({"medications", "medrequests", "medstatements"}),
    FindingCriterion: frozenset({"conditions", "symptoms", "findings"}),
    TimingCriterion: frozenset({"medications", "medrequests", "medstatements", "conditions", "symptoms", "findings"}),
}
FUTURE_TOLERANCE = timedelta(hours=1)  # clock skew between the EHR and this service
LIMIT_DIGITS = 3  # significant digits of a limit converted into the lab's unit (tables give 2.12 mmol/L, 0.70)


@dataclass(frozen=True, slots=True)
class Absence:
    """Evidence that no result of ``analyte`` exists within the look-back; with ``since``, none since the
    documented onset of the cramps (the look-back holds only results drawn before it)."""

    analyte: str
    within_text: str
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Pairing:
    """Evidence of an interaction criterion: ``first`` and ``second`` are different medications taken together."""

    first: MedicationUse
    second: MedicationUse
    first_ingredient: str
    second_ingredient: str
    note: str


@dataclass(frozen=True, slots=True)
class Timing:
    """Evidence of a timing criterion: from a course event of ``medication`` to an event of ``finding``."""

    medication: MedicationUse
    since: str  # start, stop or restart
    since_date: datetime
    finding: Finding
    until: str  # onset or resolution
    until_date: datetime
    points: int | None  # None: a span no band scores (e.g. symptoms documented before the statin)

    @property
    def days(self) -> int:
        return (self.until_date - self.since_date).days


@dataclass(frozen=True, slots=True)
class Age:
    """Evidence of the patient's age: whole years at the evaluation time, from the birth date."""

    years: int
    birth_date: date


Evidence: TypeAlias = LabResult | MedicationUse | Finding | Absence | Pairing | Timing | Age
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
    if type(criterion) is CompositeCriterion:
        return _composite(criterion, facts, memo)
    if type(criterion) is LabCriterion:
        return _lab(criterion, facts)
    if type(criterion) is AgeCriterion:
        return _age(criterion, facts)
    if type(criterion) is InteractionCriterion:
        found: tuple[Evidence, ...] = _pairings(criterion, facts)
        return Match(True, found) if found else _not_found(criterion, facts)
    if type(criterion) is TimingCriterion:
        timing = _timing(criterion, facts)
        return Match(True, (timing,)) if timing else _not_found(criterion, facts)
    if type(criterion) is MedicationCriterion:
        started_by = None if criterion.taken_for is None else facts.now - criterion.taken_for
        found = tuple(
            m for m in facts.medications_in(criterion.classes)
            if _use_matches(criterion.use, m) and _dosing_matches(criterion.as_needed, m)
            and (started_by is None or _started_by(m, started_by))
        )
    elif type(criterion) is FindingCriterion:
        found = _current_findings(criterion, facts)
    else:
        raise TypeError(f"unknown criterion {criterion!r}")
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
    """``criteria`` with each criterion (and composite child) replaced by the equal one already in ``pool``. Criteria
    already shared stay the same objects (a composite is rebuilt only when a child was replaced), so rule sets made
    from another's rules (the active and silent ones) share their criteria, and with them a memo's results."""

    def one(criterion: Criterion) -> Criterion:
        if isinstance(criterion, CompositeCriterion):
            children = tuple(one(child) for child in criterion.children)
            if any(new is not old for new, old in zip(children, criterion.children, strict=True)):
                criterion = replace(criterion, children=children)
        return pool.setdefault(criterion, criterion)

    return {name: one(criterion) for name, criterion in criteria.items()}


def _use_matches(use: str, medication: MedicationUse) -> bool:
    if use == "any":
        return medication.kind != "draft" or medication.selected
    if use == "ordering":
        return medication.kind == "draft" and medication.selected
    return medication.kind != "draft"


def _started_by(medication: MedicationUse, moment: datetime) -> bool:
    """The medication's start date is known and not after ``moment`` (an undated one never counts)."""
    when = medication.date
    if when is None:
        return False
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) <= moment


def _dosing_matches(as_needed: bool | None, medication: MedicationUse) -> bool:
    if as_needed is None:
        return True
    return (medication.as_needed is True) == as_needed


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


def latest_within(facts: PatientFacts, analyte: str, earliest: datetime) -> LabResult | None:
    """The newest result of ``analyte`` dated from ``earliest`` to now (results after now are ignored)."""
    latest = facts.now + FUTURE_TOLERANCE
    for result in facts.labs.get(analyte, ()):  # newest first (PatientFacts.labs): stop at the first one not ahead
        if result.effective <= latest:
            return result if result.effective >= earliest else None
    return None


def cramp_onset(facts: PatientFacts) -> datetime | None:
    """The documented onset of the cramps: the earliest onset of a current cramp or spasm (an Observation's is
    its effective time), future ones ignored; None when no current one records an onset."""
    latest = facts.now + FUTURE_TOLERANCE
    onsets = [_aware(f.onset) for f in facts.findings_of(CRAMP_CONCEPTS) if f.onset is not None]
    return min((onset for onset in onsets if onset <= latest), default=None)


def _lab(criterion: LabCriterion, facts: PatientFacts) -> Match:
    result = latest_within(facts, criterion.analyte, facts.now - criterion.within)
    since = None  # the onset, when it left out the newest result (and so every result) of the look-back
    if criterion.after_onset and result is not None:
        onset = cramp_onset(facts)
        if onset is not None and result.effective < onset:
            result, since = None, onset
    if criterion.missing:
        if result is not None:
            return FALSE
        if _incomplete(criterion, facts):
            return UNKNOWN
        return Match(True, (Absence(criterion.analyte, criterion.within_text, since),))
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
        return None if ratio is None else bounded("above", ratio, result.comparator, limit)
    if not result.interpretable:
        # The rule's number is in the canonical unit and the value in one the service does not understand: only
        # a limit of zero ("a result exists": at_least 0) means the same in every unit.
        return bounded(op, result.value, result.comparator, limit) if limit == 0 else None
    value, limit = at_lab_precision(result, limit)
    return bounded(op, value, result.comparator, limit)


def _in_range(result: LabResult, check: str) -> Tri:
    above = check == "above_range"
    limit = result.ref_high if above else result.ref_low
    if limit is None:
        return _flagged(result, above)
    value, limit = at_lab_precision(result, limit)
    return bounded("above" if above else "below", value, result.comparator, limit)


_ABOVE_FLAGS, _BELOW_FLAGS, _NORMAL_FLAGS = frozenset({"H", "HH", "HU"}), frozenset({"L", "LL", "LU"}), frozenset({"N"})


def _flagged(result: LabResult, above: bool) -> Tri:
    """Without a limit on that side, the lab's own interpretation flags (v3 ObservationInterpretation) decide."""
    flags = frozenset(result.interpretation)
    if flags & (_ABOVE_FLAGS if above else _BELOW_FLAGS):
        return True
    return False if flags & (_NORMAL_FLAGS | (_BELOW_FLAGS if above else _ABOVE_FLAGS)) else None


def at_lab_precision(result: LabResult, limit: float) -> tuple[float, float]:
    """The value and ``limit`` compared in the unit the lab reported: the limit is converted into that unit and
    both are rounded to the decimals the lab reported, or to the ``LIMIT_DIGITS`` significant digits of the
    converted limit if that is finer (a JSON parser, or a FHIR server, drops trailing zeros: "2.00" may arrive
    as 2). A conversion then never moves a value across a limit: 2.12 mmol/L of calcium is 8.497 mg/dL, but at
    8.5 mg/dL (2.1208 mmol/L, 2.12 at the lab's two decimals), not below it; 2.0 mmol/L is below it."""
    if result.factor == 1.0 and result.offset == 0.0:
        return result.value, limit
    factor, offset = result.factor, result.offset
    converted = (limit - offset) / factor
    digits = LIMIT_DIGITS - 1 - floor(log10(abs(converted))) if converted else 0
    places = max(result.decimals or 0, digits, 0)
    return round((result.value - offset) / factor, places), round(converted, places)


def bounded(op: str, value: float, comparator: str, limit: float) -> Tri:
    """``value`` (``op``: below, above, at_least, at_most) ``limit``, for a value the lab may report as a bound.

    With a comparator the true value lies beyond ``value`` ("<2.5": somewhere below 2.5). The test is True when
    every such value passes, False when none does, else unknown (None): "<2.5" is below 2.5, "<2.6" is not
    certainly below 2.5 (unknown, so it fires nothing and a ``not`` of it does not hold), ">60" is not below 60.
    """
    exact = value < limit if op == "below" else value > limit if op == "above" else \
        value >= limit if op == "at_least" else value <= limit
    if not comparator:
        return exact
    strict_comparator, strict_test = comparator in ("<", ">"), op in ("below", "above")
    if (comparator[0] == ">") == (op in ("above", "at_least")):  # the bound points the way the test looks
        return True if exact or (strict_comparator and strict_test and value == limit) else None
    return False if not exact or (strict_comparator and not strict_test and value == limit) else None


def _pairings(criterion: InteractionCriterion, facts: PatientFacts) -> tuple[Pairing, ...]:
    """Each pair of different medications (in use as the criterion says) whose ingredients the criterion pairs.

    The second must bring an ingredient the first does not hold: a combination tablet of both drugs, or the same
    product recorded twice (a prescription and a statement), is not an interaction with itself.
    """
    uses = [m for m in facts.medications if _use_matches(criterion.use, m)]
    found: list[Pairing] = []
    for first in uses:
        for second in uses:
            if first is second:
                continue
            for one, other, note in criterion.pairs:
                if one in first.ingredients and other in second.ingredients and other not in first.ingredients:
                    found.append(Pairing(first, second, one, other, note))
    return tuple(found)


@dataclass(slots=True)
class _Course:
    """Overlapping dated uses of a medication class merged into one course (``end`` None: still running)."""

    start: datetime
    end: datetime | None
    last: MedicationUse  # the use that ends the course (or the latest to start, for a running one)


def _courses(facts: PatientFacts, classes: frozenset[str]) -> list[_Course]:
    """The dated courses of ``classes`` in the medication history, oldest first. A use with no recorded end is
    taken to run on (a prescription renewed by a newer one does not end the course)."""
    spans = sorted(
        ((_aware(m.date), _aware(m.ended) if m.ended else None, m)
         for m in facts.medication_history if m.classes & classes and m.date),
        key=lambda span: span[0],
    )
    courses: list[_Course] = []
    for start, end, use in spans:
        last = courses[-1] if courses else None
        if last is None or (last.end is not None and start > last.end):
            courses.append(_Course(start, end, use))
        elif last.end is not None and (end is None or end >= last.end):
            last.end, last.last = end, use
    return courses


Episode: TypeAlias = tuple[datetime, datetime | None, Finding]  # onset, abatement, the finding


def _episodes(findings: tuple[Finding, ...], concepts: frozenset[str]) -> list[Episode]:
    """The findings of ``concepts`` that have an onset date, as (onset, abatement, finding), earliest first."""
    return sorted(
        ((_aware(f.onset), _aware(f.abated) if f.abated else None, f)
         for f in findings if f.concept in concepts and f.onset),
        key=lambda episode: episode[0],
    )


def _timing(criterion: TimingCriterion, facts: PatientFacts) -> Timing | None:
    """The criterion's span over the facts, scored by its bands; None when the record does not show it.

    start -> onset: the running course's start to the earliest dated current symptom (it may come first).
    stop -> resolution: an earlier course's recorded end to the abatement of a symptom that was present then.
    restart -> onset: the running course's start to the first symptom after it, when symptoms also began during
    the stopped course before it.
    """
    current = [m for m in facts.medications if m.classes & criterion.classes and m.kind != "draft"]
    courses = _courses(facts, criterion.classes)
    if not current or not courses or (courses[-1].end is not None and courses[-1].end < facts.now):
        return None  # no running course with a dated start (a planned end still to come keeps it running)
    running = courses[-1]
    medication = max(current, key=lambda m: _aware(m.date) if m.date else running.start)
    stopped = courses[-2] if len(courses) > 1 else None
    now = _episodes(facts.findings, criterion.concepts)
    if criterion.since == "start":
        since, picked = running.start, next(((e[0], e[2]) for e in now), None)
    elif stopped is None or stopped.end is None:
        return None
    elif criterion.since == "stop":
        since, medication = stopped.end, stopped.last
        resolved = [(e[1], e[2]) for e in _episodes(facts.finding_history, criterion.concepts)
                    if e[1] is not None and e[0] <= stopped.end <= e[1]]
        picked = min(resolved, key=lambda r: r[0], default=None)
    else:
        since = running.start
        history = _episodes(facts.finding_history, criterion.concepts)
        earlier = any(stopped.start <= e[0] <= stopped.end for e in history)
        picked = next(((e[0], e[2]) for e in now if e[0] >= since), None) if earlier else None
    if picked is None:
        return None
    until, finding = picked
    span = until - since
    points = None if span < timedelta(0) else next(
        (b.points for b in criterion.bands if b.under is None or span < b.under), None)
    return Timing(medication, criterion.since, since, finding, criterion.until, until, points)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
