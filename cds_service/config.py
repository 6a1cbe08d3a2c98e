"""Settings: built-in defaults, then a TOML file, then ``CDS_*`` environment variables, then a mapping.

``Settings`` is the one typed model of every key (the README's configuration table documents each). The sources
are pydantic-settings' own, highest first: the mapping given to ``load_config`` (``create_app({...})``), the
environment (``CDS_MAX_CARDS=5``; lists and tables as JSON), the TOML file (``--config FILE`` or ``CDS_CONFIG``).

Validation is strict: a file or mapping must give each key its own type (``max_cards = "8"`` is refused, and so
is a string where a list belongs), unknown keys are refused, URLs must be absolute http(s), durations and limits
positive. Environment values are text, so they are parsed by the key's type first (booleans from 1/0, true/false,
yes/no, on/off, t/f, y/n). Every problem becomes a ``ConfigError`` whose message is one line naming the key, the
value and, where it can be told, the source.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "CDS_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"

# Signature algorithms a configuration may enable; `none` and every HMAC algorithm are deliberately absent.
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})

_SECRET_WORDS = ("secret", "token", "password")
_JWK_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})  # RFC 7518 section 6
_MASK = "***"


class ConfigError(Exception):
    """A configuration file, variable or value that cannot be used; the message is one line naming it."""


# --- field types ------------------------------------------------------------------------------------------------


def _empty_is_none(value: Any) -> Any:
    """TOML has no null and environment variables are text: ``""`` leaves an optional key unset."""
    return None if value == "" else value


def _absolute_http_url(value: str) -> str:
    """The URL as given (it is compared as written) once it is known to be an absolute http(s) URL."""
    try:
        _HTTP_URL.validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"not an absolute http(s) URL ({exc.errors()[0]['msg']})") from None
    return value


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also written [::1] or ::ffff:127.x.y.z)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # other host names are not resolved: they could point anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _https_unless_loopback(value: str) -> str:
    """A key source must be https, as FHIR servers must: keys fetched in the clear could be swapped on the way
    (an allowlisted jku is trusted even where the keys are pinned). Plain http only to a loopback host."""
    parts = urlsplit(value)
    if parts.scheme.lower() != "https" and not is_loopback(parts.hostname or ""):
        raise ValueError("must be an https URL (http only on loopback)")
    return value


def host_and_port(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as its parts; ValueError for anything else."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not host:port (127.0.0.1:9464, [::1]:9464)")
    return host, int(port)


def _host_port(value: str) -> str:
    host_and_port(value)
    return value


def _ip_network(value: str) -> str:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise ValueError("not an IP address or network (10.0.0.5, 10.0.0.0/8)") from None
    return value


def _utc_if_naive(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _existing_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError("not a folder")
    return path


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


_HTTP_URL = TypeAdapter(HttpUrl)
Text = Annotated[str, Field(min_length=1)]
Url = Annotated[str, AfterValidator(_absolute_http_url)]
KeyUrl = Annotated[Url, AfterValidator(_https_unless_loopback)]  # where an issuer's JWKS may be fetched
HostPort = Annotated[str, AfterValidator(_host_port)]
IpNetwork = Annotated[str, AfterValidator(_ip_network)]
EmptyIsNone = BeforeValidator(_empty_is_none)
# A path or a time arrives as text from every source (TOML has no path type): pydantic parses it.
LaxPath = Annotated[Path, Strict(False), AfterValidator(Path.expanduser)]
Folder = Annotated[LaxPath, AfterValidator(_existing_folder)]
LaxTime = Annotated[datetime, Strict(False), AfterValidator(_utc_if_naive)]
Seconds = Annotated[float, Field(gt=0)]
SecondsOrZero = Annotated[float, Field(ge=0)]  # 0: no waiting (write at once, never cache, no margin)
Count = Annotated[int, Field(gt=0)]
LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]


class IssuerSettings(BaseModel):
    """One ``trusted_issuers`` entry: a JWT issuer and where its signing keys come from (security/issuers.py).

    Keys come from at most one of ``jwks_url`` / ``jwks_file`` / ``jwks``, or from an allowlisted ``jku`` when
    only ``jku_allowlist`` is given.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    iss: Text
    jwks_url: Annotated[KeyUrl | None, EmptyIsNone] = None
    jwks_file: Annotated[LaxPath | None, EmptyIsNone] = None
    jwks: dict[str, Any] | None = None  # a JWKS document (public keys) registered inline
    jku_allowlist: list[KeyUrl] = []  # jku values a token may name
    fhir_servers: list[Url] | None = None  # FHIR servers this issuer's tokens may use; None = fhir_allowlist
    tenants: list[Text] | None = None  # allowed tenant claims; None = any

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        sources = [name for name in ("jwks_url", "jwks_file", "jwks") if getattr(self, name) is not None]
        if len(sources) > 1:
            raise ValueError("give only one of jwks_url, jwks_file, jwks")
        if not sources and not self.jku_allowlist:
            raise ValueError("needs jwks_url, jwks_file, jwks or a jku_allowlist")
        return self


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cds-service"


