"""Load ``rules/<area>/<rule-id>.yaml`` into typed rules, validating each file against the rule JSON Schema
and then against what a schema cannot say (id equals file stem, field order, known vocabulary, templates that
name real criteria). Every problem raises :class:`RuleError` naming the file and the path inside it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml
from jsonschema.exceptions import ValidationError

from ..schemas import first_violation
from .expression import ExpressionError, parse
from .model import (
    Action,
    AgeCriterion,
    Band,
    CardTemplate,
    Coding,
    CompositeCriterion,
    Criterion,
    Escalation,
    FindingCriterion,
    InteractionCriterion,
    LabCriterion,
    MedicationCriterion,
    Reference,
    Rule,
    Section,
    SuggestionTemplate,
    TimingCriterion,
    binding_name,
)
from .resources import order_problem
from .templates import FIELDS, criterion_kind, placeholders

FIELD_ORDER = (
    "id", "title", "status", "version", "description", "references", "evidence", "hooks", "group", "merges_with",
    "criteria", "condition", "card", "limitations",
)
ORDER_HOOKS = frozenset({"order-select", "order-sign"})
OVERRIDE_REASONS_FILE = "override-reasons.yaml"
CASES_SUFFIX = ".cases.yaml"
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")
_HINTS = {
    "references": "add a references entry with the guideline's label and https URL",
    "limitations": "say honestly when the rule is wrong or silent (known false positives and gaps)",
    "override_reasons": "list codes from rules/override-reasons.yaml the clinician may pick when dismissing",
    "description": "start it with 'Detects ...'",
    "within": "give the look-back as an ISO 8601 duration, e.g. P30D",
    "unit": "state the analyte's canonical unit next to the threshold",
}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available (the C parser)
_COMPARISONS = ("below", "above", "at_least", "at_most", "above_uln")
TIMING_SPANS = (("start", "onset"), ("stop", "resolution"), ("restart", "onset"))  # what the history can date


class RuleError(ValueError):
    """A rule file, case file or value set that cannot be used; the message names the file and the path."""


class Vocabulary(Protocol):
    """What the loader needs from ``cds_service.facts.terminology.Terminology``."""

    analytes: Any
    medication_classes: Any
    concepts: Any
    interactions: Any  # name -> set whose ``pairs`` have ``first``, ``second`` and ``note``


def parse_duration(text: str) -> timedelta:
    """ISO 8601 duration as a timedelta; a year is 365 days and a month 30 days."""
    match = _DURATION.match(text)
    if not match or text == "P":
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    years, months, weeks, days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(days=years * 365 + months * 30 + weeks * 7 + days, hours=hours, minutes=minutes)


def shipped_rules_dir() -> Path:
    """The rule set installed with the package (``rules/`` of the checkout, package ``cds_service.ruleset``)."""
    return Path(str(resources.files("cds_service.ruleset")))


def read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text("utf-8"), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise RuleError(f"{path}: cannot read YAML: {exc}") from exc


def schema_error(path: Path, name: str, document: Any) -> RuleError | None:
    """The most relevant schema violation of ``document`` as a RuleError, or None when it is valid."""
    error = first_violation(name, document)
    return None if error is None else RuleError(f"{path}: {describe(error)}")


def describe(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) < 240 else error.message[:239] + "…"
    hint = next((h for key, h in _HINTS.items() if f"'{key}'" in error.message or where.endswith(key)), "")
    return f"at {where}: {message}" + (f" (hint: {hint})" if hint else "")


def rule_files(directory: Path) -> list[Path]:
    """Rule files: ``<area>/<rule-id>.yaml`` below ``directory``, value sets and case files excluded."""
    return sorted(
        p for p in directory.glob("*/*.yaml") if not p.name.endswith(CASES_SUFFIX) and p.parent.name != "valuesets"
    )


def case_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*/*{CASES_SUFFIX}"))


def load_override_reasons(directory: Path) -> dict[str, Coding]:
    path = directory / OVERRIDE_REASONS_FILE
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("codes"), dict) or not data.get("system"):
        raise RuleError(f"{path}: needs 'system' and a 'codes' mapping of code to display")
    return {str(code): Coding(str(data["system"]), str(code), str(display)) for code, display in data["codes"].items()}


@dataclass(slots=True)
class _Context:
    path: Path
    vocabulary: Vocabulary | None

    def fail(self, where: str, message: str) -> RuleError:
        return RuleError(f"{self.path}: at {where}: {message}")


def load_rule(path: Path, order: int, vocabulary: Vocabulary | None, reasons: Mapping[str, Coding]) -> Rule:
    """Read, validate and build one rule file."""
    data = read_yaml(path)
    problem = schema_error(path, "rule", data)
    if problem:
        raise problem
    ctx = _Context(path, vocabulary)
    if data["id"] != path.stem:
        raise ctx.fail("id", f"the id {data['id']!r} must equal the file stem {path.stem!r}")
    present = [key for key in FIELD_ORDER if key in data]
    if list(data) != present:
        raise ctx.fail("(top level)", f"fields must be in the order {', '.join(FIELD_ORDER)}")
    references = tuple(Reference(r["id"], r["label"], r["url"], r.get("citation", "")) for r in data["references"])
    criteria = {name: _criterion(ctx, f"criteria/{name}", spec) for name, spec in data["criteria"].items()}
    _check_bases(ctx, criteria, {r.id for r in references})
    try:
        expression = parse(data["condition"], criteria)
    except ExpressionError as exc:
        raise ctx.fail("condition", str(exc)) from exc
    unused = [n for n in criteria if not n.startswith("note_") and n not in expression.names]
    if unused:
        raise ctx.fail("condition", f"does not use {', '.join(unused)} (only note_* blocks may stay out of it)")
    hooks = frozenset(data["hooks"])
    if _uses_ordering(criteria.values()) and not hooks <= ORDER_HOOKS:
        raise ctx.fail("hooks", "a rule about orders being placed applies only to order-select and order-sign")
    if data["group"] in data.get("merges_with", ()):
        raise ctx.fail("merges_with", f"names the rule's own group {data['group']!r}")
    card = _card(ctx, data["card"], criteria, references, reasons)
    return Rule(
        id=data["id"], title=data["title"], status=data["status"], version=data["version"],
        description=data["description"].strip(), references=references, evidence=data["evidence"], hooks=hooks,
        group=data["group"], criteria=criteria, condition=expression, condition_text=data["condition"],
        card=card, limitations=data["limitations"].strip(), path=path, order=order,
        merges_with=tuple(data.get("merges_with", ())),
    )


def merge_problems(rules: Iterable[Rule]) -> list[str]:
    """One line per ``merges_with`` entry that names no rule's group (a typo would silently merge nothing)."""
    rules = list(rules)
    groups = {rule.group for rule in rules}
    return [
        f"{rule.path}: at merges_with: no rule has the group {group!r}"
        for rule in rules
        for group in rule.merges_with
        if group not in groups
    ]


