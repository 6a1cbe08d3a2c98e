"""``cds-service rules check``: validate every value set, rule and case file, lint the rule set as a whole,
then run every rule's cases. Prints one line per problem (file and path inside it) and returns 0 or 1.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..facts.concept_maps import run_check as check_concept_maps
from ..facts.terminology import Terminology
from .cases import CaseTest, load_cases, run_case
from .engine import RuleSet
from .loader import (
    RuleError,
    case_files,
    load_override_reasons,
    load_rule,
    merge_problems,
    rule_files,
    shipped_rules_dir,
)
from .model import CompositeCriterion, Criterion, LabCriterion, Rule


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    rule_stems: set[str] = field(default_factory=set)  # every rule file, loaded or not
    tests: dict[str, list[CaseTest]] = field(default_factory=dict)
    passed: int = 0
    known_gaps: int = 0


def load_terminology(directory: Path) -> Terminology:
    """The value sets beside the rules (``<rules>/valuesets``), or the shipped ones when there are none."""
    valuesets = directory / "valuesets"
    return Terminology.load(valuesets if valuesets.is_dir() else None)


def collect(directory: Path, terminology: Terminology, report: Report) -> None:
    """Load every rule and case file, recording each problem instead of stopping at the first."""
    try:
        reasons = load_override_reasons(directory)
    except RuleError as exc:
        report.problems.append(str(exc))
        return
    seen: dict[str, Path] = {}
    for order, path in enumerate(rule_files(directory)):
        report.rule_stems.add(path.stem)
        try:
            rule = load_rule(path, order, terminology, reasons)
        except RuleError as exc:
            report.problems.append(str(exc))
            continue
        if rule.id in seen:
            report.problems.append(f"{path}: at id: {rule.id!r} is also the id of {seen[rule.id]}")
            continue
        seen[rule.id] = path
        report.rules.append(rule)
    for path in case_files(directory):
        try:
            rule_id, tests = load_cases(path)
        except RuleError as exc:
            report.problems.append(str(exc))
            continue
        report.tests[rule_id] = tests


def review_problems(rule: Rule) -> list[str]:
    """The clinical review beside ``rule`` (``<id>.review.md``) exists and names every numeric threshold."""
    review = rule.path.with_name(f"{rule.id}.review.md")
    if not review.is_file():
        return [f"{rule.path}: has no clinical review {review.name} beside it"]
    text = review.read_text("utf-8")
    missing = sorted({f"{value:g}" for value in thresholds(rule.criteria.values())} - _numbers_in(text), key=float)
    return [f"{review}: does not name the threshold {value} of its rule" for value in missing]


def thresholds(criteria: Iterable[Criterion]) -> Iterator[float]:
    """Every number a lab criterion compares with, at any depth."""
    for criterion in criteria:
        if isinstance(criterion, CompositeCriterion):
            yield from thresholds(criterion.children)
        elif isinstance(criterion, LabCriterion):
            yield from (value for _, value in criterion.comparisons)


def _numbers_in(text: str) -> set[str]:
    return {f"{float(number):g}" for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", text)}


def lint(report: Report) -> None:
    """Rules about the rule set: every rule has cases and a clinical review beside it, no orphan cases, both
    outcomes covered, every merged group exists."""
    report.problems += merge_problems(report.rules)
    for rule in report.rules:
        report.problems += review_problems(rule)
        tests = report.tests.get(rule.id)
        cases_path = rule.path.with_name(f"{rule.id}.cases.yaml")
        if tests is None:
            report.problems.append(f"{rule.path}: has no cases file {cases_path.name} beside it")
            continue
        if tests[0].path != cases_path:
            report.problems.append(f"{tests[0].path}: must sit beside its rule as {cases_path}")
        fires = sum(1 for t in tests if t.fires is not None)
        silent = len(tests) - fires
        excludes = sum(1 for name in rule.criteria if name.startswith("exclude_"))
        if not fires:
            report.problems.append(f"{cases_path}: needs at least one case where the rule fires")
        if silent < max(1, excludes):
            report.problems.append(
                f"{cases_path}: needs a silent case for every exclude_* block (and at least one): "
                f"{silent} silent for {excludes} exclusions"
            )
    for rule_id, tests in report.tests.items():
        if rule_id not in report.rule_stems:
            report.problems.append(f"{tests[0].path}: no rule has the id {rule_id!r}")


def run_cases(report: Report, terminology: Terminology, out: Callable[[str], None]) -> None:
    ruleset = RuleSet.of(report.rules)
    for rule in report.rules:
        for test in report.tests.get(rule.id, ()):
            outcome = run_case(ruleset, test, terminology)
            if outcome.passed:
                report.passed += 1
                report.known_gaps += bool(test.todo)
            else:
                report.problems.append(f"{test.path}: case {test.case!r} / {test.description!r}: {outcome.report()}")
    out(f"cases: {report.passed} passed ({report.known_gaps} known gaps)")


def run_check(rules_dir: Path | None = None, stream: TextIO | None = None, concept_maps_dir: Path | None = None) -> int:
    """Validate, lint and run the rule set below ``rules_dir`` (None: the shipped rules), and check the site's code
    maps in ``concept_maps_dir`` against its value sets when given; 0 when all is well."""
    stream = stream or sys.stdout

    def out(line: str) -> None:
        print(line, file=stream)

    directory = rules_dir or shipped_rules_dir()
    report = Report()
    try:
        terminology = load_terminology(directory)
    except ValueError as exc:
        out(f"FAIL value sets: {exc}")
        return 1
    out(f"value sets: {len(terminology.analytes)} analytes, {len(terminology.medication_classes)} medication "
        f"classes, {len(terminology.concepts)} finding concepts")
    collect(directory, terminology, report)
    lint(report)
    out(f"rules: {len(report.rules)} loaded from {directory}")
    run_cases(report, terminology, out)
    for problem in report.problems:
        out(f"FAIL {problem}")
    maps = check_concept_maps(concept_maps_dir, terminology, out) if concept_maps_dir is not None else 0
    out("rules check: " + ("OK" if not report.problems else f"{len(report.problems)} problem(s)"))
    return 0 if not report.problems and not maps else 1
