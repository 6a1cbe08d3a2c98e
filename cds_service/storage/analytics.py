"""Feedback analytics: per rule, how many cards were shown (or recorded silently) in a period and what clinicians
did with them; per day, hook calls and cards per call; and the firing-rate check.

The period is ``[since, until)`` on the time a card was issued, and the counts follow those cards. **The latest
feedback on a card decides how it counts**, whenever it came: a card accepted and then dismissed counts as
overridden only (with the reason of the dismissal), so accepted + overridden + no feedback = shown. "Latest" is the
latest ``outcomeTimestamp``; entries with the same timestamp are ordered by arrival. Feedback for cards this service
has no record of issuing (another deployment's cards, or cards older than the database) cannot be tied to a rule
or to a time of issue; it is counted apart, by the time of the feedback, in the same way: one card, its latest
outcome.

**Firing-rate check.** A rule's daily firing rate is its cards (shown and silent) per hook call that day (UTC).
The check compares a day's rate with the rates of the ``BASELINE_DAYS`` days before it that had hook calls: it is
flagged when it lies outside mean ± ``BAND_SDS`` sample standard deviations. It needs at least ``MIN_BASELINE_DAYS``
such days and ``MIN_CALLS`` hook calls on the day itself, else it says nothing (too little data to tell).
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Subquery, and_, func, select

from .database import feedback, hook_calls_daily, issued_cards

INDICATORS = ("critical", "warning", "info")
OUTCOMES = ("accepted", "overridden")
BASELINE_DAYS = 14
MIN_BASELINE_DAYS = 7
MIN_CALLS = 20
BAND_SDS = 3.0


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


@dataclass(frozen=True, slots=True)
class FiringRate:
    """One day's firing rate of a rule against its usual band (see the module documentation)."""

    day: date
    calls: int  # hook calls that day
    firings: int  # cards shown and silent that day
    baseline: tuple[float, ...]  # the daily rates of the days before that had hook calls, oldest first

    @property
    def rate(self) -> float | None:
        return self.firings / self.calls if self.calls else None

    @property
    def band(self) -> tuple[float, float] | None:
        """``(low, high)``, or None while there is too little data to tell."""
        if len(self.baseline) < MIN_BASELINE_DAYS or self.calls < MIN_CALLS:
            return None
        mean, sd = statistics.fmean(self.baseline), statistics.stdev(self.baseline)
        return mean - BAND_SDS * sd, mean + BAND_SDS * sd

    @property
    def flagged(self) -> bool:
        band, rate = self.band, self.rate
        return band is not None and rate is not None and not band[0] <= rate <= band[1]

    def as_json(self) -> dict[str, Any]:
        band = self.band
        return {
            "day": self.day.isoformat(),
            "calls": self.calls,
            "firings": self.firings,
            "rate": self.rate,
            "band": None if band is None else {"low": max(band[0], 0.0), "high": band[1]},
            "baselineDays": len(self.baseline),
            "flagged": self.flagged,
        }


@dataclass(slots=True)
class RuleOutcomes:
    """What happened to one rule's cards; every number counts distinct cards, each by its latest feedback."""

    rule_id: str
    deployment: str = ""  # active, silent or off at this site now; empty for a rule the rule set no longer has
    shown: int = 0
    silent: int = 0  # would-be cards of the rule while it ran silent
    by_indicator: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    overridden: int = 0
    reasons: list[ReasonCount] = field(default_factory=list)
    overridden_without_reason: int = 0  # dismissed with no coded reason (with a comment at most)
    overridden_with_comment: int = 0  # dismissed with a free-text comment (the text is not reported)
    days: dict[date, dict[str, int]] = field(default_factory=dict)  # day -> {"shown": n, "silent": n}
    firing_rate: FiringRate | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "ruleId": self.rule_id,
            "deployment": self.deployment,
            "shown": self.shown,
            "silent": self.silent,
            "shownByIndicator": {name: self.by_indicator.get(name, 0) for name in INDICATORS},
            "accepted": self.accepted,
            "overridden": self.overridden,
            "noFeedback": self.shown - self.accepted - self.overridden,
            "acceptanceRate": self.accepted / self.shown if self.shown else None,
            "overrideRate": self.overridden / self.shown if self.shown else None,
            "overrideReasons": [
                {"system": r.system, "code": r.code, "display": r.display, "count": r.cards} for r in self.reasons
            ],
            "overriddenWithoutReason": self.overridden_without_reason,
            "overriddenWithComment": self.overridden_with_comment,
            "days": [{"day": day.isoformat(), **counts} for day, counts in sorted(self.days.items())],
            "firingRate": None if self.firing_rate is None else self.firing_rate.as_json(),
        }