_config_file: ContextVar[Path | None] = ContextVar("cds_config_file", default=None)  # set by load_config


Deployment = Literal["active", "silent", "off"]


def _iso_duration(value: Any) -> Any:
    """Only ISO 8601 durations (``P1D``, ``PT12H``) are durations here, not pydantic's other spellings."""
    if not isinstance(value, timedelta) and not (isinstance(value, str) and value.startswith("P")):
        raise ValueError("not an ISO 8601 duration such as P1D or PT12H")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


def _absolute_uri(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", value):
        raise ValueError("not an absolute URI (such as http://terminology.hl7.org/CodeSystem/...)")
    return value


Duration = Annotated[timedelta, BeforeValidator(_iso_duration), Strict(False), AfterValidator(_not_negative)]


class OverrideReason(BaseModel):
    """One ``override_reasons`` entry: the coding a card offers for its code."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    system: Annotated[str, AfterValidator(_absolute_uri)]  # FHIR Coding.system
    display: Text  # what the clinician reads


class Settings(BaseSettings):
    """Every setting of the service, typed and checked; build it with ``load_config``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", strict=True, frozen=True)

    # --- storage -------------------------------------------------------------------------------------------
    data_dir: LaxPath = Field(default_factory=_default_data_dir)  # holds the SQLite database
    database_url: Annotated[str | None, EmptyIsNone] = None  # SQLAlchemy URL; None = SQLite file in data_dir
    issued_cards_flush_seconds: SecondsOrZero = 0.25  # issued cards are written in batches at most this late
    # --- rules ---------------------------------------------------------------------------------------------
    rules_dir: Annotated[Folder | None, EmptyIsNone] = None  # None = the rule set shipped inside the package
    max_cards: Count = 8  # cap on cards per response, after ordering critical > warning > info
    now: Annotated[LaxTime | None, EmptyIsNone] = None  # None = the real clock
    # the site's FHIR R4 ConceptMap files mapping local codes to LOINC/RxNorm (cds_service.facts.concept_maps)
    concept_maps_dir: Annotated[Folder | None, EmptyIsNone] = None
    # --- rule governance (rule ids are checked against the loaded rules at start: cds_service.governance) --------
    rule_deployment: dict[Text, Deployment] = {}  # rule id -> active/silent/off; unlisted: from the rule's status
    repeat_after: Duration = timedelta(days=1)  # a non-critical card seen this recently is not shown again
    rule_repeat_after: dict[Text, Duration] = {}  # rule id -> its own repeat_after
    override_reasons: dict[Text, OverrideReason] = {}  # code -> {system, display}: replaces the shipped coding
    # --- HTTP input limits -----------------------------------------------------------------------------------
    max_body_bytes: Count = 16 * 1024 * 1024  # 413 above this; 5000 prefetched labs are about 5 MB
    max_json_depth: Count = 64  # 400 for deeper nesting
    max_prefetch_entries: Count = 50000  # 413 for more Bundle entries in all prefetch keys together
    # --- CORS ---------------------------------------------------------------------------------------------
    cors_origins: list[Text] = [  # origins or regular expressions (flask-cors)
        "https://sandbox.cds-hooks.org",
        r"^https?://localhost(:\d+)?$",
        r"^https?://127\.0\.0\.1(:\d+)?$",
    ]
    # --- FHIR server access ---------------------------------------------------------------------------------
    fhir_allowlist: list[Url] = []  # FHIR base URLs the service may call; anything else answers 412
    fhir_allow_unauthenticated: bool = False  # call an allowlisted fhirServer without fhirAuthorization (sandbox)
    fhir_allow_http_loopback: bool = True  # allow http:// for loopback FHIR servers (development); else https only
    fhir_connect_timeout: Seconds = 0.5
    fhir_read_timeout: Seconds = 1.0  # per request (the hook budget caps the total)
    fhir_retries: Annotated[int, Field(ge=0)] = 2  # retries on connection errors and 502/503/504, with backoff
    fhir_max_pages: Count = 10  # searchset pages followed per prefetch key
    fhir_max_response_bytes: Count = 16 * 1024 * 1024
    # --- time budget ----------------------------------------------------------------------------------------
    hook_budget_seconds: Seconds = 1.2  # total time a hook call may take
    fhir_budget_margin_seconds: SecondsOrZero = 0.2  # kept back for evaluation and the response
    # --- authentication -------------------------------------------------------------------------------------
    public_base_url: Annotated[Url | None, EmptyIsNone] = None  # the URL clients call (JWT aud); None = bound address
    trusted_issuers: list[IssuerSettings] = []
    allow_sandbox_issuer: bool = False  # trust the public CDS Hooks sandbox issuer (its private key is public)
    jwt_leeway_seconds: Annotated[int, Field(ge=0)] = 30  # clock skew allowed on exp and iat
    jwt_algorithms: Annotated[list[str], Field(min_length=1)] = ["ES384", "RS384", "ES256", "RS256"]
    jwt_max_lifetime_seconds: Count = 3600  # tokens valid for longer than this from now are refused
    jwks_cache_seconds: SecondsOrZero = 3600
    jwks_min_refresh_seconds: SecondsOrZero = 30  # at most one refresh per JWKS URL in this time
    jwks_timeout_seconds: Seconds = 2.0  # connect and read timeout of one JWKS fetch
    auth_required: Annotated[bool | None, EmptyIsNone] = None  # None = on when trusted issuers exist
    # --- network exposure -------------------------------------------------------------------------------------
    forwarded_allow_ips: list[IpNetwork] = []  # proxies whose X-Forwarded-Proto gunicorn believes; [] = no one's
    metrics_bind: Annotated[HostPort | None, EmptyIsNone] = None  # /metrics served there (by serve), not on the port
    # --- operations -------------------------------------------------------------------------------------------
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    metrics_enabled: bool = True
    viewer_enabled: bool = True  # the card viewer at /viewer; served only while authentication is off (dev, demo)

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                make_url(value)
            except ArgumentError:
                raise ValueError(
                    "not a SQLAlchemy database URL (dialect+driver://user:password@host/database)"
                ) from None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _patterns_compile(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            try:
                re.compile(origin)
            except re.error as exc:
                raise ValueError(f"{origin!r} is not a regular expression ({exc})") from None
        return origins

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        refused = sorted(set(algorithms) - ASYMMETRIC_ALGORITHMS)
        if refused:
            raise ValueError(f"JWT algorithms not allowed: {', '.join(refused)} (use ES384, RS384, ES256, RS256...)")
        return algorithms

    @model_validator(mode="after")
    def _budget_leaves_time_to_fetch(self) -> Self:
        if self.fhir_budget_margin_seconds >= self.hook_budget_seconds:
            raise ValueError("fhir_budget_margin_seconds must be less than hook_budget_seconds")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: the mapping, ``CDS_*`` variables, the TOML file; no .env or secrets folder."""
        return init_settings, _EnvSource(settings_cls), TomlConfigSettingsSource(settings_cls, _config_file.get())


class _EnvSource(EnvSettingsSource):
    """``CDS_*`` variables; one that should hold JSON (a list or a table) and does not is a ConfigError."""

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError as exc:
            variable = ENV_PREFIX + field_name.upper()
            raise ConfigError(
                f"configuration error: {field_name} = {_shown(field_name, value)}: not JSON ({exc}) (from {variable})"
            ) from None


# --- loading ----------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings from defaults, the TOML file at ``path`` (else ``CDS_CONFIG``), ``CDS_*`` variables and
    ``overrides`` (last wins); raises ConfigError with a one-line message."""
    named = path or os.environ.get(CONFIG_FILE_ENV)
    file = Path(named).expanduser() if named else None
    if file is not None and not file.is_file():
        raise ConfigError(f"cannot read configuration file {file}: {os.strerror(errno.ENOENT)}")
    token = _config_file.set(file)
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(_problem(error, _source(error, file, overrides or {})) for error in exc.errors())
        raise ConfigError(f"configuration error: {problems}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc}") from None
    finally:
        _config_file.reset(token)


def _source(error: ErrorDetails, file: Path | None, overrides: Mapping[str, Any]) -> str:
    """Where the offending key came from: the mapping, the environment or the file (in that order of priority);
    nothing for the mapping (its caller knows) or for a rule that relates several keys."""
    if not error["loc"] or error["loc"][0] in overrides:
        return ""
    key = str(error["loc"][0])
    variable = ENV_PREFIX + key.upper()
    if variable in os.environ:
        return f" (from {variable})"
    return f" (from {file})" if file is not None else ""


def _problem(error: ErrorDetails, source: str) -> str:
    """One problem as ``key = value: what is wrong (from source)``."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key{source}"
    if error["type"] == "missing":
        return f"{where}: required{source}"
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"][:1].lower() + error["msg"][1:]  # pydantic's "Input should be ..."
    value = error["input"]
    if not where:
        return message + source
    if isinstance(value, Mapping):
        return f"{where}: {message}{source}"
    return f"{where} = {_shown(where, value)}: {message}{source}"


def _shown(key: str, value: Any, limit: int = 80) -> str:
    """``repr`` of a value for a message, secrets masked, long values cut."""
    text = repr(_masked(key.rsplit(".", 1)[-1].split("[", 1)[0], value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- secrets ----------------------------------------------------------------------------------------------------


def _masked(key: str, value: Any) -> Any:
    """``value`` of ``key`` fit to show: database passwords, private JWK members and secret-named keys hidden."""
    if value in (None, ""):
        return value
    if any(word in key.lower() for word in _SECRET_WORDS):
        return _MASK
    if key == "database_url" and isinstance(value, str):
        try:
            return make_url(value).render_as_string(hide_password=True)
        except ArgumentError:
            return _MASK
    if isinstance(value, Mapping):
        private = _JWK_PRIVATE_MEMBERS if "kty" in value else frozenset()
        return {name: _MASK if name in private else _masked(str(name), item) for name, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_masked(key, item) for item in value]
    return value


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data with every secret masked (``cds-service config show``)."""
    return {key: _masked(key, value) for key, value in settings.model_dump(mode="json").items()}


# --- storage location -------------------------------------------------------------------------------------------


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL: the configured one, or a SQLite file in the data folder. The folder of a SQLite file is
    created here; one that cannot be created or written is a ConfigError naming it."""
    if settings.database_url:
        url = make_url(settings.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            _writable_folder(Path(url.database).expanduser().parent, "database folder")
        return settings.database_url
    folder = _writable_folder(settings.data_dir, "data folder")
    return f"sqlite:///{folder / 'cds-service.sqlite3'}"


def _writable_folder(folder: Path, what: str) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {what} {folder}: {os.strerror(errno.EACCES)}")
    return folder

