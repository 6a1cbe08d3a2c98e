"""CDS Hooks 2.0.1 cards from fired rules: summary, Markdown detail with the evidence, source, links,
suggestions with FHIR R4 resources, coded override reasons. No null or empty element is ever emitted.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..facts.model import MedicationUse, PatientFacts
from .criteria import Evidence, Match
from .expression import Tri
from .model import Action, Criterion, Reference, Rule, Section, SuggestionTemplate, binding_name
from .templates import evidence_line, markdown, plain, render
from .uuids import random_uuid

SUMMARY_LIMIT = 139  # CDS Hooks: "fewer than 140 characters"


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule whose condition held: its block results, and the indicator and summary after escalation."""

    rule: Rule
    states: Mapping[str, Tri]  # criteria block name -> state
    matches: Mapping[str, Match]  # binding name (block without prefix) -> match
    indicator: str
    summary: str  # the summary template to render


def shown(states: Mapping[str, Tri], when: str | None, unless: str | None) -> bool:
    """A guarded element shows when its ``when`` block matched and its ``unless`` block surely did not."""
    return (when is None or states.get(when) is True) and (unless is None or states.get(unless) is False)


def summary_text(firing: Firing) -> str:
    text = render(firing.summary, firing.matches, plain)
    text = text[:1].upper() + text[1:]
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1].rstrip() + "…"


def build_card(primary: Firing, related: list[Firing], facts: PatientFacts, evidence: Sequence[str]) -> dict[str, Any]:
    """The card for one underlying problem: ``primary`` decides it, ``related`` firings add their findings;
    ``evidence`` is ``evidence_lines(primary)`` (the issued card keeps them too, for the repeat check)."""
    template = primary.rule.card
    card: dict[str, Any] = {
        "uuid": random_uuid(),
        "summary": summary_text(primary),
        "indicator": primary.indicator,
        "detail": _detail(primary, related, evidence),
        "source": {"label": template.source.label, "url": template.source.url},
    }
    suggestions = _suggestions(primary, facts, recommend=True)
    labels = {s["label"] for s in suggestions}
    done = {_effect(a) for s in suggestions for a in s["actions"]}
    for other in related:  # a related rule's suggestion joins unless the card already offers it or all it does
        for suggestion in _suggestions(other, facts, recommend=False):
            effects = {_effect(a) for a in suggestion["actions"]}
            if suggestion["label"] not in labels and not effects <= done:
                labels.add(suggestion["label"])
                done |= effects
                suggestions.append(suggestion)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = template.selection_behavior
    if template.override_reasons:
        card["overrideReasons"] = [
            {"code": c.code, "system": c.system, "display": c.display} for c in template.override_reasons
        ]
    links = _links([*template.links, *(f.rule.card.source for f in related)], exclude=template.source.url)
    if links:
        card["links"] = links
    return card


def _detail(primary: Firing, related: list[Firing], lines: Sequence[str]) -> str:
    parts = ["**Findings**", "\n".join(f"- {line}" for line in lines)] if lines else []
    parts += [_section(primary, s) for s in primary.rule.card.detail if shown(primary.states, s.when, s.unless)]
    if related:
        parts.append("**Also relevant**")
        parts.append("\n".join(f"- {markdown(summary_text(f))}" for f in related))
    return "\n\n".join(p.strip() for p in parts if p.strip())


def _section(firing: Firing, section: Section) -> str:
    return render(section.text, firing.matches, markdown)


def evidence_lines(firing: Firing) -> list[str]:
    """One line per piece of evidence (the first block that matched it labels it), exclusions left out.

    A line is shown once even when two pieces of evidence read the same: one Condition coded with a code that
    means both a cramp and a spasm (ICD-10-CM R25.2) is two findings, one per concept, but one entry in the chart.
    """
    lines: list[str] = []
    for criterion, item in _labelled_evidence(firing):
        line = evidence_line(criterion, item)
        if line not in lines:
            lines.append(line)
    return lines


def evidence_of(firing: Firing) -> list[Evidence]:
    """The evidence the card's Findings list shows, each piece once, in the order shown."""
    return [item for _criterion, item in _labelled_evidence(firing)]


def _labelled_evidence(firing: Firing) -> Iterator[tuple[Criterion, Evidence]]:
    """Each piece of evidence of the blocks that matched, with the first block that matched it (its label)."""
    seen: list[object] = []
    for name, criterion in firing.rule.criteria.items():
        if name.startswith("exclude_") or firing.states.get(name) is not True:
            continue
        for item in firing.matches[binding_name(name)].evidence:
            if item not in seen:
                seen.append(item)
                yield criterion, item


def _suggestions(firing: Firing, facts: PatientFacts, *, recommend: bool) -> list[dict[str, Any]]:
    result = []
    for template in firing.rule.card.suggestions:
        if not shown(firing.states, template.when, template.unless):
            continue
        suggestion = _suggestion(firing, template, facts, recommend=recommend)
        if suggestion is not None:
            result.append(suggestion)
    return result


def _suggestion(
    firing: Firing, template: SuggestionTemplate, facts: PatientFacts, *, recommend: bool
) -> dict[str, Any] | None:
    actions = [a for action in template.actions for a in _actions(action, facts)]
    if not actions:
        return None
    suggestion: dict[str, Any] = {
        "label": render(template.label, firing.matches, plain),
        "uuid": random_uuid(),
        "actions": actions,
    }
    if recommend and template.recommended:
        suggestion["isRecommended"] = True
    return suggestion


def _actions(action: Action, facts: PatientFacts) -> list[dict[str, Any]]:
    if action.kind == "order" and action.coding is not None:
        coding = action.coding
        return [
            {
                "type": "create",
                "description": f"Order {coding.display}",
                "resource": service_request(facts.patient_id, coding.system, coding.code, coding.display),
            }
        ]
    return [
        {"type": "delete", "description": f"Remove the draft order for {plain(m.name)}", "resourceId": m.reference}
        for m in _selected_drafts(facts, action.classes)
    ]


def _effect(action: dict[str, Any]) -> tuple[str, ...]:
    """What an action does, whatever its wording: the test it orders, or the draft order it removes."""
    if action["type"] == "create":
        return "create", *(f"{c['system']}|{c['code']}" for c in action["resource"]["code"]["coding"])
    return action["type"], action["resourceId"]


def _selected_drafts(facts: PatientFacts, classes: frozenset[str]) -> list[MedicationUse]:
    return [m for m in facts.medications_in(classes) if m.kind == "draft" and m.selected and "/" in m.reference]


def service_request(patient_id: str, system: str, code: str, display: str) -> dict[str, Any]:
    """A draft FHIR R4 ServiceRequest (intent order) for one laboratory test."""
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def _links(references: list[Reference], exclude: str) -> list[dict[str, str]]:
    seen = {exclude}
    links = []
    for reference in references:
        if reference.url not in seen:
            seen.add(reference.url)
            links.append({"label": reference.label, "url": reference.url, "type": "absolute"})
    return links