def _names(vocabulary: Vocabulary | None, attribute: str) -> frozenset[str] | None:
    if vocabulary is None:
        return None
    return frozenset(getattr(vocabulary, attribute))


def _canonical_unit(vocabulary: Vocabulary | None, analyte: str) -> str | None:
    if vocabulary is None or not isinstance(vocabulary.analytes, Mapping):
        return None
    info = vocabulary.analytes.get(analyte)
    if isinstance(info, Mapping):
        return info.get("canonical_unit")
    return getattr(info, "canonical_unit", None) or getattr(info, "unit", None)


def _known(ctx: _Context, where: str, names: Iterable[str], attribute: str, kind: str) -> frozenset[str]:
    names = frozenset(names)
    known = _names(ctx.vocabulary, attribute)
    if known is not None and not names <= known:
        unknown = ", ".join(sorted(names - known))
        raise ctx.fail(where, f"unknown {kind} {unknown}; known: {', '.join(sorted(known))}")
    return names


def _criterion(ctx: _Context, where: str, spec: Mapping[str, Any]) -> Criterion:
    label = spec.get("label", "")
    for op in ("any", "all"):
        if op in spec:
            children = tuple(_criterion(ctx, f"{where}/{op}/{i}", c) for i, c in enumerate(spec[op]))
            return CompositeCriterion(op, children, label)
    if "not" in spec:
        return CompositeCriterion("not", (_criterion(ctx, f"{where}/not", spec["not"]),), label)
    if "finding" in spec:
        concepts = _known(ctx, f"{where}/finding", spec["finding"], "concepts", "finding concept")
        within = parse_duration(spec["within"]) if "within" in spec else None
        return FindingCriterion(concepts, within, label)
    if "medication" in spec:
        classes = _known(ctx, f"{where}/medication", spec["medication"], "medication_classes", "medication class")
        taken_for = parse_duration(spec["taken_for"]) if "taken_for" in spec else None
        return MedicationCriterion(classes, spec.get("use", "current"), label, spec.get("as_needed"), taken_for)
    if "age" in spec:
        limits = spec["age"]
        return AgeCriterion(limits.get("at_least"), limits.get("below"), label, spec.get("basis", ""))
    if "interaction" in spec:
        sets = _known(ctx, f"{where}/interaction", spec["interaction"], "interactions", "interaction set")
        found = ctx.vocabulary.interactions if ctx.vocabulary is not None else {}
        pairs = tuple((p.first, p.second, p.note) for name in sorted(sets) if name in found for p in found[name].pairs)
        return InteractionCriterion(sets, pairs, spec.get("use", "current"), label)
    if "timing" in spec:
        timing = spec["timing"]
        if (timing["since"], timing["until"]) not in TIMING_SPANS:
            spans = ", ".join(f"{since} to {until}" for since, until in TIMING_SPANS)
            raise ctx.fail(f"{where}/timing", f"times {spans}, not {timing['since']} to {timing['until']}")
        bands = tuple(
            Band(parse_duration(b["under"]) if "under" in b else None, b.get("under", ""), b["points"])
            for b in timing["points"]
        )
        return TimingCriterion(
            classes=_known(ctx, f"{where}/timing/medication", timing["medication"], "medication_classes",
                           "medication class"),
            since=timing["since"],
            concepts=_known(ctx, f"{where}/timing/finding", timing["finding"], "concepts", "finding concept"),
            until=timing["until"],
            bands=bands,
            label=label,
            basis=spec.get("basis", ""),
        )
    (analyte,) = _known(ctx, f"{where}/lab", [spec["lab"]], "analytes", "analyte")
    canonical = _canonical_unit(ctx.vocabulary, analyte)
    if "unit" in spec and canonical is not None and spec["unit"] != canonical:
        raise ctx.fail(f"{where}/unit", f"{analyte} thresholds are in its canonical unit {canonical!r}")
    return LabCriterion(
        analyte=analyte,
        within=parse_duration(spec["within"]),
        within_text=spec["within"],
        comparisons=tuple((op, float(spec[op])) for op in _COMPARISONS if op in spec),
        range_checks=tuple(check for check in ("above_range", "below_range") if check in spec),
        unit=spec.get("unit"),
        missing=bool(spec.get("missing")),
        label=label,
        basis=spec.get("basis", ""),
        after_onset=bool(spec.get("after_onset")),
    )


