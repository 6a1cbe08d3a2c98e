"""Rule governance in tests: the settings evaluation tests start from, a site's defaults, and governance data.

Those tests call the same fixture patients again and again and expect every rule's card each time, the
experimental ones too; a site's defaults (repeats left out for a day, experimental rules silent) would hide
cards from the second call on. The test builders (``make_app``, ``serve``, ``ServiceInstance``) start from these;
tests of governance itself (tests/test_governance.py, tests/test_repeats.py) start from ``GOVERNED``.
"""
from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cds_service.rules.loader import read_yaml, rule_files, shipped_rules_dir
from cds_service.storage.analytics import BASELINE_DAYS, MIN_CALLS
from cds_service.storage.issued_cards import IssuedCardLog, IssuedRow

from .hookcalls import SERVICE_IDS
from .viewer_requests import critical_request

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
EXPERIMENTAL = "hyperkalemia"  # marked experimental in the rule set of governed_site(), so silent there
GOVERNED: Mapping[str, Any] = {"repeat_after": "P1D", "rule_deployment": {}}  # a site's defaults


def _experimental_rules() -> list[str]:
    """The ids of the shipped rules whose status is experimental."""
    return [
        path.stem for path in rule_files(shipped_rules_dir()) if read_yaml(path).get("status") == "experimental"
    ]


EVERY_CALL_ANEW: Mapping[str, Any] = {
    "repeat_after": "PT0S",
    "rule_deployment": dict.fromkeys(_experimental_rules(), "active"),
}


def governed_site(folder: Path) -> dict[str, Any]:
    """A site's default settings over a copy of the shipped rules (in ``folder``) in which ``EXPERIMENTAL`` is a
    new rule (status experimental): the shipped rules have all been reviewed, so none runs silent by default."""
    rules = folder / "rules"
    shutil.copytree(shipped_rules_dir(), rules, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    rule = rules / "electrolytes" / f"{EXPERIMENTAL}.yaml"
    text = rule.read_text("utf-8")
    assert "\nstatus: test\n" in text
    rule.write_text(text.replace("\nstatus: test\n", "\nstatus: experimental\n"), "utf-8")
    return {**GOVERNED, "rules_dir": str(rules)}


def as_environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """``CDS_*`` variables for ``settings`` (tables as JSON)."""
    return {
        f"CDS_{key.upper()}": value if isinstance(value, str) else json.dumps(value) for key, value in settings.items()
    }


def experimental_fixture() -> dict[str, Any]:
    """The fixture request (fixtures/requests/) whose only expected card is ``EXPERIMENTAL``'s."""
    expectations = json.loads((FIXTURES / "expectations.json").read_text("utf-8"))["fixtures"]
    name = next(name for name, expected in expectations.items() if expected["rules"] == [EXPERIMENTAL])
    request: dict[str, Any] = json.loads((FIXTURES / name).read_text("utf-8"))
    return request


def potassium_request(
    value: float, user: str = "Practitioner/COREPRACTITIONER1", day: str = "2026-10-27"
) -> dict[str, Any]:
    """Cramps on furosemide with one potassium result: below 2.5 mmol/L critical, below 3.5 a warning."""
    body = critical_request()
    lab = body["prefetch"]["labs"]["entry"][0]["resource"]
    lab["valueQuantity"]["value"] = value
    lab["effectiveDateTime"] = f"{day}T09:00:00Z"
    body["context"]["userId"] = user
    return body


def seed_history(engine: Engine, rule_id: str, today_firings: int) -> None:
    """Fifteen days of patient-view calls in ``engine``'s database, as the service records them: the rule fired
    silently on 9 to 11 of 100 calls a day, and today on ``today_firings`` of ``MIN_CALLS`` calls."""
    log = IssuedCardLog(engine, 60)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(BASELINE_DAYS, -1, -1):
        calls, firings = (MIN_CALLS, today_firings) if back == 0 else (100, 9 + back % 3)
        for n in range(calls):
            cards = [IssuedRow(str(uuid.uuid4()), rule_id, "warning", "silent")] if n < firings else []
            log.add(SERVICE_IDS["patient-view"], cards, today - timedelta(days=back))
    log.flush()
