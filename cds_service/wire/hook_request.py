"""What each hook carries: the validated CDS Hooks request as one typed value (no Flask here).

The envelope, including each hook's required context fields, has already passed the request JSON Schema
(``schemas/request.schema.json``) when ``HookCall.from_request`` runs. This module is lenient with the FHIR
inside ``draftOrders``: a Bundle without ``type``, an entry without a resource, or a MedicationRequest with no
medication yet are all accepted.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..server.logs import loggable_hook_instance
from .errors import INVALID_REQUEST, CdsError

PATIENT_VIEW = "patient-view"
ORDER_SELECT = "order-select"
ORDER_SIGN = "order-sign"
ENCOUNTER_START = "encounter-start"
HOOKS: tuple[str, ...] = (PATIENT_VIEW, ORDER_SELECT, ORDER_SIGN, ENCOUNTER_START)

@dataclass(frozen=True, slots=True)
class FhirAuthorization:
    """The EHR's access token for its FHIR server. Transient: never logged, never stored."""

    access_token: str
    token_type: str
    scope: str
    subject: str
    expires_in: int | None = None
    patient: str | None = None

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"FhirAuthorization(token_type={self.token_type!r}, scope={self.scope!r}, access_token=<redacted>)"


@dataclass(frozen=True, slots=True)
class PageDates:
    """The dates of a prefetched Bundle's entries as sent. ``newest_first``: every entry holds an Observation with
    a day-precise ``effectiveDateTime`` and no entry names a later day than the one before it (an empty page is
    not); ``oldest`` is then the earliest day (``YYYY-MM-DD``) on the page, else None."""

    newest_first: bool
    oldest: str | None


@dataclass(frozen=True, slots=True)
class HookCall:
    """One CDS Hooks service request, after envelope validation."""

    service_id: str
    hook: str
    hook_instance: str
    patient_id: str
    user_id: str
    context: Mapping[str, Any]
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = field(default=None, repr=False)
    encounter_id: str | None = None
    prefetch: Mapping[str, Any] = field(default_factory=dict)  # absent keys are absent; None means "no data"
    draft_orders: tuple[dict[str, Any], ...] = ()
    selections: frozenset[str] = frozenset()

    @property
    def log_id(self) -> str:
        """The hookInstance as log lines may name this call (see ``loggable_hook_instance``)."""
        return loggable_hook_instance(self.hook_instance)

    @classmethod
    def from_request(cls, service_id: str, body: Mapping[str, Any]) -> HookCall:
        hook = body["hook"]
        context = body["context"]
        draft_orders, selections = _orders(hook, context)
        return cls(
            service_id=service_id,
            hook=hook,
            hook_instance=body["hookInstance"],
            patient_id=context["patientId"],
            user_id=context["userId"],
            encounter_id=context.get("encounterId"),
            context=context,
            fhir_server=_fhir_server(body.get("fhirServer")),
            fhir_authorization=_authorization(body.get("fhirAuthorization")),
            prefetch=body.get("prefetch") or {},
            draft_orders=draft_orders,
            selections=selections,
        )


def _fhir_server(url: str | None) -> str | None:
    """The fhirServer base without a trailing slash; 400 when urllib cannot read it (a bad port or IPv6 bracket)."""
    if not url:
        return None
    try:
        urlsplit(url).port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise CdsError(INVALID_REQUEST, "fhirServer is not a valid URL (its port cannot be read).") from None
    return url.rstrip("/") or None


def _authorization(auth: Mapping[str, Any] | None) -> FhirAuthorization | None:
    if not auth:
        return None
    return FhirAuthorization(
        access_token=auth["access_token"],
        token_type=auth["token_type"],
        scope=auth.get("scope", ""),
        subject=auth.get("subject", ""),
        expires_in=auth.get("expires_in"),
        patient=auth.get("patient"),
    )


def _orders(hook: str, context: Mapping[str, Any]) -> tuple[tuple[dict[str, Any], ...], frozenset[str]]:
    """The draft order resources and the selected ``Type/id`` references, read leniently.

    The request schema has already required a Bundle object for draftOrders and an array of strings for
    selections; only the entries inside are read leniently here.
    """
    if hook not in (ORDER_SELECT, ORDER_SIGN):
        return (), frozenset()
    entries = context["draftOrders"].get("entry") or []
    if not isinstance(entries, list):
        entries = [entries]
    resources = tuple(
        e["resource"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("resource"), dict)
    )
    if hook == ORDER_SIGN:
        selected = {f"{r.get('resourceType')}/{r.get('id')}" for r in resources}
    else:
        selected = set(context["selections"])
    return resources, frozenset(selected)
