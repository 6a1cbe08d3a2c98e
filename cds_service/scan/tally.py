"""The scan's numbers: what each partition of patients yielded, added up into ``summary.json``."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TOP_EVIDENCE = 10  # evidence values listed per rule


@dataclass(slots=True)
class Tally:
    """Counts over some patients; two tallies add up (``merge``) into the counts over both."""

    patients: int = 0
    without_patient_resource: int = 0  # evaluated with ``"patient": null`` (resources named a patient not exported)
    cards: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, indicator) -> cards
    cards_per_patient: Counter[int] = field(default_factory=Counter)  # cards -> patients
    evidence: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, evidence value) -> cards
    incomplete: Counter[str] = field(default_factory=Counter)  # "key: why" -> patients whose record lacks it
    not_evaluated: Counter[str] = field(default_factory=Counter)  # why -> patients

    def merge(self, other: Tally) -> None:
        self.patients += other.patients
        self.without_patient_resource += other.without_patient_resource
        self.cards.update(other.cards)
        self.cards_per_patient.update(other.cards_per_patient)
        self.evidence.update(other.evidence)
        self.incomplete.update(other.incomplete)
        self.not_evaluated.update(other.not_evaluated)


def rule_summary(tally: Tally, rules: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Per rule (id, title, deployment), in rule order: patients scanned and with its card, cards per 1,000
    patients, cards by indicator and the most frequent evidence values."""
    scanned = tally.patients - sum(tally.not_evaluated.values())
    result = []
    for rule_id, title, deployment in rules:
        by_indicator = {ind: n for (rid, ind), n in sorted(tally.cards.items()) if rid == rule_id}
        cards = sum(by_indicator.values())
        top = Counter({value: n for (rid, value), n in tally.evidence.items() if rid == rule_id})
        result.append({
            "rule": rule_id,
            "title": title,
            "deployment": deployment,
            "patients_scanned": scanned,
            "patients_with_card": cards,  # a rule makes at most one card per patient
            "cards_per_1000_patients": round(1000 * cards / scanned, 2) if scanned else 0.0,
            "by_indicator": by_indicator,
            "top_evidence": [{"value": value, "cards": n} for value, n in _top(top)],
        })
    return result


def _top(counter: Counter[str]) -> list[tuple[str, int]]:
    """The most frequent values, ties in alphabetical order (the same for every run over the same data)."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP_EVIDENCE]
