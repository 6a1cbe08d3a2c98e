"""Card text from a rule's templates and the evidence its criteria matched.

Placeholders are ``{name}`` or ``{name.field}``, where ``name`` is a criteria block without its prefix
(``require_low_potassium`` -> ``{low_potassium.value}``). The fields each kind of evidence offers are listed in
``FIELDS``; the loader rejects any other. Values from patient data are escaped for Markdown (detail) or made
single-line plain text (summary, labels): no raw HTML or Markdown from a record reaches a card.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from ..facts.model import Finding, LabResult, MedicationUse
from .criteria import Absence, Age, Evidence, Match, Pairing, Timing
from .model import (
    AgeCriterion,
    CompositeCriterion,
    Criterion,
    InteractionCriterion,
    LabCriterion,
    MedicationCriterion,
    TimingCriterion,
)

PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)(?:\.([a-z_]+))?\}")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

FIELDS: dict[str, frozenset[str]] = {
    "lab": frozenset({"value", "unit", "date", "range", "times_uln", "uln", "reported", "results"}),
    "missing": frozenset({"analyte", "within"}),
    "medication": frozenset({"names", "ingredients", "date"}),
    "finding": frozenset({"names", "date"}),
    "interaction": frozenset({"first", "second", "note"}),
    "timing": frozenset({"span", "points"}),
    "age": frozenset({"years"}),
    "mixed": frozenset({"date"}),  # a composite of different kinds: only {name} and {name.date}
}
NO_RANGE = "no reference range"
_UNIT_DISPLAY = {"mL/min/{1.73_m2}": "mL/min/1.73 m²", "m[IU]/L": "mIU/L", "Cel": "°C", "[degF]": "°F"}
_NAMES = {  # how card text names an analyte (others: the name with spaces, capitalised)
    "ck": "CK",
    "tsh": "TSH",
    "egfr": "eGFR",
    "bun": "BUN",
    "hba1c": "HbA1c",
    "free_t4": "Free T4",
    "vitamin_d": "25-OH vitamin D",
    "vitamin_b12": "Vitamin B12",
    "calcium_corrected": "Albumin-corrected calcium",
    "calcium_uncorrected": "Total calcium, not albumin-corrected,",
    "calcium_ionized": "Ionized calcium",
}


def criterion_kind(criterion: Criterion) -> str:
    """The evidence kind a criterion yields; a composite whose parts differ yields ``mixed``."""
    if isinstance(criterion, CompositeCriterion):
        kinds = {criterion_kind(child) for child in criterion.children}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    if isinstance(criterion, LabCriterion):
        return "missing" if criterion.missing else "lab"
    if isinstance(criterion, InteractionCriterion):
        return "interaction"
    if isinstance(criterion, TimingCriterion):
        return "timing"
    if isinstance(criterion, AgeCriterion):
        return "age"
    return "medication" if isinstance(criterion, MedicationCriterion) else "finding"


def number(value: float) -> str:
    """3.1 -> "3.1", 8.0 -> "8.0", 0.654 -> "0.65", 19.0 -> "19", 2500.0 -> "2500"."""
    text = f"{value:.2f}".rstrip("0")
    if text.endswith("."):
        text = text + "0" if abs(value) < 10 else text[:-1]
    return text


def value_text(result: LabResult) -> str:
    """A lab value for card text, with the comparator of a reported bound: "3.1", "<8", ">5000"."""
    return f"{result.comparator}{number(result.value)}"


def times_uln_text(result: LabResult) -> str:
    """The value as a multiple of the upper reference limit, with the comparator of a reported bound: "12.1",
    ">25.0" (a CK reported as ">5000" against 200 is more than 25 times the limit); "unknown" without a limit."""
    ratio = result.times_uln
    return "unknown" if ratio is None else f"{result.comparator}{ratio:.1f}"


def unit_text(unit: str) -> str:
    """A UCUM unit as clinicians write it (``m[IU]/L`` -> ``mIU/L``)."""
    return _UNIT_DISPLAY.get(unit, unit)


def analyte_name(analyte: str) -> str:
    return _NAMES.get(analyte, analyte.replace("_", " ").capitalize())


# Card text repeats the same short strings call after call (labels, analyte and drug names, units, ranges): the
# escaped form is kept for the most recent ones instead of running the regular expressions again.
@lru_cache(maxsize=4096)
def plain(text: str) -> str:
    """Patient-supplied text made single-line plain text."""
    return " ".join(_CONTROL.sub(" ", text).split())


@lru_cache(maxsize=4096)
def markdown(text: str) -> str:
    """Patient-supplied text made inert inside GitHub-flavoured Markdown (no HTML, links or emphasis)."""
    text = plain(text).replace("&", "&amp;").replace("<", "&lt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _day(moment: datetime | None) -> str:
    return moment.date().isoformat() if moment else "date not recorded"


def _join(items: Sequence[str]) -> str:
    unique = list(dict.fromkeys(i for i in items if i))
    if len(unique) <= 1:
        return "".join(unique)
    return ", ".join(unique[:-1]) + " and " + unique[-1]


def lab_range(result: LabResult) -> str:
    low, high, unit = result.ref_low, result.ref_high, unit_text(result.unit)
    if low is not None and high is not None:
        text = f"{number(low)}–{number(high)} {unit}"
    elif high is not None:
        text = f"≤ {number(high)} {unit}"
    elif low is not None:
        text = f"≥ {number(low)} {unit}"
    else:
        return NO_RANGE
    return text if result.ref_from_resource else f"{text}, service default"


def field_value(evidence: Sequence[Evidence], field: str | None) -> str:
    """The text of ``field`` over a block's evidence (plain text; escape it for the target format).

    Without a field: a lab's value and unit, the ingredients of medications, the names of findings; for mixed
    evidence (a lab or a diagnosis) the first item's text.
    """
    first = evidence[0]
    if field == "date":
        dates = [d for d in (evidence_date(e) for e in evidence) if d]
        return _day(max(dates, key=_utc)) if dates else _day(None)
    if isinstance(first, LabResult):
        if field == "results":
            return _join([_result(e) for e in evidence if isinstance(e, LabResult)])
        return _lab_field(first, field)
    if isinstance(first, Age):
        return str(first.years) if field == "years" else f"aged {first.years}"
    if isinstance(first, Absence):
        analyte = running(analyte_name(first.analyte))
        if field == "analyte":
            return analyte
        if field == "within":
            return _window(first.within_text)
        return f"no {analyte} {_absence_span(first)}"
    if isinstance(first, Pairing):
        pairs = [e for e in evidence if isinstance(e, Pairing)]
        if field == "note":
            return _join([p.note for p in pairs])
        if field in ("first", "second"):
            return _join([p.first_ingredient if field == "first" else p.second_ingredient for p in pairs])
        return _join([f"{p.first_ingredient} with {p.second_ingredient}" for p in pairs])
    if isinstance(first, Timing):
        if field == "points":
            return _points(first.points)
        return span_text(first) if field == "span" else timing_text(first)
    if isinstance(first, MedicationUse):
        meds = [e for e in evidence if isinstance(e, MedicationUse)]
        if field == "names":
            return _join([m.name for m in meds])
        return _join(sorted({i for m in meds for i in m.ingredients}) or [m.name for m in meds])
    return _join([running(e.display) for e in evidence if isinstance(e, Finding)])


def _lab_field(result: LabResult, field: str | None) -> str:
    unit = unit_text(result.unit)
    if field == "unit":
        return unit
    if field == "range":
        return lab_range(result)
    if field == "reported":
        return result.reported
    if field == "times_uln":
        return times_uln_text(result)
    if field == "uln":
        return f"{number(result.ref_high)} {unit}" if result.ref_high is not None else "unknown"
    return value_text(result) if field == "value" else f"{value_text(result)} {unit}"


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def running(name: str) -> str:
    """A name inside a sentence: "Potassium" -> "potassium", "Deep venous thrombosis" -> "deep venous
    thrombosis"; acronyms ("CK", "TSH") and names starting with a digit stay as they are."""
    if len(name) > 1 and name[0].isupper() and name[1].islower():
        return name[0].lower() + name[1:]
    return name


