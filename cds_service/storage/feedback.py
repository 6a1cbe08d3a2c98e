"""The feedback store: every feedback entry clinicians send, and which rule issued each card.

Writes are committed before the endpoint answers, so feedback that was acknowledged is never lost. An identical
repeat of an entry (same card, outcome, time, suggestions and reason) is stored once.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from .database import feedback, insert_ignoring_duplicates, issued_cards
from .issued_cards import IssuedCardLog

log = logging.getLogger("cds_service.storage.feedback")


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    received: int
    new: int

    @property
    def duplicates(self) -> int:
        return self.received - self.new


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def timestamp_problem(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """Where an ``outcomeTimestamp`` has the schema's RFC 3339 shape but names no real moment (2026-02-30T..., T24:00,
    offset +99:99), for schema-valid ``entries``; None when every one can be stored."""
    for index, entry in enumerate(entries):
        try:
            _parse_time(entry["outcomeTimestamp"])
        except ValueError:
            return f"at feedback/{index}/outcomeTimestamp: expected a real date and time"
    return None


def _row(service_id: str, entry: Mapping[str, Any], rule_ids: Mapping[str, str], now: datetime) -> dict[str, Any]:
    reason = (entry.get("overrideReason") or {}).get("reason") or {}
    accepted = sorted(s["id"] for s in entry.get("acceptedSuggestions", []))
    row = {
        "service_id": service_id,
        "card_uuid": entry["card"],
        "outcome": entry["outcome"],
        "outcome_timestamp": entry["outcomeTimestamp"],
        "outcome_at": _parse_time(entry["outcomeTimestamp"]),
        "accepted_suggestions": ",".join(accepted),
        "override_system": reason.get("system", ""),
        "override_code": reason.get("code", ""),
        "override_display": reason.get("display", ""),
        "user_comment": (entry.get("overrideReason") or {}).get("userComment", ""),
        "rule_id": rule_ids.get(entry["card"], ""),
        "received_at": now,
    }
    identity = {k: row[k] for k in row if k not in ("outcome_at", "received_at", "rule_id", "override_display")}
    row["fingerprint"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return row


class FeedbackStore:
    def __init__(self, engine: Engine, issued: IssuedCardLog):
        self.engine = engine
        self.issued = issued
        self._insert_feedback = insert_ignoring_duplicates(engine, feedback, "fingerprint")

    def record_feedback(self, service_id: str, entries: Sequence[Mapping[str, Any]]) -> StoredFeedback:
        """Store validated feedback entries; committed when this returns."""
        now = datetime.now(UTC)
        uuids = {e["card"] for e in entries}
        self.issued.flush()  # cards this process issued a moment ago are named with their rule
        with self.engine.begin() as conn:
            rule_ids = dict(
                conn.execute(
                    select(issued_cards.c.card_uuid, issued_cards.c.rule_id).where(
                        issued_cards.c.card_uuid.in_(uuids)
                    )
                ).all()
            )
            rows = [_row(service_id, e, rule_ids, now) for e in entries]
            result = conn.execute(self._insert_feedback, rows)
            new = max(result.rowcount, 0)
        unknown = uuids - set(rule_ids)
        if unknown:
            log.info("feedback for %d card(s) this service has no record of issuing", len(unknown))
        return StoredFeedback(received=len(rows), new=new)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(feedback)).scalar_one())
