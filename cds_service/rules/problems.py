"""One card per problem, and on order hooks only the problems the order touches.

* A problem is a rule ``group``. A firing rule whose ``merges_with`` names other groups joins them into its
  problem for the call: a diuretic being ordered for a patient with low potassium is one problem with the low
  potassium it makes worse, not two cards about the same result.
* Within a problem the firings rank critical, warning, info; among equals a firing about the order being placed
  comes first, then rule order. The first makes the card, the others are merged into it (``cards.build_card``).
* On ``order-select`` and ``order-sign`` a problem is answered only when one of its firings is about the order
  (its evidence holds a draft order the clinician selected or is signing) or it is critical. The patient-level
  cards of patient-view are not repeated while a drug is chosen; a patient-level finding that the order makes
  worse appears once, inside the order's card.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..facts.model import MedicationUse
from .cards import Firing
from .criteria import Pairing
from .loader import ORDER_HOOKS
from .model import INDICATOR_RANK, binding_name


def about_the_order(firing: Firing) -> bool:
    """Whether the firing's evidence (exclusions aside) holds a draft order: a medication being ordered, or an
    interaction one of whose medications is being ordered. Drafts only match when selected or being signed."""
    for name, state in firing.states.items():
        if state is not True or name.startswith("exclude_"):
            continue
        for item in firing.matches[binding_name(name)].evidence:
            if isinstance(item, MedicationUse) and item.kind == "draft":
                return True
            if isinstance(item, Pairing) and "draft" in (item.first.kind, item.second.kind):
                return True
    return False


def problems(firings: Sequence[Firing], hook: str) -> list[list[Firing]]:
    """The firings as problems, each best first, ranked by their best firing (see the module docstring)."""
    ordering = {id(f) for f in firings if about_the_order(f)}

    def rank(firing: Firing) -> tuple[int, bool, int]:
        return INDICATOR_RANK[firing.indicator], id(firing) not in ordering, firing.rule.order

    problem_of = _joined_groups(firings)
    grouped: dict[str, list[Firing]] = {}
    for firing in sorted(firings, key=rank):
        grouped.setdefault(problem_of[firing.rule.group], []).append(firing)
    found = sorted(grouped.values(), key=lambda problem: rank(problem[0]))
    if hook in ORDER_HOOKS:
        found = [p for p in found if p[0].indicator == "critical" or any(id(f) in ordering for f in p)]
    return found


def _joined_groups(firings: Sequence[Firing]) -> dict[str, str]:
    """Each firing group's problem: groups joined by a firing rule's ``merges_with``, transitively."""
    parent = {f.rule.group: f.rule.group for f in firings}

    def root(group: str) -> str:
        while parent[group] != group:
            group = parent[group]
        return group

    for firing in firings:
        for other in firing.rule.merges_with:
            if other in parent:
                parent[root(other)] = root(firing.rule.group)
    return {group: root(group) for group in parent}