def _check_bases(ctx: _Context, criteria: Mapping[str, Criterion], reference_ids: set[str]) -> None:
    """Every numeric threshold names the reference that supports it, and that reference is the rule's own."""

    def walk(where: str, criterion: Criterion) -> None:
        if isinstance(criterion, CompositeCriterion):
            for index, child in enumerate(criterion.children):
                walk(f"{where}/{criterion.op}/{index}", child)
        elif isinstance(criterion, TimingCriterion | LabCriterion | AgeCriterion) and _thresholds(criterion):
            if not criterion.basis:
                numbers = _thresholds(criterion)
                raise ctx.fail(where, f"the threshold ({numbers}) needs a basis: the id of the reference behind it")
            if criterion.basis not in reference_ids:
                raise ctx.fail(f"{where}/basis", f"{criterion.basis!r} is not one of the rule's references")

    for name, criterion in criteria.items():
        walk(f"criteria/{name}", criterion)


def _thresholds(criterion: LabCriterion | TimingCriterion | AgeCriterion) -> str:
    """The criterion's numbers as text ("below 3.5", "under P4W 3 points", "at_least 65"); empty when none."""
    if isinstance(criterion, TimingCriterion):
        return ", ".join(f"under {b.under_text} {b.points} points" if b.under_text else f"{b.points} points"
                         for b in criterion.bands)
    if isinstance(criterion, AgeCriterion):
        limits = (("at_least", criterion.at_least), ("below", criterion.below))
        return ", ".join(f"{op} {value}" for op, value in limits if value is not None)
    return ", ".join(f"{op} {value:g}" for op, value in criterion.comparisons)


def _uses_ordering(criteria: Iterable[Criterion]) -> bool:
    for criterion in criteria:
        if isinstance(criterion, CompositeCriterion) and _uses_ordering(criterion.children):
            return True
        if isinstance(criterion, MedicationCriterion) and criterion.use == "ordering":
            return True
    return False


