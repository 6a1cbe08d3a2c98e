"""``GET /analytics``: per rule, cards shown and silent firings, accepted and overridden (each card by its latest
feedback), override reasons, per-day counts and the firing-rate check; per day, hook calls and cards per call.

Query parameters ``since`` and ``until`` (ISO 8601 date or date-time; a date means midnight UTC and a date-time
without an offset is UTC) bound the half-open period ``[since, until)`` on the time cards were issued. By default
the period is the last 30 days. Authenticated like the CDS Hooks endpoints when authentication is on.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from ..storage.analytics import Period, feedback_report
from ..wire.errors import INVALID_PERIOD, CdsError
from .context import authenticate, components

DEFAULT_DAYS = 30

bp = Blueprint("analytics", __name__)
bp.before_request(authenticate)


def _moment(name: str) -> datetime | None:
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise CdsError(INVALID_PERIOD, f"{name} is not an ISO 8601 date or date-time.") from None
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first representable UTC moment
        raise CdsError(INVALID_PERIOD, f"{name} is out of range.") from None


def requested_period(now: datetime) -> Period:
    until = _moment("until") or now
    try:
        since = _moment("since") or until - timedelta(days=DEFAULT_DAYS)
        return Period(since, until)
    except OverflowError:
        raise CdsError(INVALID_PERIOD, "until is too early for the default period; give since.") from None
    except ValueError as exc:
        raise CdsError(INVALID_PERIOD, f"{exc}.") from None


@bp.get("/analytics")
def analytics() -> ResponseReturnValue:
    parts = components()
    displays = {
        (reason.system, reason.code): reason.display
        for rule in parts.runtime.ruleset.rules
        for reason in rule.card.override_reasons
    }
    parts.issued.flush()  # the cards this process issued a moment ago count
    period = requested_period(datetime.now(UTC))
    return feedback_report(parts.engine, period, displays, parts.runtime.governance.deployment).as_json()
