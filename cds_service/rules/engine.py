"""Evaluate the rule set over one patient's facts and return the cards, ready for the response.

* No card at all unless a cramp or spasm is documented and current (the facts keep only current findings).
* One card per underlying problem (``problems``): rules share a ``group`` or join others with ``merges_with``;
  the firing with the highest indicator (then one about the order, then the earliest rule) makes the card and
  the others' summaries and suggestions are merged into it. On order hooks only problems about the order being
  placed, or critical ones, are answered.
* Cards are ordered critical, warning, info, then about the order, then by rule order, and capped at ``max_cards``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..facts.model import PatientFacts
from .cards import Firing, build_card, evidence_lines, evidence_of
from .criteria import Evidence, Memo, shared_criteria
from .criteria import evaluate as evaluate_criterion
from .expression import Tri
from .loader import (
    RuleError,
    Vocabulary,
    load_override_reasons,
    load_rule,
    merge_problems,
    rule_files,
    shipped_rules_dir,
)
from .model import CRAMP_CONCEPTS, Criterion, LabCriterion, Rule, binding_name
from .problems import problems

log = logging.getLogger("cds_service.rules")

__all__ = ["CRAMP_CONCEPTS", "IssuedCard", "RuleError", "RuleSet", "evaluate", "fire"]


@dataclass(frozen=True, slots=True)
class IssuedCard:
    rule_id: str
    indicator: str
    card: dict[str, Any]
    related: tuple[str, ...] = ()  # ids of rules about the same problem whose findings were merged in
    evidence: tuple[str, ...] = ()  # the card's evidence lines (Markdown): what the repeat check compares
    evidence_items: tuple[Evidence, ...] = ()  # the same evidence as data (the population scan reports it)


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    directory: Path | None = None
    by_id: dict[str, Rule] = field(default_factory=dict)
    # The longest look-back of the lab criteria on each analyte: no rule reads an older result of that analyte.
    lab_lookbacks: Mapping[str, timedelta] = field(default_factory=dict)

    @property
    def lab_lookback(self) -> timedelta | None:
        """The longest look-back of any lab criterion: no rule reads an older lab result (None: no lab rule)."""
        return max(self.lab_lookbacks.values(), default=None)

    @classmethod
    def load(cls, directory: Path | None, terminology: Vocabulary | None) -> RuleSet:
        """Load every rule below ``directory`` (None: the shipped rules), deprecated ones too (a site may still
        deploy them: cds_service.governance); RuleError on the first bad file."""
        directory = directory or shipped_rules_dir()
        if not directory.is_dir():
            raise RuleError(f"{directory}: the rules directory does not exist")
        reasons = load_override_reasons(directory)
        rules: list[Rule] = []
        seen: dict[str, Path] = {}
        for order, path in enumerate(rule_files(directory)):
            rule = load_rule(path, order, terminology, reasons)
            if rule.id in seen:
                raise RuleError(f"{path}: at id: {rule.id!r} is also the id of {seen[rule.id]}")
            seen[rule.id] = path
            rules.append(rule)
        problems_found = merge_problems(rules)
        if problems_found:
            raise RuleError(problems_found[0])
        return cls.of(rules, directory)

    @classmethod
    def of(cls, rules: Iterable[Rule], directory: Path | None = None) -> RuleSet:
        """The rule set of ``rules``; equal criteria across rules become one object, evaluated once per call."""
        pool: dict[Criterion, Criterion] = {}
        rules = tuple(replace(r, criteria=shared_criteria(r.criteria, pool)) for r in rules)
        lookbacks: dict[str, timedelta] = {}
        for criterion in pool:  # the pool holds composites' children too
            if isinstance(criterion, LabCriterion):
                lookbacks[criterion.analyte] = max(criterion.within, lookbacks.get(criterion.analyte, criterion.within))
        return cls(
            rules=rules,
            directory=directory,
            by_id={r.id: r for r in rules},
            lab_lookbacks=lookbacks,
        )

    def only(self, rule_id: str) -> RuleSet:
        """The rule set reduced to one rule (the case runner tests each rule on its own)."""
        return RuleSet.of([self.by_id[rule_id]], self.directory)


class _LazyStates(Mapping[str, Tri]):
    """A rule's block states for its condition, each criterion evaluated the first time the condition reads it.

    The condition's ``all of`` / ``any of`` stop at the first False / True, so a rule whose first requirement
    fails costs one criterion; the three-valued result is the same as with every state computed. Results live
    in the call's ``Memo`` (by criterion), so a block read twice, or by another rule, is evaluated once.
    """

    __slots__ = ("_criteria", "_facts", "_memo")

    def __init__(self, rule: Rule, facts: PatientFacts, memo: Memo) -> None:
        self._criteria = rule.criteria
        self._facts = facts
        self._memo = memo

    def __getitem__(self, name: str) -> Tri:
        return evaluate_criterion(self._criteria[name], self._facts, self._memo).state

    def __iter__(self) -> Iterator[str]:
        return iter(self._criteria)

    def __len__(self) -> int:
        return len(self._criteria)


def fire(rule: Rule, facts: PatientFacts, memo: Memo | None = None) -> Firing | None:
    """The rule's firing over ``facts``, or None when its condition is false or cannot be decided.

    ``memo`` holds the criteria results already computed over the same ``facts`` (``evaluate`` shares one
    across the rule set). Only the criteria the condition needs are evaluated unless the rule fires; a firing
    has every block's match, for its card.
    """
    memo = {} if memo is None else memo
    if rule.condition.evaluate(_LazyStates(rule, facts, memo)) is not True:
        return None
    matches = {name: evaluate_criterion(criterion, facts, memo) for name, criterion in rule.criteria.items()}
    states = {name: match.state for name, match in matches.items()}
    escalation = next((e for e in rule.card.escalate if states.get(e.when) is True), None)
    return Firing(
        rule=rule,
        states=states,
        matches={binding_name(name): match for name, match in matches.items()},
        indicator=escalation.indicator if escalation else rule.card.indicator,
        summary=(escalation.summary if escalation and escalation.summary else rule.card.summary),
    )


def evaluate(
    ruleset: RuleSet, facts: PatientFacts, hook: str, *, max_cards: int, memo: Memo | None = None
) -> list[IssuedCard]:
    """The cards for ``facts`` on ``hook``: one per problem, critical first, at most ``max_cards``. ``memo`` holds
    criteria results over the same ``facts`` to reuse (another rule set's of the same call)."""
    if not facts.findings_of(CRAMP_CONCEPTS):
        return []
    memo = {} if memo is None else memo
    firings = [f for f in (_fire_safely(r, facts, memo) for r in ruleset.rules if hook in r.hooks) if f is not None]
    return [_issue(problem, facts) for problem in problems(firings, hook)[: max(max_cards, 0)]]


def _fire_safely(rule: Rule, facts: PatientFacts, memo: Memo) -> Firing | None:
    """One rule's failure on unexpected data costs that rule's card, never the whole response."""
    try:
        return fire(rule, facts, memo)
    except Exception:
        log.exception("rule %s failed on patient facts; it is skipped for this call", rule.id)
        return None


def _issue(group: Sequence[Firing], facts: PatientFacts) -> IssuedCard:
    primary, related = group[0], list(group[1:])
    evidence = tuple(evidence_lines(primary))
    return IssuedCard(
        rule_id=primary.rule.id,
        indicator=primary.indicator,
        card=build_card(primary, related, facts, evidence),
        related=tuple(f.rule.id for f in related),
        evidence=evidence,
        evidence_items=tuple(evidence_of(primary)),
    )
