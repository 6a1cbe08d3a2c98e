"""Verification keys of a trusted issuer: a JWK Set held in memory, or fetched from a URL and cached.

Only asymmetric signature keys with a ``kid`` are kept (``kty`` EC or RSA, ``use`` absent or ``sig``): a
symmetric (``oct``) key in a JWK Set is ignored, so an HMAC-signed token can never find a key.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from jwt import PyJWK, PyJWTError

logger = logging.getLogger("cds_service.security")

SIGNATURE_KEY_TYPES = frozenset({"EC", "RSA"})
MAX_JWKS_BYTES = 256 * 1024  # a JWK Set of a few dozen RSA keys is well under this


class JwksError(Exception):
    """A JWK Set that cannot be read or fetched; the message names the cause, never key material."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    public_key: Any  # a cryptography EC or RSA public key
    alg: str | None  # the algorithm the JWK pins, when it names one


def parse_jwks(document: object) -> dict[str, VerificationKey]:
    """The usable signature keys of a JWK Set, by ``kid`` (the first key wins when a kid repeats)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set (an object with a 'keys' array)")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") not in SIGNATURE_KEY_TYPES:
            continue
        kid, use, alg = jwk.get("kid"), jwk.get("use", "sig"), jwk.get("alg")
        if not isinstance(kid, str) or not kid or use != "sig" or kid in keys:
            continue
        try:
            loaded = PyJWK(dict(jwk)).key
        except (PyJWTError, ValueError, TypeError):
            continue
        public = loaded.public_key() if hasattr(loaded, "public_key") else loaded  # a JWK that leaked "d"
        keys[kid] = VerificationKey(kid=kid, public_key=public, alg=alg if isinstance(alg, str) else None)
    return keys


class KeySource(Protocol):
    def key(self, kid: str) -> VerificationKey | None:
        """The key with this ``kid``, or None when the issuer has no such key."""


class StaticKeys:
    """Keys registered out of band (a JWKS file or inline JWKS in the configuration); never fetched."""

    def __init__(self, document: object):
        self._keys = parse_jwks(document)

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)


class RemoteJwks:
    """A JWK Set fetched from a URL, cached for ``cache_seconds``.

    An unknown ``kid`` triggers one refetch (key rotation), at most once per ``min_refresh_seconds``; a failed
    fetch keeps the keys already held and is not retried before ``min_refresh_seconds`` either, so a flood of
    tokens with made-up kids or an unreachable issuer cannot turn into a flood of outbound requests. Redirects
    are not followed. One lock per URL: concurrent requests wait for a single fetch.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float,
        cache_seconds: float,
        min_refresh_seconds: float,
    ):
        self.url = url
        self._timeout = timeout_seconds
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh_seconds
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._failed_at: float | None = None  # last failed fetch
        self._unknown_kid_refresh_at: float | None = None

    def key(self, kid: str) -> VerificationKey | None:
        with self._lock:
            now = time.monotonic()
            if self._is_stale(now) and not self._recently(self._failed_at, now):
                self._fetch(now)
            elif kid not in self._keys and self._may_refresh_for_unknown_kid(now):
                self._unknown_kid_refresh_at = now
                self._fetch(now)
            return self._keys.get(kid)

    def _is_stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._cache_seconds

    def _may_refresh_for_unknown_kid(self, now: float) -> bool:
        return not self._recently(self._unknown_kid_refresh_at, now) and not self._recently(self._failed_at, now)

    def _recently(self, moment: float | None, now: float) -> bool:
        return moment is not None and now - moment < self._min_refresh

    def _fetch(self, now: float) -> None:
        """Replace the cached keys from the URL; on failure keep them and log why."""
        try:
            self._keys = parse_jwks(self._download())
        except JwksError as exc:
            self._failed_at = now
            logger.warning("JWKS fetch from %s failed: %s", self.url, exc)
            return
        self._fetched_at = now
        self._failed_at = None
        logger.info("JWKS fetched from %s: %d signature key(s)", self.url, len(self._keys))

    def _download(self) -> object:
        try:
            with self._session.get(
                self.url,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json, application/jwk-set+json"},
            ) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP status {response.status_code}")
                body = bytearray()
                for chunk in response.iter_content(chunk_size=16384):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
        except requests.RequestException as exc:
            raise JwksError(type(exc).__name__) from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise JwksError("not JSON") from exc
