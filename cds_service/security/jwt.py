"""Verification of the JWT a CDS client sends (CDS Hooks 2.0.1 "Trusting CDS Clients").

Order of checks: header (alg on the configured asymmetric list, typ JWT, kid; PyJWT refuses unknown crit) ->
issuer trusted -> jku allowlisted -> key by kid -> signature, aud (exact), exp and iat (with leeway), required
claims -> lifetime cap, tenant -> jti seen for the first time. ``sub`` is not required (the spec removed it).
Only a verified token reaches the replay store, so forged tokens cannot burn another client's jti.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt import exceptions as jwt_errors

from ..config import ASYMMETRIC_ALGORITHMS
from .issuers import TrustedIssuer, UntrustedKeyLocation
from .replay import ReplayGuard

REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
MAX_JTI_LENGTH = 256  # the seen_jti column size


class InvalidToken(Exception):
    """Why a token was refused: for the log only, never for the client, never containing the token."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What the service may rely on from a verified token."""

    iss: str
    jti: str
    tenant: str | None
    exp: int  # seconds since the epoch
    fhir_servers: tuple[str, ...] | None  # FHIR servers the issuer may send; None = the global allowlist only


def _shown(value: object) -> str:
    """A header or claim value fit for a log line: quoted, escaped and short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# PyJWT's exception classes, most specific first, mapped to log reasons.
_PYJWT_REASONS: tuple[tuple[type[jwt_errors.PyJWTError], str], ...] = (
    (jwt_errors.ExpiredSignatureError, "token has expired"),
    (jwt_errors.ImmatureSignatureError, "iat or nbf is in the future"),
    (jwt_errors.InvalidAudienceError, "aud does not match the endpoint URL"),
    (jwt_errors.InvalidIssuerError, "iss does not match"),
    (jwt_errors.InvalidSignatureError, "signature does not verify"),
    (jwt_errors.InvalidKeyError, "key does not fit the algorithm"),
    (jwt_errors.InvalidIssuedAtError, "iat is not a number"),
    (jwt_errors.InvalidJTIError, "jti is not a string"),
    (jwt_errors.InvalidSubjectError, "sub is not a string"),
    (jwt_errors.DecodeError, "token is malformed"),
)


def _pyjwt_reason(exc: jwt_errors.PyJWTError) -> str:
    if isinstance(exc, jwt_errors.MissingRequiredClaimError):
        return f"required claim {exc.claim} is missing"
    for kind, reason in _PYJWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return f"token rejected by the JWT library ({type(exc).__name__})"


class TokenVerifier:
    def __init__(
        self,
        issuers: Mapping[str, TrustedIssuer],
        *,
        algorithms: Collection[str],
        leeway_seconds: int,
        max_lifetime_seconds: int,
        replay: ReplayGuard,
    ):
        self._issuers = dict(issuers)
        self._algorithms = frozenset(algorithms) & ASYMMETRIC_ALGORITHMS  # the settings refuse others; never HS*
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds
        self._replay = replay

    def verify(self, token: str, audience: str | Sequence[str]) -> Claims:
        """The claims of a valid, first-seen token for ``audience`` (or one of its URLs); raises InvalidToken
        otherwise."""
        alg, kid, jku = self._header(token)
        issuer = self._issuer(token)
        try:
            source = issuer.key_source(jku)
        except UntrustedKeyLocation as exc:
            raise InvalidToken(f"{exc}: {_shown(jku)}") from None
        key = source.key(kid)
        if key is None:
            raise InvalidToken(f"no key with kid {_shown(kid)} for issuer {_shown(issuer.iss)}")
        if key.alg is not None and key.alg != alg:
            raise InvalidToken(f"alg {_shown(alg)} does not match the key's alg {_shown(key.alg)}")
        try:
            payload = jwt.decode(
                token,
                key.public_key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer.iss,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "enforce_minimum_key_length": True},
            )
        except jwt_errors.PyJWTError as exc:
            raise InvalidToken(_pyjwt_reason(exc)) from None
        return self._accept(issuer, payload)

    def _header(self, token: str) -> tuple[str, str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise InvalidToken("token is not a JWS in compact form") from None
        alg, kid, jku, typ = header.get("alg"), header.get("kid"), header.get("jku"), header.get("typ")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken(f"alg {_shown(alg)} is not accepted")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise InvalidToken(f"typ {_shown(typ)} is not JWT")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("kid is missing")
        if jku is not None and not isinstance(jku, str):
            raise InvalidToken("jku is not a string")
        return alg, kid, jku

    def _issuer(self, token: str) -> TrustedIssuer:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt_errors.PyJWTError:
            raise InvalidToken("payload is not a JSON object") from None
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken(f"issuer {_shown(iss)} is not trusted")
        return issuer

    def _accept(self, issuer: TrustedIssuer, payload: dict[str, Any]) -> Claims:
        exp = int(payload["exp"])
        if exp - time.time() > self._max_lifetime:
            raise InvalidToken(f"exp is more than {self._max_lifetime} s away")
        tenant = payload.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidToken("tenant is not a string")
        if issuer.tenants is not None and tenant not in issuer.tenants:
            raise InvalidToken(f"tenant {_shown(tenant)} is not allowed for this issuer")
        jti = payload["jti"]
        if not jti or len(jti) > MAX_JTI_LENGTH:
            raise InvalidToken("jti is empty or too long")
        expires_at = datetime.fromtimestamp(exp + self._leeway, tz=UTC)
        if not self._replay.first_use(issuer.iss, jti, expires_at):
            raise InvalidToken(f"jti {_shown(jti)} was already used")
        return Claims(iss=issuer.iss, jti=jti, tenant=tenant, exp=exp, fhir_servers=issuer.fhir_servers)
