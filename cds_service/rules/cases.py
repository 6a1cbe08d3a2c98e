"""Rule cases (``<rule-id>.cases.yaml``): load them, run each through FHIR -> facts -> rule -> card, judge it.

The clock is frozen at :data:`FROZEN_NOW`; case dates are offsets from it. A test with ``todo`` is a known gap:
it is expected to fail, and passing is reported as an error (strict xfail) so a silent fix is noticed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..facts.build import FactWindows, build_facts
from ..wire.validation import card_problems
from .case_records import merge, record_of
from .engine import IssuedCard, RuleSet, evaluate
from .loader import RuleError, read_yaml, schema_error

FROZEN_NOW = datetime(2026, 11, 1, tzinfo=UTC)
HOOK_PREFERENCE = ("patient-view", "encounter-start", "order-select", "order-sign")


@dataclass(frozen=True, slots=True)
class CaseTest:
    rule_id: str
    case: str
    description: str
    given: dict[str, Any]  # the group's patient merged with the test's additions
    expect: Any  # "silent" or {"fires": {...}, "answer": [...]} (either key may be left out)
    todo: str | None
    path: Path

    @property
    def fires(self) -> dict[str, Any] | None:
        """What the rule's own card should be, or None when the rule on its own should stay silent."""
        return self.expect.get("fires") if isinstance(self.expect, dict) else None

    @property
    def name(self) -> str:
        """``<rule>_<case>_<description>`` as an identifier, for generated test names."""
        return "_".join(_slug(part) for part in (self.rule_id, self.case, self.description))


@dataclass(slots=True)
class Outcome:
    test: CaseTest
    problems: list[str] = field(default_factory=list)
    cards: list[IssuedCard] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """The expectation held (for a todo test: it failed, as known)."""
        return bool(self.problems) if self.test.todo else not self.problems

    def report(self) -> str:
        if self.test.todo and not self.problems:
            return f"todo case now passes (remove its 'todo' marker): {self.test.todo}"
        return "; ".join(self.problems)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def load_cases(path: Path) -> tuple[str, list[CaseTest]]:
    """The rule id and the tests of one case file; RuleError when the file is not valid."""
    data = read_yaml(path)
    problem = schema_error(path, "cases", data)
    if problem:
        raise problem
    rule_id = data["rule"]
    if f"{rule_id}.cases" != path.name.removesuffix(".yaml"):
        raise RuleError(f"{path}: at rule: {rule_id!r} must match the file name {path.name!r}")
    tests: list[CaseTest] = []
    seen: set[str] = set()
    for index, case in enumerate(data["cases"]):
        for number, test in enumerate(case["tests"]):
            if test["description"] in seen:
                raise RuleError(
                    f"{path}: at cases/{index}/tests/{number}/description: {test['description']!r} is not unique"
                )
            seen.add(test["description"])
            tests.append(
                CaseTest(
                    rule_id=rule_id,
                    case=case["description"],
                    description=test["description"],
                    given=merge(case.get("patient"), test.get("given")),
                    expect=test["expect"],
                    todo=test.get("todo"),
                    path=path,
                )
            )
    return rule_id, tests


def hook_for(test: CaseTest, ruleset: RuleSet) -> str:
    if "hook" in test.given:
        return str(test.given["hook"])
    hooks = ruleset.by_id[test.rule_id].hooks
    return next(h for h in HOOK_PREFERENCE if h in hooks)


def run_case(ruleset: RuleSet, test: CaseTest, terminology: Any, now: datetime = FROZEN_NOW) -> Outcome:
    """Run one case over the rule on its own and compare with the expectation (facts built as the service
    builds them, with the whole rule set's lab look-back); with ``answer``, also over the whole rule set."""
    outcome = Outcome(test)
    windows = FactWindows.for_rules(ruleset.lab_lookbacks, terminology.lab_codes)
    facts = build_facts(record_of(test.given, now), terminology, now, windows)
    hook = hook_for(test, ruleset)
    cards = evaluate(ruleset.only(test.rule_id), facts, hook, max_cards=100)
    outcome.cards = cards
    for issued in cards:
        outcome.problems += [f"invalid card: {p}" for p in card_problems(issued.card)]
    if isinstance(test.expect, dict) and "answer" in test.expect:
        outcome.problems += _answer_problems(test.expect["answer"], evaluate(ruleset, facts, hook, max_cards=100))
    fired = [c for c in cards if c.rule_id == test.rule_id]
    expected = test.fires
    if expected is None:
        if fired:
            outcome.problems.append(f"expected silence, got {fired[0].indicator}: {fired[0].card['summary']!r}")
        return outcome
    if not fired:
        outcome.problems.append(f"expected a {expected['indicator']} card, the rule stayed silent")
        return outcome
    outcome.problems += _compare(expected, fired[0])
    return outcome


def _answer_problems(expected: list[dict[str, Any]], cards: list[IssuedCard]) -> list[str]:
    """The whole rule set's cards against ``answer``: each card's rule, in order, and the rules merged into it."""
    got = [(c.rule_id, sorted(c.related)) for c in cards]
    wanted = [(e["card"], sorted(e.get("merged", ()))) for e in expected]
    if got == wanted:
        return []
    return [f"the rule set answers {_cards_text(got)}, expected {_cards_text(wanted)}"]


def _cards_text(cards: list[tuple[str, list[str]]]) -> str:
    """``[draft-statin-raised-ck (merged: statin-muscle-symptoms-ck)]``; ``no card`` for an empty answer."""
    if not cards:
        return "no card"
    return "[" + ", ".join(rule + (f" (merged: {', '.join(merged)})" if merged else "") for rule, merged in cards) + "]"


def _compare(expected: dict[str, Any], issued: IssuedCard) -> list[str]:
    card = issued.card
    problems = []
    if issued.indicator != expected["indicator"]:
        problems.append(f"indicator {issued.indicator!r}, expected {expected['indicator']!r}")
    detail = card.get("detail", "")
    summary = card["summary"]
    problems += [f"summary {summary!r} lacks {t!r}" for t in expected.get("summary", ()) if t not in summary]
    problems += [f"detail lacks {t!r}" for t in expected.get("detail", ()) if t not in detail]
    problems += [f"detail contains {t!r}" for t in expected.get("not_detail", ()) if t in detail]
    if "suggestions" in expected:
        labels = [s["label"] for s in card.get("suggestions", ())]
        if labels != expected["suggestions"]:
            problems.append(f"suggestions {labels!r}, expected {expected['suggestions']!r}")
    return problems
