"""The patient record as the record layer hands it to the facts layer: raw FHIR JSON, grouped by type.

Nothing here parses clinical meaning; it only says what was obtained, from where, and whether it is whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Resource = dict[str, Any]


@dataclass(slots=True)
class PatientRecord:
    """Every FHIR resource obtained for one hook call, whether prefetched or fetched from the FHIR server.

    ``resources`` maps a resourceType (``Observation``, ``Condition``, ``MedicationRequest``,
    ``MedicationStatement``, ``Medication``, ``Patient``, ...) to the resources of that type, de-duplicated by id.
    ``draft_orders`` holds the request resources of the order hooks' ``context.draftOrders`` (never mixed into
    ``resources``), and ``selections`` the ``Type/id`` references of ``context.selections``.
    ``incomplete`` names the prefetch keys whose data could not be obtained in full (a page cap, the time budget,
    a server error): rules that rely on the absence of data must not fire on them. ``sources`` says where each
    prefetch key's data came from: ``prefetch``, ``server``, or ``null`` (the EHR said there is none).
    ``unread`` counts, by where they came (``draftOrders`` or a prefetch key) and type, the resources of types
    FHIR R4 does not have (``record/versions.py``); they are not read, and where they came is ``incomplete``.
    """

    patient_id: str
    resources: dict[str, list[Resource]] = field(default_factory=dict)
    draft_orders: list[Resource] = field(default_factory=list)
    selections: frozenset[str] = frozenset()
    incomplete: frozenset[str] = frozenset()
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    unread: dict[str, dict[str, int]] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> list[Resource]:
        """The resources of one type (an empty list when none were obtained)."""
        return self.resources.get(resource_type, [])
