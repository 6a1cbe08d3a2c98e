"""The example CDS Hooks requests shipped with the package, for the card viewer.

They are the project's request fixtures (``fixtures/requests/*.json``, installed as ``cds_service.examples``),
written for an evaluation time of ``WRITTEN_FOR``. Rules look back over fixed windows ("potassium in the last 90
days"), so a demo running on the real clock months later would see every result as too old and show nothing.
The viewer therefore hands each example out *moved in time*: every full date (``YYYY-MM-DD``, and the date part
of every date-time) is shifted by the whole number of days between ``WRITTEN_FOR`` and the service's evaluation
time. All intervals between the patient's data and "now" stay the same, so the example fires as it does in the
tests; with ``now`` set to ``WRITTEN_FOR`` (``CDS_NOW=2026-11-01T00:00:00Z``) the shift is zero and the request
is exactly the fixture. Partial dates (``YYYY``, ``YYYY-MM``) are left alone: a bare year cannot be told from a
four-digit code.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

log = logging.getLogger("cds_service.viewer")

PACKAGE = "cds_service.examples"
WRITTEN_FOR = datetime(2026, 11, 1, tzinfo=UTC)  # the evaluation time the request fixtures are written for
_FULL_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$")


@dataclass(frozen=True, slots=True)
class Example:
    name: str  # the file's stem
    hook: str
    patient_id: str
    request: dict[str, Any]

    def summary(self) -> dict[str, str]:
        return {"name": self.name, "hook": self.hook, "patientId": self.patient_id}


@cache
def shipped_examples() -> dict[str, Example]:
    """Every example request in the package by name (read once; a file that is not a request is logged, skipped)."""
    try:
        folder = resources.files(PACKAGE)
    except ModuleNotFoundError:
        log.warning("no example requests are installed (package %s is missing)", PACKAGE)
        return {}
    examples: dict[str, Example] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        name = entry.name.removesuffix(".json")
        try:
            body = json.loads(entry.read_text(encoding="utf-8"))
            examples[name] = Example(name, body["hook"], str(body["context"].get("patientId", "")), body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("example request %s is not a CDS Hooks request: %s", entry.name, exc)
    return examples


def shift_days(evaluation_time: datetime) -> int:
    """Whole days from the time the examples were written for to ``evaluation_time``."""
    return (evaluation_time.astimezone(UTC).date() - WRITTEN_FOR.date()).days


def shifted(value: Any, days: int) -> Any:
    """A copy of a JSON value with every full date and date-time string moved by ``days`` (time of day kept)."""
    if isinstance(value, dict):
        return {key: shifted(item, days) for key, item in value.items()}
    if isinstance(value, list):
        return [shifted(item, days) for item in value]
    if isinstance(value, str) and days:
        match = _FULL_DATE.match(value)
        if match:
            try:
                moved = date(int(match[1]), int(match[2]), int(match[3])) + timedelta(days=days)
            except (ValueError, OverflowError):
                return value  # not a real calendar date: leave it as it came
            return moved.isoformat() + (match[4] or "")
    return value