@dataclass(frozen=True, slots=True)
class DayTotals:
    day: date
    hook_calls: int
    shown: int
    silent: int

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "hookCalls": self.hook_calls,
            "shown": self.shown,
            "silent": self.silent,
            "cardsPerCall": self.shown / self.hook_calls if self.hook_calls else None,
        }


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    period: Period
    rules: list[RuleOutcomes]  # rules that issued a card in the period or are flagged, most shown first
    days: list[DayTotals]  # every day of the period with hook calls or cards, oldest first
    unattributed: dict[str, int]  # outcome -> cards with no issuing record, by the latest feedback in the period

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period.as_json(),
            "totals": {
                "shown": sum(r.shown for r in self.rules),
                "silent": sum(r.silent for r in self.rules),
                "accepted": sum(r.accepted for r in self.rules),
                "overridden": sum(r.overridden for r in self.rules),
                "hookCalls": sum(d.hook_calls for d in self.days),
            },
            "rules": [r.as_json() for r in self.rules],
            "days": [d.as_json() for d in self.days],
            "flaggedRules": [r.rule_id for r in self.rules if r.firing_rate is not None and r.firing_rate.flagged],
            "unattributedFeedback": {outcome: self.unattributed.get(outcome, 0) for outcome in OUTCOMES},
        }


def latest_feedback() -> Subquery:
    """Each card's latest feedback entry: the one outcome that counts for it (see the module documentation)."""
    order = func.row_number().over(
        partition_by=feedback.c.card_uuid, order_by=(feedback.c.outcome_at.desc(), feedback.c.id.desc())
    )
    ranked = select(feedback, order.label("position")).subquery()
    return select(ranked).where(ranked.c.position == 1).subquery("latest")


def feedback_report(
    engine: Engine,
    period: Period,
    displays: Mapping[tuple[str, str], str] | None = None,
    deployment: Mapping[str, str] | None = None,
) -> FeedbackReport:
    """Count, per rule, the cards issued in ``period`` and the feedback clinicians gave on them; per day, the hook
    calls and cards; and each rule's firing rate on the period's last day against the days before.

    ``displays`` names override reasons by (system, code) when no client sent a display (the CDS Hooks sandbox
    sends only code and system); ``deployment`` is each rule's deployment now (rule id -> active/silent/off):
    those evaluated get a firing-rate check even on days they did not fire.
    """
    known, deployed = displays or {}, deployment or {}
    since, until = _utc(period.since), _utc(period.until)
    in_period = and_(issued_cards.c.issued_at >= since, issued_cards.c.issued_at < until)
    latest = latest_feedback()
    with_issue = latest.join(issued_cards, latest.c.card_uuid == issued_cards.c.card_uuid)
    rule, shown_only = issued_cards.c.rule_id, issued_cards.c.deployment == "active"
    overridden = latest.c.outcome == "overridden"
    rules: dict[str, RuleOutcomes] = {}

    def outcomes(rule_id: str) -> RuleOutcomes:
        return rules.setdefault(rule_id, RuleOutcomes(rule_id, deployed.get(rule_id, "")))

    with engine.connect() as conn:
        keys = (rule, issued_cards.c.deployment, issued_cards.c.indicator, issued_cards.c.issued_on)
        for rule_id, how, indicator, day, count in conn.execute(
            select(*keys, func.count()).where(in_period).group_by(*keys)
        ):
            counts = outcomes(rule_id)
            kind = "silent" if how == "silent" else "shown"
            setattr(counts, kind, getattr(counts, kind) + count)
            if kind == "shown":
                counts.by_indicator[indicator] = counts.by_indicator.get(indicator, 0) + count
            per_day = counts.days.setdefault(day, {"shown": 0, "silent": 0})
            per_day[kind] += count
        by_outcome = select(rule, latest.c.outcome, func.count()).select_from(with_issue).where(in_period, shown_only)
        for rule_id, outcome, count in conn.execute(by_outcome.group_by(rule, latest.c.outcome)):
            if outcome in OUTCOMES:  # the feedback schema admits no other
                setattr(outcomes(rule_id), outcome, count)
        reasons = (
            select(rule, latest.c.override_system, latest.c.override_code, func.max(latest.c.override_display),
                   func.count())
            .select_from(with_issue)
            .where(in_period, shown_only, overridden, latest.c.override_code != "")
            .group_by(rule, latest.c.override_system, latest.c.override_code)
        )
        for rule_id, system, code, display, count in conn.execute(reasons):
            outcomes(rule_id).reasons.append(ReasonCount(system, code, display or known.get((system, code), ""), count))
        for condition, attribute in (
            (latest.c.override_code == "", "overridden_without_reason"),
            (latest.c.user_comment != "", "overridden_with_comment"),
        ):
            query = (
                select(rule, func.count()).select_from(with_issue)
                .where(in_period, shown_only, overridden, condition).group_by(rule)
            )
            for rule_id, count in conn.execute(query):
                setattr(outcomes(rule_id), attribute, count)
        orphans = (
            select(latest.c.outcome, func.count())
            .select_from(latest.outerjoin(issued_cards, latest.c.card_uuid == issued_cards.c.card_uuid))
            .where(issued_cards.c.card_uuid.is_(None), latest.c.outcome_at >= since, latest.c.outcome_at < until)
            .group_by(latest.c.outcome)
        )
        unattributed: dict[str, int] = dict(conn.execute(orphans).all())
        first_day, last_day = since.date(), (until - timedelta(microseconds=1)).date()
        calls = _daily_calls(conn, first_day - timedelta(days=BASELINE_DAYS), last_day)
        evaluated = [rule_id for rule_id, how in deployed.items() if how != "off"]
        rates = firing_rates(conn, calls, last_day, [*evaluated, *rules])
    for rule_id, rate in rates.items():
        if rule_id in rules or rate.flagged:  # a rule that stopped firing is listed for its flag
            outcomes(rule_id).firing_rate = rate
    for counts in rules.values():
        counts.reasons.sort(key=lambda r: (-r.cards, r.code))
    ordered = sorted(rules.values(), key=lambda r: (-r.shown, -r.silent, r.rule_id))
    days = _day_totals(rules.values(), {day: n for day, n in calls.items() if first_day <= day <= last_day})
    return FeedbackReport(period, ordered, days, unattributed)


