"""Configuration: built-in defaults, then a TOML file, then ``CDS_*`` environment variables, then a mapping.

Every key is documented in the README's configuration table with its default. Environment values are parsed
by the type of the key's default: booleans accept 1/0/true/false/yes/no, numbers are numbers, and lists and
tables are JSON (``CDS_FHIR_ALLOWLIST='["https://fhir.example.org/r4"]'``).
"""
from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "CDS_"


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "cds-service")


DEFAULTS: dict[str, Any] = {
    # --- storage -------------------------------------------------------------------------------------------
    "data_dir": _default_data_dir(),  # created on first run; holds the SQLite database by default
    "database_url": "",  # SQLAlchemy URL; empty = sqlite file in data_dir; postgresql+psycopg://... for scale-out
    "issued_cards_flush_seconds": 0.25,  # which rule issued each card is written in batches at most this late
    # --- rules ---------------------------------------------------------------------------------------------
    "rules_dir": "",  # empty = the rule set shipped inside the package
    "max_cards": 8,  # cap on cards per response, after ordering critical > warning > info
    "now": "",  # ISO 8601 evaluation time for reproducible runs over old data; empty = the real clock
    # --- HTTP input limits -----------------------------------------------------------------------------------
    "max_body_bytes": 16 * 1024 * 1024,  # 413 above this; 5000 prefetched labs are about 5 MB
    "max_json_depth": 64,  # 400 for deeper nesting
    "max_prefetch_entries": 50000,  # 413 for more Bundle entries in all prefetch keys together
    # --- CORS ---------------------------------------------------------------------------------------------
    "cors_origins": [
        "https://sandbox.cds-hooks.org",
        r"^https?://localhost(:\d+)?$",
        r"^https?://127\.0\.0\.1(:\d+)?$",
    ],
    # --- FHIR server access ---------------------------------------------------------------------------------
    "fhir_allowlist": [],  # FHIR base URLs the service may call; anything else answers 412
    "fhir_allow_unauthenticated": False,  # call an allowlisted fhirServer without fhirAuthorization (sandbox)
    "fhir_allow_http_loopback": True,  # allow http:// for loopback FHIR servers (development); else https only
    "fhir_connect_timeout": 0.5,  # seconds
    "fhir_read_timeout": 1.0,  # seconds, per request (the hook budget caps the total)
    "fhir_retries": 2,  # retries on connection errors and 502/503/504, with backoff
    "fhir_max_pages": 10,  # searchset pages followed per prefetch key
    "fhir_max_response_bytes": 16 * 1024 * 1024,
    # --- time budget ----------------------------------------------------------------------------------------
    "hook_budget_seconds": 1.2,  # total time a hook call may take
    "fhir_budget_margin_seconds": 0.2,  # kept back from the budget for evaluation and the response
    # --- authentication -------------------------------------------------------------------------------------
    "public_base_url": "",  # external base URL (https://cds.example.org) for JWT aud; empty = from the request
    "trusted_issuers": [],  # list of {iss, jwks_url | jwks_file | jwks, jku_allowlist, fhir_servers, tenants}
    "allow_sandbox_issuer": False,  # trust the public CDS Hooks sandbox issuer (its private key is public)
    "jwt_leeway_seconds": 30,  # clock skew allowed on exp and iat
    "jwt_algorithms": ["ES384", "RS384", "ES256", "RS256"],  # asymmetric only; none and HS* are refused
    "jwt_max_lifetime_seconds": 3600,  # tokens valid for longer than this from now are refused
    "jwks_cache_seconds": 3600,
    "jwks_min_refresh_seconds": 30,  # at most one unknown-kid refresh (and one retry after a failure) per JWKS URL
    "jwks_timeout_seconds": 2.0,  # connect and read timeout of one JWKS fetch
    "auth_required": None,  # None = on when trusted issuers exist; True/False forces it
    # --- operations -------------------------------------------------------------------------------------------
    "log_level": "INFO",
    "metrics_enabled": True,
    "viewer_enabled": True,  # the card viewer at /viewer; served only while authentication is off (dev, demo)
}


def _coerce(key: str, raw: str) -> Any:
    default = DEFAULTS[key]
    if isinstance(default, bool) or default is None and raw.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, (list, dict)):
        return json.loads(raw)
    return raw


class ConfigError(ValueError):
    """A configuration file or variable that cannot be used; the message names it."""


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Merge defaults, the TOML file at ``path``, ``CDS_*`` variables and ``overrides`` (last wins)."""
    config = dict(DEFAULTS)
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    if path:
        try:
            with open(path, "rb") as handle:
                from_file = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
        unknown = sorted(set(from_file) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown configuration keys in {path}: {', '.join(unknown)}")
        config.update(from_file)
    for key in DEFAULTS:
        raw = environ.get(ENV_PREFIX + key.upper())
        if raw is not None:
            try:
                config[key] = _coerce(key, raw)
            except ValueError as exc:
                raise ConfigError(f"{ENV_PREFIX}{key.upper()}: {exc}") from exc
    if overrides:
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        config.update(overrides)
    return config


def database_url(config: Mapping[str, Any]) -> str:
    """The SQLAlchemy URL: the configured one, or a SQLite file in the data directory (created here)."""
    if config["database_url"]:
        return str(config["database_url"])
    data_dir = Path(config["data_dir"]).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'cds-service.sqlite3'}"