def _result(result: LabResult) -> str:
    """``potassium 3.1 mmol/L``: the analyte in running text with its value."""
    return f"{running(analyte_name(result.analyte))} {value_text(result)} {unit_text(result.unit)}"


_SINCE = {"start": "starting", "stop": "stopping", "restart": "restarting"}
_UNTIL = {"onset": "began", "resolution": "resolved"}


def span_text(timing: Timing) -> str:
    """The span of a timing in days (under two weeks) or whole weeks: "10 days", "6 weeks"."""
    days = abs(timing.days)
    if days < 14:
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{days // 7} weeks"


def _points(points: int | None) -> str:
    return "not scored" if points is None else f"{points} point{'s' if points != 1 else ''}"


def timing_text(timing: Timing) -> str:
    """``cramp began 6 weeks after starting atorvastatin 40 MG Oral Tablet (2 points)`` (plain text)."""
    when = "before" if timing.days < 0 else "after"
    return (f"{running(timing.finding.display)} {_UNTIL[timing.until]} {span_text(timing)} {when} "
            f"{_SINCE[timing.since]} {timing.medication.name} ({_points(timing.points)})")


def evidence_date(evidence: Evidence) -> datetime | None:
    """When a piece of evidence happened (a lab drawn, a drug ordered, a finding dated); None when it is undated."""
    if isinstance(evidence, LabResult):
        return evidence.effective
    if isinstance(evidence, MedicationUse):
        return evidence.date
    if isinstance(evidence, Finding):
        return evidence.date
    if isinstance(evidence, Timing):
        return evidence.until_date
    return None


def _absence_span(absence: Absence) -> str:
    """Where a result is missing: in the look-back, or since the cramps began (older ones did not count)."""
    if absence.since is not None:
        return f"since the cramps began ({_day(absence.since)})"
    return f"in the last {_window(absence.within_text)}"


def _window(text: str) -> str:
    match = re.fullmatch(r"P(\d+)([YMWD])", text)
    if not match:
        return text
    amount, unit = int(match.group(1)), {"Y": "year", "M": "month", "W": "week", "D": "day"}[match.group(2)]
    return f"{amount} {unit}{'s' if amount != 1 else ''}"


def render(template: str, matches: Mapping[str, Match], escape: Callable[[str], str]) -> str:
    """Fill ``template`` from the matched evidence; ``escape`` is ``plain`` or ``markdown``."""

    def replace(found: re.Match[str]) -> str:
        match = matches.get(found.group(1))
        if match is None or not match.evidence:
            return "(not recorded)"
        return escape(field_value(match.evidence, found.group(2)))

    return PLACEHOLDER.sub(replace, template)


def evidence_line(criterion: Criterion, evidence: Evidence) -> str:
    """One Markdown bullet (without the dash) describing one piece of evidence."""
    label = f"{markdown(criterion.label)}: " if criterion.label else ""
    if isinstance(evidence, LabResult):
        unit = unit_text(evidence.unit)
        name, value = markdown(analyte_name(evidence.analyte)), markdown(value_text(evidence))
        text = f"{label}{name} **{value} {markdown(unit)}**"
        if evidence.reported and not plain(evidence.reported).endswith((f" {evidence.unit}", f" {unit}")):
            text += f" (reported as {markdown(evidence.reported)})"
        reference = lab_range(evidence)
        text += f", {markdown(reference)}" if reference == NO_RANGE else f", reference {markdown(reference)}"
        if evidence.ref_high and evidence.value > evidence.ref_high:
            text += f", {markdown(times_uln_text(evidence))}× the upper limit"
        if not evidence.interpretable:
            text += (", in a unit the service cannot convert: judged only by the lab's own range and flags"
                     if reference != NO_RANGE or evidence.interpretation else
                     ", **could not be interpreted**: a unit the service cannot convert, and no range or flag from "
                     "the lab")
        return f"{text}, {_day(evidence.effective)}"
    if isinstance(evidence, Age):
        return f"{label}age **{evidence.years} years** (born {evidence.birth_date.isoformat()})"
    if isinstance(evidence, Absence):
        analyte = markdown(running(analyte_name(evidence.analyte)))
        return f"{label}no {analyte} result {_absence_span(evidence)}"
    if isinstance(evidence, Pairing):
        # the note is the value set's own text (not patient data): shown as written
        return f"{label}{_medication(evidence.first)} with {_medication(evidence.second)}: {evidence.note}"
    if isinstance(evidence, Timing):
        return f"{label}{markdown(timing_text(evidence))}"
    if isinstance(evidence, MedicationUse):
        return f"{label}{_medication(evidence)}"
    since = f" since {_day(evidence.date)}" if evidence.date else ""
    return f"{label}**{markdown(evidence.display)}** ({evidence.source}, {markdown(evidence.status)}{since})"


def _medication(evidence: MedicationUse) -> str:
    """``**atorvastatin 40 MG Oral Tablet** (prescription, active since 2026-01-02)`` (Markdown)."""
    if evidence.kind == "draft":
        return f"**{markdown(evidence.name)}** (draft order in this session)"
    kind = "prescription" if evidence.kind == "request" else "reported use"
    since = f" since {_day(evidence.date)}" if evidence.date else ""
    return f"**{markdown(evidence.name)}** ({kind}, {markdown(evidence.status)}{since})"


def placeholders(template: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(template)]

