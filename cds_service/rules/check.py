"""``cds-service rules check``: validate every value set, rule and case file, lint the rule set as a whole,
then run every rule's cases. Prints one line per problem (file and path inside it) and returns 0 or 1.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..facts.concept_maps import run_check as check_concept_maps
from ..facts.labs import DERIVED_FROM
from ..facts.terminology import LOINC, RXNORM, Analyte, Terminology
from .case_records import coding
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
from .model import (
    CompositeCriterion,
    Criterion,
    InteractionCriterion,
    LabCriterion,
    MedicationCriterion,
    Rule,
    TimingCriterion,
)

BRANDED_TTYS = frozenset({"BN", "SBD", "SBDC", "SBDF", "SBDG", "BPCK"})  # RxNorm term types of branded products
MEDICATION_KEYS = ("medications", "statements", "draft_orders")


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
    for criterion in leaves(criteria):
        if isinstance(criterion, LabCriterion):
            yield from (value for _, value in criterion.comparisons)


def leaves(criteria: Iterable[Criterion]) -> Iterator[Criterion]:
    """Every criterion that is not a composite of others, at any depth."""
    for criterion in criteria:
        if isinstance(criterion, CompositeCriterion):
            yield from leaves(criterion.children)
        else:
            yield criterion


def _numbers_in(text: str) -> set[str]:
    return {f"{float(number):g}" for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", text)}


def representation_problems(rule: Rule, tests: list[CaseTest], terminology: Terminology) -> list[str]:
    """The cases of ``rule`` show the representations real EHRs send, where the rule's criteria and the value
    sets say they apply: a lab it reads in a unit other than the canonical one, a lab it compares given with a
    comparator ("<2.5"), and a medication of a class it reads coded by a branded RxNorm product only (by brand
    name in text only when the value sets know brand names of the class but no branded code)."""
    cases_path = rule.path.with_name(f"{rule.id}.cases.yaml")
    labs = _key_labs(rule, lambda c: True)
    problems = []
    read = _measured({c.analyte for c in labs})
    other_units = sorted(
        a for a in read if a in terminology.analytes
        and set(terminology.analytes[a].units.by_code) - {terminology.analytes[a].canonical_unit}
    )
    given = [(analyte, lab) for test in tests for analyte, lab in _case_labs(test, terminology)]
    if other_units and not any(a in other_units and _in_other_unit(lab, terminology.analytes[a]) for a, lab in given):
        problems.append(f"{cases_path}: no case gives {' or '.join(other_units)} in a unit other than the "
                        "canonical one (an SI or conventional unit the value sets convert)")
    compared = _measured({c.analyte for c in _key_labs(rule, _compares)})
    if compared and not any(a in compared and "comparator" in lab for a, lab in given):
        problems.append(f"{cases_path}: no case gives {' or '.join(sorted(compared))} with a comparator "
                        "(<, <=, >, >=) on its value")
    return problems + _brand_problems(rule, tests, terminology, cases_path)


def _key_labs(rule: Rule, keep: Callable[[LabCriterion], bool]) -> list[LabCriterion]:
    """The lab criteria ``keep`` selects in the rule's require_* blocks, else in all its blocks."""
    def labs(blocks: Iterable[Criterion]) -> list[LabCriterion]:
        return [c for c in leaves(blocks) if isinstance(c, LabCriterion) and keep(c)]

    return labs(c for name, c in rule.criteria.items() if name.startswith("require_")) or labs(rule.criteria.values())


def _compares(criterion: LabCriterion) -> bool:
    """The criterion compares a value with a limit (``at_least: 0`` only asks for a result)."""
    return bool(criterion.range_checks) or any(pair != ("at_least", 0) for pair in criterion.comparisons)


def _measured(analytes: set[str]) -> set[str]:
    """The analytes a lab result is reported as, for analytes read: a derived one stands for the one it is
    computed from (corrected calcium for total calcium)."""
    return {DERIVED_FROM[a][0] if a in DERIVED_FROM else a for a in analytes}


def _case_labs(test: CaseTest, terminology: Terminology) -> Iterator[tuple[str, dict[str, Any]]]:
    for lab in test.given.get("labs") or ():
        code = coding(lab)
        analyte = terminology.analyte_for(code["code"]) if code["system"] == LOINC else None
        if analyte:
            yield analyte, lab


def _in_other_unit(lab: dict[str, Any], analyte: Analyte) -> bool:
    conversion = analyte.units.find(lab["unit"], lab.get("unit_text"))
    return conversion is not None and conversion.unit != analyte.canonical_unit


def _brand_problems(rule: Rule, tests: list[CaseTest], terminology: Terminology, cases_path: Path) -> list[str]:
    ingredients: set[str] = set()
    for criterion in leaves(rule.criteria.values()):
        if isinstance(criterion, MedicationCriterion | TimingCriterion):
            ingredients.update(*(terminology.medication_classes[c].ingredients for c in criterion.classes))
        elif isinstance(criterion, InteractionCriterion):
            ingredients.update(i for first, second, _ in criterion.pairs for i in (first, second))
    branded = {
        entry.code for entry in terminology.entries.values()
        if entry.system == RXNORM and entry.tty in BRANDED_TTYS
        and not ingredients.isdisjoint(terminology.ingredients_for(RXNORM, entry.code))
    }
    brands = {name for name, made_of in terminology.brands.items() if not ingredients.isdisjoint(made_of)}
    medicines = [m for test in tests for key in MEDICATION_KEYS for m in test.given.get(key) or ()]
    if branded:
        if any(str(m.get("rxnorm")) in branded for m in medicines):
            return []
        codes = sorted(branded, key=lambda code: (len(code), code))
        return [f"{cases_path}: no case codes a medication only by a branded RxNorm product of a class the rule "
                f"reads (such as {', '.join(codes[:4])}{', ...' if len(codes) > 4 else ''})"]
    if brands and not any(
        "text" in m and set(terminology.medication_text(str(m["text"])).names) & brands for m in medicines
    ):
        return [f"{cases_path}: no case names a medication only by a brand of a class the rule reads "
                f"({', '.join(sorted(brands))})"]
    return []


def lint(report: Report, terminology: Terminology) -> None:
    """Rules about the rule set: every rule has cases and a clinical review beside it, no orphan cases, both
    outcomes covered, the representations real EHRs send covered, every merged group exists."""
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
        report.problems += representation_problems(rule, tests, terminology)
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
    lint(report, terminology)
    out(f"rules: {len(report.rules)} loaded from {directory}")
    run_cases(report, terminology, out)
    for problem in report.problems:
        out(f"FAIL {problem}")
    maps = check_concept_maps(concept_maps_dir, terminology, out) if concept_maps_dir is not None else 0
    out("rules check: " + ("OK" if not report.problems else f"{len(report.problems)} problem(s)"))
    return 0 if not report.problems and not maps else 1