def _card(
    ctx: _Context,
    spec: Mapping[str, Any],
    criteria: Mapping[str, Criterion],
    references: tuple[Reference, ...],
    reasons: Mapping[str, Coding],
) -> CardTemplate:
    by_id = {r.id: r for r in references}
    always = {binding_name(n): c for n, c in criteria.items() if n.startswith("require_")}

    def block(where: str, name: str | None) -> str | None:
        if name is not None and name not in criteria:
            raise ctx.fail(where, f"{name!r} is not a criteria block of this rule")
        return name

    def check_template(where: str, text: str, guard: str | None) -> str:
        allowed = dict(always)
        if guard is not None:
            allowed[binding_name(guard)] = criteria[guard]
        for name, field in placeholders(text):
            if name not in allowed:
                raise ctx.fail(where, f"{{{name}}} names no require_* block (or the section's 'when' block)")
            kind = criterion_kind(allowed[name])
            if field is not None and field not in FIELDS[kind]:
                raise ctx.fail(where, f"{{{name}.{field}}}: {kind} evidence has {', '.join(sorted(FIELDS[kind]))}")
        return text

    def reference(where: str, ref_id: str) -> Reference:
        if ref_id not in by_id:
            raise ctx.fail(where, f"{ref_id!r} is not the id of one of this rule's references")
        return by_id[ref_id]

    escalate = tuple(
        Escalation(
            when=block(f"card/escalate/{i}/when", e["when"]) or "",
            indicator=e["indicator"],
            summary=check_template(f"card/escalate/{i}/summary", e["summary"], e["when"]) if "summary" in e else None,
        )
        for i, e in enumerate(spec.get("escalate", ()))
    )
    detail = []
    for i, written in enumerate(spec["detail"]):
        section = {"text": written} if isinstance(written, str) else written
        when = block(f"card/detail/{i}/when", section.get("when"))
        block(f"card/detail/{i}/unless", section.get("unless"))
        detail.append(Section(check_template(f"card/detail/{i}", section["text"], when), when, section.get("unless")))
    suggestions = []
    for i, s in enumerate(spec.get("suggestions", ())):
        where = f"card/suggestions/{i}"
        when = block(f"{where}/when", s.get("when"))
        block(f"{where}/unless", s.get("unless"))
        actions = tuple(_action(ctx, f"{where}/actions/{j}", a, s["label"]) for j, a in enumerate(s["actions"]))
        suggestions.append(
            SuggestionTemplate(check_template(f"{where}/label", s["label"], when), actions,
                               bool(s.get("recommended", False)), when, s.get("unless"))
        )
    behavior = spec.get("selection_behavior", "any")
    if behavior == "at-most-one" and sum(s.recommended for s in suggestions) > 1:
        raise ctx.fail("card/suggestions", "at most one suggestion may be recommended with at-most-one")
    unknown = [code for code in spec["override_reasons"] if code not in reasons]
    if unknown:
        raise ctx.fail("card/override_reasons", f"unknown codes {', '.join(unknown)}; see {OVERRIDE_REASONS_FILE}")
    return CardTemplate(
        indicator=spec["indicator"],
        summary=check_template("card/summary", spec["summary"], None),
        detail=tuple(detail),
        source=reference("card/source", spec["source"]),
        links=tuple(reference(f"card/links/{i}", r) for i, r in enumerate(spec.get("links", ()))),
        override_reasons=tuple(reasons[code] for code in spec["override_reasons"]),
        escalate=escalate,
        suggestions=tuple(suggestions),
        selection_behavior=behavior,
    )


def _action(ctx: _Context, where: str, spec: Mapping[str, Any], label: str) -> Action:
    if "order" in spec:
        order = spec["order"]
        if order["system"] != "http://loinc.org":
            raise ctx.fail(f"{where}/order/system", "tests are ordered by LOINC code (http://loinc.org)")
        coding = Coding(order["system"], str(order["code"]), order["display"])
        problem = order_problem(coding)
        if problem:
            invalid = f"suggestion {label!r} creates a ServiceRequest that is not valid FHIR R4"
            raise ctx.fail(f"{where}/order", f"{invalid}: at {problem}")
        return Action("order", coding=coding)
    classes = _known(ctx, f"{where}/remove_draft", spec["remove_draft"], "medication_classes", "medication class")
    return Action("remove_draft", classes=classes)
