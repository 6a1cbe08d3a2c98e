"""Whether this hook call may reach its fhirServer, and with which credentials.

The decision is made before any request is sent: a fhirServer that is not on the allowlist, that is not https
(plain http only for loopback servers in development), or that would be called without a token when open servers
are not allowed, never receives a request. The reason is logged; the access token never is.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..wire.errors import FHIR_SERVER_NOT_ALLOWED, RECORD_UNAVAILABLE, CdsError
from ..wire.hook_request import HookCall
from .settings import RecordSettings

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class FhirEndpoint:
    """A FHIR server this call may use: its base URL (no trailing slash) and the bearer token, if any."""

    base: str
    token: str | None = field(default=None, repr=False)

    def owns(self, url: str) -> bool:
        """True when ``url`` lies under this base (same scheme, host and port, and a path below the base's)."""
        base, target = normalize_base(self.base), normalize_base(url)
        return bool(base) and (target == base or target.startswith(base + "/"))

    def absolute(self, reference: str) -> str:
        """``reference`` (relative to the base, or absolute) as an absolute URL."""
        if is_absolute(reference):
            return reference
        return f"{self.base}/{reference.lstrip('/')}"


def is_absolute(url: str) -> bool:
    """True for ``scheme://...`` URLs (a relative reference may hold ``://`` in its query, as in code systems)."""
    return _ABSOLUTE.match(url) is not None


def normalize_base(url: str) -> str:
    """A comparable form of a URL's base: lower-case scheme and host, no default port, no query or trailing slash.

    "" for a URL urllib cannot read (a port out of range or not a number, an unbalanced IPv6 bracket): it names
    no base, so it is under none.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_for(call: HookCall, settings: RecordSettings) -> FhirEndpoint:
    """The endpoint this call may use, or ``CdsError`` (HTTP 412) saying why."""
    server = call.fhir_server
    if not server:
        raise CdsError(RECORD_UNAVAILABLE, "The request sent no fhirServer to fetch the missing data from.")
    parts = urlsplit(server)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.query or parts.fragment:
        raise CdsError(FHIR_SERVER_NOT_ALLOWED, "The fhirServer is not a plain http(s) base URL.")
    if parts.scheme == "http" and not (settings.fhir_allow_http_loopback and is_loopback(host)):
        raise CdsError(FHIR_SERVER_NOT_ALLOWED, "The fhirServer must use https.")
    if normalize_base(server) not in {normalize_base(entry) for entry in settings.allowlist}:
        raise CdsError(FHIR_SERVER_NOT_ALLOWED, "The fhirServer is not on this service's allowlist.")
    auth = call.fhir_authorization
    if auth is None:
        if not settings.fhir_allow_unauthenticated:
            raise CdsError(
                RECORD_UNAVAILABLE, "No fhirAuthorization was sent and open FHIR servers are not allowed."
            )
        return FhirEndpoint(base=server.rstrip("/"))
    if auth.token_type.lower() != "bearer":
        raise CdsError(RECORD_UNAVAILABLE, "fhirAuthorization.token_type must be Bearer.")
    return FhirEndpoint(base=server.rstrip("/"), token=auth.access_token)
