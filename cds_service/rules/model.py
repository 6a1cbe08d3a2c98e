"""A loaded rule as typed data: criteria, the condition over them, and the card template.

Everything here is immutable and built once by the loader; the engine only reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, TypeAlias

from .expression import Expression

Indicator = Literal["info", "warning", "critical"]
CRAMP_CONCEPTS = frozenset({"cramp", "spasm"})  # the symptoms this service is about; nothing fires without one
INDICATOR_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
PREFIXES: tuple[str, ...] = ("require_", "exclude_", "note_")


@dataclass(frozen=True, slots=True)
class Reference:
    id: str
    label: str
    url: str
    citation: str = ""


@dataclass(frozen=True, slots=True)
class FindingCriterion:
    """A current symptom, sign or diagnosis of one of ``concepts``."""

    concepts: frozenset[str]
    within: timedelta | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class MedicationCriterion:
    """A medication of one of ``classes``: taken now (``current``), being ordered (``ordering``) or either.

    ``as_needed`` True matches only medicines whose recorded dosage is as needed (PRN); False matches every other
    (a regular dosage, or none recorded); None ignores the dosage. ``taken_for`` matches only one whose start
    (authoredOn, effective start) is at least that long ago."""

    classes: frozenset[str]
    use: Literal["current", "ordering", "any"] = "current"
    label: str = ""
    as_needed: bool | None = None
    taken_for: timedelta | None = None


@dataclass(frozen=True, slots=True)
class LabCriterion:
    """The newest result of ``analyte`` within ``within`` passes every comparison, or (``missing``) none exists.

    ``after_onset``: only results drawn at or after the documented onset of the cramps count (a CK must reflect
    the current episode, clinical-reference.md §5).
    """

    analyte: str
    within: timedelta
    within_text: str  # the look-back as the rule wrote it, for card text
    comparisons: tuple[tuple[str, float], ...] = ()  # (below|above|at_least|at_most|above_uln, number)
    range_checks: tuple[str, ...] = ()  # above_range / below_range
    unit: str | None = None
    missing: bool = False
    label: str = ""
    basis: str = ""  # the id of the reference that supports the comparisons' numbers
    after_onset: bool = False


@dataclass(frozen=True, slots=True)
class InteractionCriterion:
    """Two different medications taken together whose ingredients an interaction set pairs (``first`` with
    ``second``): a combination product is never paired with itself."""

    sets: frozenset[str]
    pairs: tuple[tuple[str, str, str], ...]  # (first ingredient, second ingredient, note), from the value sets
    use: Literal["current", "ordering", "any"] = "current"
    label: str = ""


@dataclass(frozen=True, slots=True)
class Band:
    """Points for a time span shorter than ``under`` (None: any longer span)."""

    under: timedelta | None
    under_text: str
    points: int


@dataclass(frozen=True, slots=True)
class TimingCriterion:
    """The time from an event of a medication course to an event of a finding, scored by ``bands``.

    ``since``: ``start`` (the start of the current course), ``stop`` (the end of a stopped course) or ``restart``
    (the start of a course that follows a stopped one). ``until``: ``onset`` or ``resolution`` of the finding.
    """

    classes: frozenset[str]
    since: Literal["start", "stop", "restart"]
    concepts: frozenset[str]
    until: Literal["onset", "resolution"]
    bands: tuple[Band, ...]
    label: str = ""
    basis: str = ""


@dataclass(frozen=True, slots=True)
class AgeCriterion:
    """The patient's age in whole years at the evaluation time is at least ``at_least`` and below ``below``."""

    at_least: int | None = None
    below: int | None = None
    label: str = ""
    basis: str = ""  # the id of the reference that supports the age limits


@dataclass(frozen=True, slots=True)
class CompositeCriterion:
    op: Literal["any", "all", "not"]
    children: tuple[Criterion, ...]
    label: str = ""


Criterion: TypeAlias = (
    FindingCriterion | MedicationCriterion | LabCriterion | AgeCriterion | InteractionCriterion | TimingCriterion
    | CompositeCriterion
)


@dataclass(frozen=True, slots=True)
class Section:
    """One paragraph of the card detail, shown only when its guard holds."""

    text: str
    when: str | None = None
    unless: str | None = None


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class Action:
    kind: Literal["order", "remove_draft"]
    coding: Coding | None = None  # order: the test to order
    classes: frozenset[str] = frozenset()  # remove_draft: the medication classes whose drafts are removed


@dataclass(frozen=True, slots=True)
class SuggestionTemplate:
    label: str
    actions: tuple[Action, ...]
    recommended: bool = False
    when: str | None = None
    unless: str | None = None


@dataclass(frozen=True, slots=True)
class Escalation:
    when: str
    indicator: Indicator
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class CardTemplate:
    indicator: Indicator
    summary: str
    detail: tuple[Section, ...]
    source: Reference
    links: tuple[Reference, ...]
    override_reasons: tuple[Coding, ...]
    escalate: tuple[Escalation, ...] = ()
    suggestions: tuple[SuggestionTemplate, ...] = ()
    selection_behavior: Literal["at-most-one", "any"] = "any"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    status: str
    version: str
    description: str
    references: tuple[Reference, ...]
    evidence: str
    hooks: frozenset[str]
    group: str
    criteria: dict[str, Criterion]  # in file order
    condition: Expression
    condition_text: str
    card: CardTemplate
    limitations: str
    path: Path
    order: int  # position in the rule set; breaks ties between cards of the same indicator
    merges_with: tuple[str, ...] = ()  # other groups whose firings join this rule's card when it fires


def binding_name(block: str) -> str:
    """The template name of a criteria block: ``require_low_potassium`` -> ``low_potassium``."""
    for prefix in PREFIXES:
        if block.startswith(prefix):
            return block[len(prefix):]
    return block
