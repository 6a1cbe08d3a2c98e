"""What a site's CDS committee decides without editing rules, and the repeat check.

* **Deployment.** Each rule is ``active`` (its cards are shown), ``silent`` (evaluated on every call, its would-be
  cards recorded but never returned) or ``off`` (not evaluated). ``rule_deployment`` names it per rule; a rule it
  does not name follows its ``status``: ``experimental`` runs silent, ``test`` and ``stable`` are active,
  ``deprecated`` is off. Active and silent rules are evaluated apart, so a silent rule never merges into, displaces
  or caps an active card.
* **Override reasons.** ``override_reasons`` replaces the system and display of the codes a site names; rules keep
  referring to reasons by code.
* **Repeats.** A finding is (patient, user, rule, evidence): the rule's id and the card's evidence lines (values,
  units and dates). A non-critical card whose finding was issued within ``repeat_after`` (per rule:
  ``rule_repeat_after``) at the same or a higher indicator is left out; a critical card always shows. A finding that
  got worse shows again: a higher indicator than before, or different evidence (a new lab result is a new finding:
  the service does not weigh whether a new value is better or worse). ``PT0S`` turns the check off.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .config import ConfigError, Deployment, OverrideReason, Settings
from .rules.engine import IssuedCard, RuleSet
from .rules.loader import load_override_reasons, shipped_rules_dir
from .rules.model import INDICATOR_RANK, Coding
from .server.logs import fingerprint

BY_STATUS: Mapping[str, Deployment] = {
    "experimental": "silent",
    "test": "active",
    "stable": "active",
    "deprecated": "off",
}

# fingerprint -> the earliest issue time that still counts; answers fingerprint -> the most severe indicator seen
SeenLookup = Callable[[Mapping[str, datetime]], Mapping[str, str]]


def finding_fingerprint(deployment: str, patient: str, user: str, card: IssuedCard) -> str:
    """The identity of one finding as the repeat check sees it (see the module documentation); ids are hashed
    before they are combined, so neither the patient's nor the user's id can be read back."""
    parts = [deployment, fingerprint(patient), fingerprint(user), card.rule_id, *card.evidence]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Governance:
    """The site's decisions over one loaded rule set."""

    deployment: Mapping[str, Deployment]  # every loaded rule
    active: RuleSet
    silent: RuleSet
    repeat_after: timedelta
    rule_repeat_after: Mapping[str, timedelta]

    @classmethod
    def of(cls, ruleset: RuleSet, settings: Settings) -> Governance:
        """The deployment of every rule; ConfigError naming the key for a rule id the rule set does not have."""
        for key in ("rule_deployment", "rule_repeat_after"):
            _known_rules(key, getattr(settings, key), ruleset)
        deployment = {r.id: settings.rule_deployment.get(r.id, BY_STATUS[r.status]) for r in ruleset.rules}
        return cls(
            deployment=deployment,
            active=RuleSet.of([r for r in ruleset.rules if deployment[r.id] == "active"], ruleset.directory),
            silent=RuleSet.of([r for r in ruleset.rules if deployment[r.id] == "silent"], ruleset.directory),
            repeat_after=settings.repeat_after,
            rule_repeat_after=settings.rule_repeat_after,
        )

    def window(self, rule_id: str) -> timedelta:
        return self.rule_repeat_after.get(rule_id, self.repeat_after)

    def new_findings(
        self, cards: Sequence[IssuedCard], findings: Mapping[str, str], at: datetime, seen: SeenLookup
    ) -> list[IssuedCard]:
        """``cards`` without the repeats (``findings``: card uuid -> fingerprint; ``seen`` looks earlier ones up)."""
        since = {
            findings[c.card["uuid"]]: at - self.window(c.rule_id)
            for c in cards
            if c.indicator != "critical" and self.window(c.rule_id) > timedelta(0)
        }
        before = seen(since) if since else {}
        return [c for c in cards if not _repeat(c, before.get(findings[c.card["uuid"]]))]


def _repeat(card: IssuedCard, seen_indicator: str | None) -> bool:
    """Shown before at the same or a more severe indicator (a critical card is never a repeat)."""
    if seen_indicator is None or card.indicator == "critical":
        return False
    return INDICATOR_RANK[card.indicator] >= INDICATOR_RANK[seen_indicator]


def _known_rules(key: str, table: Mapping[str, object], ruleset: RuleSet) -> None:
    unknown = sorted(set(table) - set(ruleset.by_id))
    if unknown:
        known = ", ".join(sorted(ruleset.by_id))
        raise ConfigError(f"configuration error: {key}.{unknown[0]}: unknown rule id (the rules are {known})")


def with_override_reasons(ruleset: RuleSet, site: Mapping[str, OverrideReason]) -> RuleSet:
    """The rule set whose cards offer the site's system and display for the codes ``site`` names; ConfigError
    naming the key for a code the rule set's override-reasons.yaml does not define."""
    if not site:
        return ruleset
    known = load_override_reasons(ruleset.directory or shipped_rules_dir())
    unknown = sorted(set(site) - set(known))
    if unknown:
        raise ConfigError(
            f"configuration error: override_reasons.{unknown[0]}: unknown override reason code "
            f"(the codes are {', '.join(sorted(known))})"
        )
    codings = {code: Coding(reason.system, code, reason.display) for code, reason in site.items()}
    rules = [
        replace(rule, card=replace(rule.card, override_reasons=tuple(codings.get(c.code, c) for c in offered)))
        for rule in ruleset.rules
        for offered in [rule.card.override_reasons]
    ]
    return RuleSet.of(rules, ruleset.directory)
