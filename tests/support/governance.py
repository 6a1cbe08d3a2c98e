"""Settings for tests about what the rules conclude rather than about rule governance.

Those tests call the same fixture patients again and again and expect every rule's card each time, the
experimental ones too; a site's defaults (repeats left out for a day, experimental rules silent) would hide
cards from the second call on. The test builders (``make_app``, ``serve``, ``ServiceInstance``) start from these;
tests of governance itself (tests/test_governance.py, tests/test_repeats.py) set the keys they test.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

EVERY_CALL_ANEW: Mapping[str, Any] = {
    "repeat_after": "PT0S",
    "rule_deployment": {"potassium-sparing-hyperkalemia": "active"},  # experimental: silent by default
}


def as_environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """``CDS_*`` variables for ``settings`` (tables as JSON)."""
    return {
        f"CDS_{key.upper()}": value if isinstance(value, str) else json.dumps(value) for key, value in settings.items()
    }
