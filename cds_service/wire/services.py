"""The CDS services this product offers: one per hook, each with its own id, declared as data.

The public sandbox keys services by id, so services that share an id overwrite each other there; every hook
therefore gets a distinct id. Discovery lists them sorted by id, so ``GET /cds-services`` is byte-stable.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .hook_request import ENCOUNTER_START, ORDER_SELECT, ORDER_SIGN, PATIENT_VIEW

_COMMON = (
    "Flags treatable causes of documented muscle cramps or spasms: statin-associated muscle symptoms graded by "
    "CK, statin drug interactions, low potassium, magnesium, sodium or corrected calcium (on diuretics, "
    "beta-2 agonists, theophylline or corticosteroids, or without a culprit drug), thyroid, vitamin and kidney "
    "causes, missing monitoring labs, and red flags that need urgent care. Silent unless cramps or spasms are "
    "documented."
)

_USAGE = (
    "Send the prefetch keys or a fhirServer the service may read (with fhirAuthorization, or an open server "
    "allowed by configuration). Reads FHIR R4 only: resources of types R4 does not have (such as DSTU2 "
    "MedicationOrder) are not read, and the data they came in counts as incomplete. Labs are matched by LOINC "
    "(Blood and Serum/Plasma codes), medications by RxNorm ingredient, symptoms and conditions by SNOMED CT and "
    "ICD-10-CM."
)


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]

    def descriptor(self) -> dict[str, Any]:
        """The discovery entry for this service."""
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": _USAGE,
        }


_DECLARED: tuple[tuple[str, str, str, str], ...] = (
    (
        "muscle-cramps-patient-view",
        PATIENT_VIEW,
        "Muscle cramps: underlying causes (chart opened)",
        "When a patient's chart is opened. " + _COMMON,
    ),
    (
        "muscle-cramps-encounter-start",
        ENCOUNTER_START,
        "Muscle cramps: underlying causes (encounter start)",
        "When an encounter starts. " + _COMMON,
    ),
    (
        "muscle-cramps-order-select",
        ORDER_SELECT,
        "Muscle cramps: statin or diuretic being ordered",
        "When a medication is selected: a draft statin or diuretic order for a patient with cramps and a "
        "relevant abnormal lab gets a card about that draft. " + _COMMON,
    ),
    (
        "muscle-cramps-order-sign",
        ORDER_SIGN,
        "Muscle cramps: statin or diuretic being signed",
        "When orders are signed: a statin or diuretic order for a patient with cramps and a relevant abnormal "
        "lab gets a card about that order. " + _COMMON,
    ),
)


class ServiceRegistry:
    """The services by id, all sharing the prefetch templates the rules need."""

    def __init__(self, prefetch: Mapping[str, str]):
        services = [Service(sid, hook, title, text, prefetch) for sid, hook, title, text in _DECLARED]
        self._by_id = {s.id: s for s in sorted(services, key=lambda s: s.id)}

    def get(self, service_id: str) -> Service | None:
        return self._by_id.get(service_id)

    def for_hook(self, hook: str) -> Service | None:
        return next((s for s in self._by_id.values() if s.hook == hook), None)

    def discovery(self) -> dict[str, Any]:
        return {"services": [s.descriptor() for s in self._by_id.values()]}
