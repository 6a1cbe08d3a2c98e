"""Feedback analytics: per rule, how many cards were shown in a period and what clinicians did with them.

The period is ``[since, until)`` on the time a card was issued, and the counts follow those cards: a card shown in
the period counts as accepted (or overridden) if any feedback for it says so, whenever that feedback came, so each
count is of distinct cards and never exceeds ``shown``. Override reasons are counted once per card and reason.
Feedback for cards this service has no record of issuing (another deployment's cards, or cards older than the
database) cannot be tied to a rule or to a time of issue; it is counted apart, by the time of the feedback.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, distinct, func, select

from .database import feedback, issued_cards

INDICATORS = ("critical", "warning", "info")
OUTCOMES = ("accepted", "overridden")


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval ``[since, until)``; both bounds carry a time zone."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("the period's bounds must carry a time zone")
        if self.until <= self.since:
            raise ValueError("until must be later than since")

    def as_json(self) -> dict[str, str]:
        return {"since": _iso(self.since), "until": _iso(self.until)}


@dataclass(frozen=True, slots=True)
class ReasonCount:
    system: str
    code: str
    display: str  # as a client sent it, else from ``displays``; empty when neither knows it
    cards: int  # distinct cards overridden with this reason


@dataclass(slots=True)
class RuleOutcomes:
    """What happened to one rule's cards; every number counts distinct cards."""

    rule_id: str
    shown: int = 0
    by_indicator: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    overridden: int = 0
    with_feedback: int = 0  # accepted or overridden or both
    reasons: list[ReasonCount] = field(default_factory=list)
    overridden_without_reason: int = 0  # dismissed with no coded reason (with a comment at most)
    overridden_with_comment: int = 0  # dismissed with a free-text comment (the text is not reported)

    def as_json(self) -> dict[str, Any]:
        return {
            "ruleId": self.rule_id,
            "shown": self.shown,
            "shownByIndicator": {name: self.by_indicator.get(name, 0) for name in INDICATORS},
            "accepted": self.accepted,
            "overridden": self.overridden,
            "noFeedback": self.shown - self.with_feedback,
            "overrideReasons": [
                {"system": r.system, "code": r.code, "display": r.display, "count": r.cards} for r in self.reasons
            ],
            "overriddenWithoutReason": self.overridden_without_reason,
            "overriddenWithComment": self.overridden_with_comment,
        }


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    period: Period
    rules: list[RuleOutcomes]  # rules that showed a card in the period, most shown first
    unattributed: dict[str, int]  # outcome -> feedback entries in the period for cards with no issuing record

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period.as_json(),
            "totals": {
                "shown": sum(r.shown for r in self.rules),
                "accepted": sum(r.accepted for r in self.rules),
                "overridden": sum(r.overridden for r in self.rules),
            },
            "rules": [r.as_json() for r in self.rules],
            "unattributedFeedback": {outcome: self.unattributed.get(outcome, 0) for outcome in OUTCOMES},
        }


def feedback_report(
    engine: Engine, period: Period, displays: Mapping[tuple[str, str], str] | None = None
) -> FeedbackReport:
    """Count, per rule, the cards issued in ``period`` and the feedback clinicians gave on them.

    ``displays`` names override reasons by (system, code) when no client sent a display (the CDS Hooks sandbox
    sends only code and system).
    """
    known = displays or {}
    since, until = _utc(period.since), _utc(period.until)
    in_period = and_(issued_cards.c.issued_at >= since, issued_cards.c.issued_at < until)
    cards = func.count(distinct(feedback.c.card_uuid))
    with_issue = feedback.join(issued_cards, feedback.c.card_uuid == issued_cards.c.card_uuid)
    rule = issued_cards.c.rule_id
    overridden = feedback.c.outcome == "overridden"
    rules: dict[str, RuleOutcomes] = {}
    with engine.connect() as conn:
        shown = select(rule, issued_cards.c.indicator, func.count()).where(in_period).group_by(
            rule, issued_cards.c.indicator
        )
        for rule_id, indicator, count in conn.execute(shown):
            outcomes = rules.setdefault(rule_id, RuleOutcomes(rule_id))
            outcomes.shown += count
            outcomes.by_indicator[indicator] = count
        by_outcome = select(rule, feedback.c.outcome, cards).select_from(with_issue).where(in_period)
        for rule_id, outcome, count in conn.execute(by_outcome.group_by(rule, feedback.c.outcome)):
            if outcome in OUTCOMES:  # the feedback schema admits no other
                setattr(rules[rule_id], outcome, count)
        any_outcome = select(rule, cards).select_from(with_issue).where(in_period).group_by(rule)
        for rule_id, count in conn.execute(any_outcome):
            rules[rule_id].with_feedback = count
        reasons = (
            select(rule, feedback.c.override_system, feedback.c.override_code,
                   func.max(feedback.c.override_display), cards)
            .select_from(with_issue)
            .where(in_period, overridden, feedback.c.override_code != "")
            .group_by(rule, feedback.c.override_system, feedback.c.override_code)
        )
        for rule_id, system, code, display, count in conn.execute(reasons):
            rules[rule_id].reasons.append(ReasonCount(system, code, display or known.get((system, code), ""), count))
        for condition, attribute in (
            (feedback.c.override_code == "", "overridden_without_reason"),
            (feedback.c.user_comment != "", "overridden_with_comment"),
        ):
            query = select(rule, cards).select_from(with_issue).where(in_period, overridden, condition).group_by(rule)
            for rule_id, count in conn.execute(query):
                setattr(rules[rule_id], attribute, count)
        orphans = (
            select(feedback.c.outcome, func.count())
            .select_from(feedback.outerjoin(issued_cards, feedback.c.card_uuid == issued_cards.c.card_uuid))
            .where(issued_cards.c.card_uuid.is_(None), feedback.c.outcome_at >= since, feedback.c.outcome_at < until)
            .group_by(feedback.c.outcome)
        )
        unattributed: dict[str, int] = {outcome: count for outcome, count in conn.execute(orphans)}  # noqa: C416 - rows, not pairs
    for outcomes in rules.values():
        outcomes.reasons.sort(key=lambda r: (-r.cards, r.code))
    ordered = sorted(rules.values(), key=lambda r: (-r.shown, r.rule_id))
    return FeedbackReport(period, ordered, unattributed)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")
