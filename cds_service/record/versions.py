"""FHIR resources of earlier versions, which the service does not read: it reads FHIR R4 only.

An EHR on a DSTU2 server (the CDS Hooks sandbox's default) sends its draft medication orders as
``MedicationOrder``, which R4 replaced by ``MedicationRequest``; no rule reads such a resource. The record layer
counts what it holds of the resource types below, by where it came (``draftOrders`` or a prefetch key), so that
the request's log line and a metric say what was not read instead of the answer silently holding no card.

The types are those of DSTU2 (1.0.2) and STU3 (3.0.2) that R4 (4.0.1) does not have; tests/test_fhir_versions.py
checks them against the R4 and STU3 definitions. Resource types shared by the versions cannot be told apart by
their name and are read as R4.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .model import Resource

NOT_IN_R4: frozenset[str] = frozenset({
    # DSTU2 only
    "Conformance",
    "DeviceUseRequest",
    "DiagnosticOrder",
    "ImagingObjectSelection",
    "MedicationOrder",
    "Order",
    "OrderResponse",
    # DSTU2 and STU3
    "BodySite",
    "DataElement",
    "DeviceComponent",
    "EligibilityRequest",
    "EligibilityResponse",
    "ProcedureRequest",
    "ProcessRequest",
    "ProcessResponse",
    "ReferralRequest",
    # STU3 only
    "ExpansionProfile",
    "ImagingManifest",
    "Sequence",
    "ServiceDefinition",
})


def not_in_r4(resources: Iterable[Resource]) -> dict[str, int]:
    """How many of ``resources`` there are of each type that FHIR R4 does not have."""
    counts = Counter(kind for r in resources if isinstance(kind := r.get("resourceType"), str) and kind in NOT_IN_R4)
    return dict(sorted(counts.items()))


def described(counts: dict[str, int]) -> str:
    """``counts`` as a reason: which types, how many of each."""
    listed = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    return f"it holds resources FHIR R4 does not have, which were not read ({listed})"
