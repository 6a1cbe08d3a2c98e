"""Trusted JWT issuers, built from the ``trusted_issuers`` configuration (and the sandbox issuer when opted in).

Each entry is a table::

    {iss = "https://ehr.example.org",
     jwks_url = "https://ehr.example.org/jwks.json",   # or jwks_file = "/etc/cds/ehr-jwks.json", or jwks = {...}
     jku_allowlist = ["https://ehr.example.org/jwks.json"],   # jku values a token may name (optional)
     fhir_servers = ["https://ehr.example.org/fhir/r4"],     # FHIR servers tokens of this issuer may use (optional)
     tenants = ["org-1"]}                                     # allowed tenant claims (optional)

Keys come from at most one of ``jwks_url`` / ``jwks_file`` / ``jwks``, or from an allowlisted ``jku`` when only
``jku_allowlist`` is given. A token's ``jku`` must be on the allowlist (``jwks_url`` is implicitly on it). When
the keys are registered out of band (file or inline), an allowlisted ``jku`` is accepted but never fetched.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .jwks import JwksError, KeySource, RemoteJwks, StaticKeys

logger = logging.getLogger("cds_service.security")

SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
_ENTRY_KEYS = frozenset({"iss", "jwks_url", "jwks_file", "jwks", "jku_allowlist", "fhir_servers", "tenants"})


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


def load_issuers(config: Mapping[str, Any]) -> dict[str, TrustedIssuer]:
    """The trusted issuers by ``iss``; raises ConfigError naming the first unusable entry."""
    entries = list(config.get("trusted_issuers") or [])
    if config.get("allow_sandbox_issuer"):
        logger.warning(
            "trusting the public CDS Hooks sandbox issuer %s: its private key is public, anyone can mint its "
            "tokens; never enable allow_sandbox_issuer in production",
            SANDBOX_ISSUER,
        )
        entries.append(sandbox_issuer_entry())
    issuers: dict[str, TrustedIssuer] = {}
    for position, entry in enumerate(entries):
        issuer = _build(entry, config, f"trusted_issuers[{position}]")
        if issuer.iss in issuers:
            raise ConfigError(f"trusted issuer {issuer.iss} is configured more than once")
        issuers[issuer.iss] = issuer
    return issuers


def sandbox_issuer_entry() -> dict[str, Any]:
    """The public sandbox issuer, with the copy of its public JWKS shipped in this package."""
    document = json.loads(resources.files(__package__).joinpath("sandbox-jwks.json").read_text("utf-8"))
    return {"iss": SANDBOX_ISSUER, "jwks": document, "jku_allowlist": [SANDBOX_JKU]}


def _build(entry: object, config: Mapping[str, Any], where: str) -> TrustedIssuer:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss:
        raise ConfigError(f"{where}: iss is required")
    where = f"{where} ({iss})"
    jku_allowlist = _strings(entry, "jku_allowlist", where) or ()
    sources = [name for name in ("jwks_url", "jwks_file", "jwks") if entry.get(name)]
    if len(sources) > 1:
        raise ConfigError(f"{where}: give only one of jwks_url, jwks_file, jwks")
    if not sources and not jku_allowlist:
        raise ConfigError(f"{where}: needs jwks_url, jwks_file, jwks or a jku_allowlist")
    pinned = _pinned_keys(entry, where)
    default_url = entry.get("jwks_url") or None
    if default_url is not None and not isinstance(default_url, str):
        raise ConfigError(f"{where}: jwks_url must be a string")
    allowed = frozenset(jku_allowlist) | ({default_url} if default_url else set())
    remote: dict[str, RemoteJwks] = {}
    if pinned is None:
        remote = {
            url: RemoteJwks(
                url,
                timeout_seconds=float(config["jwks_timeout_seconds"]),
                cache_seconds=float(config["jwks_cache_seconds"]),
                min_refresh_seconds=float(config["jwks_min_refresh_seconds"]),
            )
            for url in sorted(allowed)
        }
    fhir_servers = _strings(entry, "fhir_servers", where)
    tenants = _strings(entry, "tenants", where)
    return TrustedIssuer(
        iss=iss,
        pinned_keys=pinned,
        remote_keys=remote,
        default_url=default_url,
        jku_allowlist=allowed,
        fhir_servers=tuple(url.rstrip("/") for url in fhir_servers) if fhir_servers is not None else None,
        tenants=frozenset(tenants) if tenants is not None else None,
    )


def _pinned_keys(entry: Mapping[str, Any], where: str) -> StaticKeys | None:
    if entry.get("jwks_file"):
        path = Path(str(entry["jwks_file"])).expanduser()
        try:
            document = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read jwks_file {path}: {exc}") from exc
    elif entry.get("jwks"):
        document = entry["jwks"]
    else:
        return None
    try:
        keys = StaticKeys(document)
    except JwksError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not keys:
        raise ConfigError(f"{where}: the JWKS holds no EC or RSA signature key with a kid")
    return keys


def _strings(entry: Mapping[str, Any], name: str, where: str) -> tuple[str, ...] | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{where}: {name} must be a list of non-empty strings")
    return tuple(value)
