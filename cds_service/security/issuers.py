"""Trusted JWT issuers, built from the ``trusted_issuers`` configuration (and the sandbox issuer when opted in).

Each entry is a table::

    {iss = "https://ehr.example.org",
     jwks_url = "https://ehr.example.org/jwks.json",   # or jwks_file = "/etc/cds/ehr-jwks.json", or jwks = {...}
     jku_allowlist = ["https://ehr.example.org/jwks.json"],   # jku values a token may name (optional)
     fhir_servers = ["https://ehr.example.org/fhir/r4"],     # FHIR servers tokens of this issuer may use (optional)
     tenants = ["org-1"]}                                     # allowed tenant claims (optional)

Keys come from at most one of ``jwks_url`` / ``jwks_file`` / ``jwks``, or from an allowlisted ``jku`` when only
``jku_allowlist`` is given; ``cds_service.config.IssuerSettings`` checks each entry's shape. A token's ``jku``
must be on the allowlist (``jwks_url`` is implicitly on it). When the keys are registered out of band (file or
inline), an allowlisted ``jku`` is accepted but never fetched.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from ..config import ConfigError, IssuerSettings, Settings
from .jwks import JwksError, KeySource, RemoteJwks, StaticKeys

logger = logging.getLogger("cds_service.security")

SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


class UntrustedKeyLocation(Exception):
    """The token names a ``jku`` its issuer does not allow, or the issuer has no keys for a token without one."""


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    pinned_keys: StaticKeys | None  # keys registered out of band
    remote_keys: Mapping[str, RemoteJwks]  # by URL: jwks_url and every allowlisted jku
    default_url: str | None  # jwks_url, used for tokens without jku
    jku_allowlist: frozenset[str]
    fhir_servers: tuple[str, ...] | None
    tenants: frozenset[str] | None

    def key_source(self, jku: str | None) -> KeySource:
        """Where to look up the signing key of a token with this ``jku`` header (None when absent)."""
        if jku is not None and jku not in self.jku_allowlist:
            raise UntrustedKeyLocation("jku is not on the issuer's allowlist")
        if self.pinned_keys is not None:
            return self.pinned_keys
        url = jku or self.default_url
        if url is None:
            raise UntrustedKeyLocation("token has no jku and the issuer has no jwks_url")
        return self.remote_keys[url]


def load_issuers(settings: Settings) -> dict[str, TrustedIssuer]:
    """The trusted issuers by ``iss``; raises ConfigError naming the first unusable entry."""
    entries = list(settings.trusted_issuers)
    if settings.allow_sandbox_issuer:
        logger.warning(
            "trusting the public CDS Hooks sandbox issuer %s: its private key is public, anyone can mint its "
            "tokens; never enable allow_sandbox_issuer in production",
            SANDBOX_ISSUER,
        )
        entries.append(sandbox_issuer_entry())
    issuers: dict[str, TrustedIssuer] = {}
    for position, entry in enumerate(entries):
        issuer = _build(entry, settings, f"trusted_issuers[{position}] ({entry.iss})")
        if issuer.iss in issuers:
            raise ConfigError(f"trusted issuer {issuer.iss} is configured more than once")
        issuers[issuer.iss] = issuer
    return issuers


def sandbox_issuer_entry() -> IssuerSettings:
    """The public sandbox issuer, with the copy of its public JWKS shipped in this package."""
    document = json.loads(resources.files(__package__).joinpath("sandbox-jwks.json").read_text("utf-8"))
    return IssuerSettings(iss=SANDBOX_ISSUER, jwks=document, jku_allowlist=[SANDBOX_JKU])


def _build(entry: IssuerSettings, settings: Settings, where: str) -> TrustedIssuer:
    """The issuer of one entry (the settings model has checked its shape): its keys read or their URLs set up."""
    pinned = _pinned_keys(entry, where)
    allowed = frozenset(entry.jku_allowlist) | ({entry.jwks_url} if entry.jwks_url else set())
    remote: dict[str, RemoteJwks] = {}
    if pinned is None:
        remote = {
            url: RemoteJwks(
                url,
                timeout_seconds=settings.jwks_timeout_seconds,
                cache_seconds=settings.jwks_cache_seconds,
                min_refresh_seconds=settings.jwks_min_refresh_seconds,
            )
            for url in sorted(allowed)
        }
    return TrustedIssuer(
        iss=entry.iss,
        pinned_keys=pinned,
        remote_keys=remote,
        default_url=entry.jwks_url,
        jku_allowlist=allowed,
        fhir_servers=tuple(url.rstrip("/") for url in entry.fhir_servers) if entry.fhir_servers is not None else None,
        tenants=frozenset(entry.tenants) if entry.tenants is not None else None,
    )


def _pinned_keys(entry: IssuerSettings, where: str) -> StaticKeys | None:
    if entry.jwks_file is not None:
        try:
            document = json.loads(entry.jwks_file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read jwks_file {entry.jwks_file}: {exc}") from exc
    elif entry.jwks is not None:
        document = entry.jwks
    else:
        return None
    try:
        keys = StaticKeys(document)
    except JwksError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not keys:
        raise ConfigError(f"{where}: the JWKS holds no EC or RSA signature key with a kid")
    return keys