def _day_totals(rules: Iterable[RuleOutcomes], calls: Mapping[date, int]) -> list[DayTotals]:
    shown: dict[date, int] = {}
    silent: dict[date, int] = {}
    for counts in rules:
        for day, per_day in counts.days.items():
            shown[day] = shown.get(day, 0) + per_day["shown"]
            silent[day] = silent.get(day, 0) + per_day["silent"]
    every = sorted(set(calls) | set(shown) | set(silent))
    return [DayTotals(day, calls.get(day, 0), shown.get(day, 0), silent.get(day, 0)) for day in every]


def _daily_calls(conn: Any, first: date, last: date) -> dict[date, int]:
    """Hook calls per day (every service) from ``first`` to ``last``, both included."""
    day = hook_calls_daily.c.day
    query = select(day, func.sum(hook_calls_daily.c.calls)).where(day >= first, day <= last).group_by(day)
    return {_as_date(d): int(n) for d, n in conn.execute(query)}


def firing_rates(conn: Any, calls: Mapping[date, int], day: date, rule_ids: Iterable[str]) -> dict[str, FiringRate]:
    """Each rule's firing rate on ``day`` with its baseline (``calls``: hook calls per day, covering the baseline)."""
    first = day - timedelta(days=BASELINE_DAYS)
    on = issued_cards.c.issued_on
    firings: dict[str, dict[date, int]] = {rule_id: {} for rule_id in rule_ids}
    query = (
        select(issued_cards.c.rule_id, on, func.count())
        .where(on >= first, on <= day, issued_cards.c.rule_id.in_(list(firings)))
        .group_by(issued_cards.c.rule_id, on)
    )
    for rule_id, on_day, count in conn.execute(query):
        firings[rule_id][_as_date(on_day)] = count
    before = [first + timedelta(days=n) for n in range(BASELINE_DAYS)]
    return {
        rule_id: FiringRate(
            day=day,
            calls=calls.get(day, 0),
            firings=counts.get(day, 0),
            baseline=tuple(counts.get(d, 0) / calls[d] for d in before if calls.get(d)),
        )
        for rule_id, counts in firings.items()
    }


def rule_anomalies(engine: Engine, day: date, rule_ids: Iterable[str]) -> dict[str, bool]:
    """Rule id -> whether its firing rate on ``day`` is outside its usual band (for the Prometheus gauge)."""
    with engine.connect() as conn:
        calls = _daily_calls(conn, day - timedelta(days=BASELINE_DAYS), day)
        return {rule_id: rate.flagged for rule_id, rate in firing_rates(conn, calls, day, rule_ids).items()}


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")
