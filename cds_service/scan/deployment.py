"""What a rule does at this site (active, silent or off), named on each worklist line.

Until the rule-lifecycle work lands, this is the one place that decides it: the site's ``rule_deployment``
setting when the settings have one, otherwise the default of the rule's ``status``.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config import Settings
from ..rules.model import Rule

BY_STATUS = {"experimental": "silent", "test": "active", "stable": "active", "deprecated": "off"}


def deployment_of(rule: Rule, settings: Settings) -> str:
    """``active``, ``silent`` or ``off`` for ``rule`` under ``settings``."""
    configured: Mapping[str, str] = getattr(settings, "rule_deployment", None) or {}
    return configured.get(rule.id, BY_STATUS.get(rule.status, "active"))
