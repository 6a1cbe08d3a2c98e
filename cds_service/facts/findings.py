"""Conditions and symptom Observations → current ``Finding``s, one per concept a code means.

A Condition counts when its ``clinicalStatus`` is active, recurrence or relapse (a missing status counts as
active unless the Condition has an abatement), and its ``verificationStatus`` is not refuted or
entered-in-error. An inactive, remission or resolved Condition counts only while it abated within
``condition_grace`` (30 days, a chosen default, not a guideline figure). ``condition_history`` keeps every
Condition whatever its clinical status, with its onset and abatement, for timing criteria.

A Condition's ``category`` says what kind of statement it is (FHIR R4 condition-category): a
``problem-list-item`` is managed over time and counts while its status says so; an ``encounter-diagnosis`` is
"a point in time diagnosis ... in context of an encounter", a statement about one visit that many EHR feeds
never close. An encounter diagnosis (not also on the problem list) therefore counts only within
``encounter_diagnosis_window`` of its newest date (recordedDate or onset): 30 days, the span in which
clinical-reference.md §5 counts the labs of a cramp work-up as current (K, Na, Ca, Mg, creatinine ≤ 30 days), so
a visit's diagnosis is no older than the labs it is read with. An undated one is not used. A Condition with
neither category is judged by its status alone.

An Observation documents a symptom when its code is a symptom code, or a symptom-panel code whose
``valueCodeableConcept`` is one (``symptom-observations.json``), unless it says the symptom is absent
(``valueBoolean`` false, a negation string or code, a NEG/ND interpretation), or its status is
``entered-in-error`` or ``cancelled``. It is current within ``observation_window`` (90 days, a chosen default),
dated by effectiveDateTime, effectivePeriod (end, else start), effectiveInstant or issued; an undated one is not
used.

A Condition or Observation with no symptom coding documents cramp or spasm in free text (``symptom_text``):
``Condition.code.text``, ``Observation.code.text``, ``valueString`` or ``valueCodeableConcept.text``, with a
negation guard. Its finding has no coding (an empty ``Coding``) and shows the text.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .fhir import (
    code_of,
    codings,
    concept_text,
    effective_time,
    moment,
    period_end,
    period_start,
    reference_name,
    status_of,
)
from .model import Coding, Finding
from .terminology import ICD10CM, SNOMED, Terminology

ACTIVE = frozenset({"active", "recurrence", "relapse"})
PROBLEM_LIST_ITEM, ENCOUNTER_DIAGNOSIS = "problem-list-item", "encounter-diagnosis"
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
EXCLUDED_OBSERVATION = frozenset({"entered-in-error", "cancelled"})
ABATEMENT = ("abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString")
FINDING_SYSTEMS = (SNOMED, ICD10CM)


class FindingReader:
    """Reads Conditions and symptom Observations into current findings at ``now``."""

    def __init__(
        self, terminology: Terminology, now: datetime, condition_grace: timedelta, observation_window: timedelta,
        encounter_diagnosis_window: timedelta, warnings: list[str],
    ) -> None:
        self._terminology = terminology
        self._now = now
        self._condition_grace = condition_grace
        self._encounter_diagnosis_window = encounter_diagnosis_window
        self._observation_window = observation_window
        self._warnings = warnings
        self._symptoms = frozenset(n for n, c in terminology.concepts.items() if c.kind == "symptom")

    # ------------------------------------------------------------------ conditions
    def condition(self, resource: Mapping[str, Any]) -> list[Finding] | None:
        """The Condition's findings when it is current (see the module docstring), else None."""
        found = self.condition_history(resource)
        return found if found and self.is_current(found) else None

    def is_current(self, found: Sequence[Finding]) -> bool:
        """Whether one Condition's findings (they share its status, dates and category) are current at ``now``."""
        first = found[0]
        if first.category == ENCOUNTER_DIAGNOSIS and not self._visit_is_recent(first):
            return False
        if first.status in ACTIVE:
            return True
        return first.abated is not None and first.abated >= self._now - self._condition_grace

    def _visit_is_recent(self, finding: Finding) -> bool:
        """An encounter diagnosis speaks for its visit: its newest date lies within the encounter window."""
        dates = [d for d in (finding.recorded, finding.onset) if d is not None]
        if not dates:
            self._warnings.append(f"{finding.resource}: encounter diagnosis without a date, not used")
            return False
        return max(dates) >= self._now - self._encounter_diagnosis_window

    def condition_history(self, resource: Mapping[str, Any]) -> list[Finding] | None:
        """The Condition's findings whatever its clinical status (never refuted or entered in error), with its
        onset and abatement dates."""
        concepts = self._concepts(resource.get("code")) or self._text_concepts(concept_text(resource.get("code")))
        if not concepts or code_of(resource.get("verificationStatus")) in EXCLUDED_VERIFICATION:
            return None
        status = code_of(resource.get("clinicalStatus"))
        if status is None:
            status = "resolved" if any(key in resource for key in ABATEMENT) else "active"
        abated = moment(resource.get("abatementDateTime")) or period_end(resource.get("abatementPeriod"))
        onset = moment(resource.get("onsetDateTime")) or period_start(resource.get("onsetPeriod"))
        recorded = moment(resource.get("recordedDate"))
        name = reference_name(resource)
        text = concept_text(resource.get("code"))
        category = _category(resource.get("category"))
        return [
            Finding(concept, self._shown(system, code, display, text), "Condition", Coding(system, code, display),
                    status, onset, recorded, name, abated, category)
            for system, code, display, concept in concepts
        ]

    # ------------------------------------------------------------------ observations
    def is_symptom_observation(self, resource: Mapping[str, Any]) -> bool:
        """Cheap pre-check: the Observation's code is a symptom code or a symptom-panel code."""
        for system, code, _ in codings(resource.get("code")):
            if self._terminology.is_symptom_panel(system, code) or self._means_symptom(system, code):
                return True
        return any(self._terminology.symptom_text.concepts(text) for text in _texts(resource))

    def observation(self, resource: Mapping[str, Any]) -> list[Finding] | None:
        status = status_of(resource)
        if status in EXCLUDED_OBSERVATION:
            return None
        code = resource.get("code")
        panel = any(self._terminology.is_symptom_panel(s, c) for s, c, _ in codings(code))
        source = resource.get("valueCodeableConcept") if panel else code
        found = [(s, c, d, concept) for s, c, d, concept in self._concepts(source) if concept in self._symptoms]
        for text in () if found else _texts(resource):
            found = [f for f in self._text_concepts(text) if f[3] in self._symptoms]
            if found:
                source = {"text": text}
                break
        if not found or self._negated(resource, panel):
            return None
        effective = effective_time(resource)
        if effective is None:
            self._warnings.append(f"{reference_name(resource)}: symptom without effective time, not used")
            return None
        if effective < self._now - self._observation_window:
            return None
        recorded = moment(resource.get("issued"))
        text = concept_text(source)
        return [
            Finding(concept, self._shown(system, code, display, text), "Observation", Coding(system, code, display),
                    status if isinstance(status, str) else "unknown", effective, recorded, reference_name(resource))
            for system, code, display, concept in found
        ]

    def _negated(self, resource: Mapping[str, Any], panel: bool) -> bool:
        terminology = self._terminology
        if resource.get("valueBoolean") is False:
            return True
        text = resource.get("valueString")
        if isinstance(text, str) and terminology.is_negation_string(text):
            return True
        if not panel and any(terminology.is_negation_value(s, c)
                             for s, c, _ in codings(resource.get("valueCodeableConcept"))):
            return True
        return any(terminology.is_negation_interpretation(s, c) for s, c, _ in codings(resource.get("interpretation")))

    # ------------------------------------------------------------------ shared
    def _concepts(self, concept: Any) -> list[tuple[str, str, str, str]]:
        """(system, code, display, concept) for each concept the codings mean, each concept once."""
        found: list[tuple[str, str, str, str]] = []
        for system, code, display in codings(concept):
            if system in FINDING_SYSTEMS or system in self._terminology.site_systems:
                for name in self._terminology.concepts_for(system, code):
                    if all(name != known[3] for known in found):
                        found.append((system, code, display, name))
        return found

    def _text_concepts(self, text: str) -> list[tuple[str, str, str, str]]:
        """("", "", text, concept) for each concept free text documents (``SymptomText``): no coding to show."""
        return [("", "", text, concept) for concept in self._terminology.symptom_text.concepts(text)] if text else []

    def _shown(self, system: str, code: str, display: str, text: str) -> str:
        """What a card calls the finding: the concept's text, else its first coding's display (``text``: one name
        for a problem coded in several systems, as Epic and Oracle Health code SNOMED CT beside ICD-10-CM), the
        coding's own display, the value set's display for the code, or at last the bare code."""
        return text or display or self._terminology.display_of(system, code) or code

    def _means_symptom(self, system: str, code: str) -> bool:
        if system not in FINDING_SYSTEMS and system not in self._terminology.site_systems:
            return False
        return any(c in self._symptoms for c in self._terminology.concepts_for(system, code))


def _texts(observation: Mapping[str, Any]) -> list[str]:
    """An Observation's free text that may document a symptom: code.text, valueString, valueCodeableConcept.text."""
    texts = [concept_text(observation.get("code")), observation.get("valueString"),
             concept_text(observation.get("valueCodeableConcept"))]
    return [text for text in texts if isinstance(text, str) and text]


def _category(categories: Any) -> str:
    """``problem-list-item`` when the Condition is on the problem list (whatever else it is), else
    ``encounter-diagnosis`` when it is one, else "" (matched by code: EHRs send the code with varying systems)."""
    codes = {code for _, code, _ in codings(categories)}
    for kind in (PROBLEM_LIST_ITEM, ENCOUNTER_DIAGNOSIS):
        if kind in codes:
            return kind
    return ""
