"""The record layer's configuration: the ``fhir_*`` and budget keys of ``cds_service.config``, as one frozen value."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from ..config import Settings


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """How the record layer may reach FHIR servers, and how long it may take.

    ``allowed_fhir_servers``, when set, replaces ``fhir_allowlist`` for one call: the security layer passes the
    FHIR servers configured for the JWT issuer that signed the request.
    """

    fhir_allowlist: tuple[str, ...]
    fhir_allow_unauthenticated: bool
    fhir_allow_http_loopback: bool
    fhir_connect_timeout: float
    fhir_read_timeout: float
    fhir_retries: int
    fhir_max_pages: int
    fhir_max_response_bytes: int
    hook_budget_seconds: float
    fhir_budget_margin_seconds: float
    allowed_fhir_servers: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordSettings:
        """The record layer's share of the service settings."""
        values = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "allowed_fhir_servers"}
        values["fhir_allowlist"] = tuple(values["fhir_allowlist"])
        return cls(**values)

    def for_issuer(self, fhir_servers: Iterable[str]) -> RecordSettings:
        """These settings with the allowlist replaced by one issuer's FHIR servers."""
        return replace(self, allowed_fhir_servers=tuple(fhir_servers))

    @property
    def allowlist(self) -> tuple[str, ...]:
        """The FHIR base URLs this call may reach."""
        return self.fhir_allowlist if self.allowed_fhir_servers is None else self.allowed_fhir_servers

    @property
    def fetch_budget_seconds(self) -> float:
        """The time FHIR fetching may take: the hook budget minus the margin kept for evaluation."""
        return max(self.hook_budget_seconds - self.fhir_budget_margin_seconds, 0.0)
