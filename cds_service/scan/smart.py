"""SMART Backend Services authorization for the Bulk Data export: a client_credentials grant with a signed JWT.

The client is registered with the FHIR server's authorization server by its client id and public key (a JWKS);
the scan holds the private key in a PEM file (RSA of at least 2048 bits, signed RS384, or EC on P-384, signed
ES384). The token endpoint is discovered from ``[base]/.well-known/smart-configuration``; the token request
asks ``system/<Type>.read`` for exactly the types the scan reads (``system/<Type>.rs`` when the server lists the
``permission-v2`` capability) and authenticates with a client assertion (``private_key_jwt``: iss and sub the
client id, aud the token endpoint, a fresh jti, five minutes to live) signed with PyJWT. A token is fetched when
first needed and again when it is about to expire, so a long export keeps a valid one. Neither the key nor a
token is ever logged, echoed in an error or written to the output folder.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import SECP384R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .export import TIMEOUT, TOKEN_ENV, ExportFailed

CLIENT_ID_ENV = "CDS_SCAN_SMART_CLIENT_ID"
KEY_FILE_ENV = "CDS_SCAN_SMART_KEY_FILE"
KEY_ID_ENV = "CDS_SCAN_SMART_KEY_ID"
CONFIGURATION = "/.well-known/smart-configuration"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 300  # the longest a client assertion may live (SMART Backend Services)
EARLY_SECONDS = 30  # a token is renewed this long before it expires (at the latest halfway through its life)
DEFAULT_TOKEN_SECONDS = 300  # when the token response omits expires_in
MIN_RSA_BITS = 2048


class SmartKeyError(Exception):
    """The SMART client cannot be set up: a missing option, or a key file that is no usable private key."""


@dataclass(frozen=True, slots=True)
class SmartClient:
    """A registered backend client: its id, the id of its key in the registered JWKS, and the private key."""

    client_id: str
    key_id: str
    key: RSAPrivateKey | EllipticCurvePrivateKey = field(repr=False)
    algorithm: str  # RS384 or ES384, from the key


def smart_client(
    client_id: str | None, key_file: str | None, key_id: str | None, environ: Mapping[str, str] = os.environ
) -> SmartClient | None:
    """The client the options (else their environment variables) name; None when none of them is given."""
    client_id = client_id or environ.get(CLIENT_ID_ENV)
    key_file = key_file or environ.get(KEY_FILE_ENV)
    key_id = key_id or environ.get(KEY_ID_ENV)
    given = {"--smart-client-id": client_id, "--smart-key-file": key_file, "--smart-key-id": key_id}
    if not any(given.values()):
        return None
    missing = [option for option, value in given.items() if not value]
    if missing:
        raise SmartKeyError(f"SMART Backend Services needs {', '.join(missing)} too (or CDS_SCAN_SMART_CLIENT_ID, "
                            "CDS_SCAN_SMART_KEY_FILE, CDS_SCAN_SMART_KEY_ID)")
    if environ.get(TOKEN_ENV):
        raise SmartKeyError(f"both {TOKEN_ENV} and a SMART client are given: use one way to authorize")
    assert client_id and key_file and key_id  # checked above, for mypy
    key, algorithm = load_key(Path(key_file))
    return SmartClient(client_id, key_id, key, algorithm)


def load_key(path: Path) -> tuple[RSAPrivateKey | EllipticCurvePrivateKey, str]:
    """The private key in the PEM file ``path`` and the algorithm it signs with; SmartKeyError saying what is
    wrong (never quoting the file)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SmartKeyError(f"the SMART key file {path} cannot be read: {error.strerror or error}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SmartKeyError(f"the SMART key file {path} is not an unencrypted PEM private key") from None
    if isinstance(key, RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise SmartKeyError(f"the SMART key in {path} is RSA of {key.key_size} bits; at least {MIN_RSA_BITS}")
        return key, "RS384"
    if isinstance(key, EllipticCurvePrivateKey):
        if not isinstance(key.curve, SECP384R1):
            raise SmartKeyError(f"the SMART key in {path} is EC on {key.curve.name}; ES384 needs P-384 (secp384r1)")
        return key, "ES384"
    raise SmartKeyError(f"the SMART key in {path} is neither RSA (RS384) nor EC on P-384 (ES384)")


class SmartTokens:
    """Access tokens for ``base`` from its SMART authorization server, renewed before they expire."""

    def __init__(self, client: SmartClient, base: str, types: Iterable[str]) -> None:
        self.client, self.base, self.types = client, base.rstrip("/"), sorted(types)
        self.token_endpoint: str | None = None
        self.scope = ""
        self._token: str | None = None
        self._renew_at = 0.0

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"SmartTokens(client_id={self.client.client_id!r}, base={self.base!r}, token=<redacted>)"

    def __call__(self) -> str:
        """A valid access token (fetched now when there is none or it is about to expire)."""
        if self._token is None or time.monotonic() >= self._renew_at:
            self._fetch()
        assert self._token is not None
        return self._token

    def _discover(self) -> tuple[str, str]:
        """The token endpoint and the scope to ask for, from the server's SMART configuration."""
        url = self.base + CONFIGURATION
        answer = _call("get", url, headers={"Accept": "application/json"}, allow_redirects=True)
        if answer.status_code != 200:
            raise ExportFailed(f"{url} was answered {answer.status_code}: the server publishes no SMART "
                               "configuration to find its token endpoint in")
        try:
            configuration = answer.json()
        except ValueError:
            configuration = None
        if not isinstance(configuration, dict):
            raise ExportFailed(f"{url} is not a JSON object")
        endpoint = configuration.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise ExportFailed(f"{url} names no token_endpoint (an http or https URL): SMART Backend Services "
                               "cannot get a token")
        capabilities = configuration.get("capabilities")
        v2 = isinstance(capabilities, list) and "permission-v2" in capabilities
        return endpoint, " ".join(f"system/{kind}.{'rs' if v2 else 'read'}" for kind in self.types)

    def _fetch(self) -> None:
        if self.token_endpoint is None:
            self.token_endpoint, self.scope = self._discover()
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": self.client.client_id, "sub": self.client.client_id, "aud": self.token_endpoint,
             "exp": now + ASSERTION_SECONDS, "iat": now, "jti": uuid.uuid4().hex},
            self.client.key, algorithm=self.client.algorithm, headers={"kid": self.client.key_id, "typ": "JWT"},
        )
        asked = time.monotonic()
        form = {"grant_type": "client_credentials", "scope": self.scope, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}
        answer = _call("post", self.token_endpoint, headers={"Accept": "application/json"}, data=form,
                       allow_redirects=False)  # the assertion goes to the endpoint its aud names, nowhere else
        body = _json_object(answer)
        if answer.status_code != 200:
            raise ExportFailed(f"the token endpoint refused the client ({answer.status_code}): {_oauth_error(body)}")
        token, kind, seconds = body.get("access_token"), body.get("token_type"), body.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(kind, str) or kind.lower() != "bearer":
            raise ExportFailed("the token endpoint's answer holds no bearer access_token")
        lifetime = float(seconds) if isinstance(seconds, int | float) and seconds > 0 else DEFAULT_TOKEN_SECONDS
        self._token = token
        self._renew_at = asked + max(lifetime - EARLY_SECONDS, lifetime / 2)


def _call(method: str, url: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as error:
        raise ExportFailed(f"{url} cannot be reached: {type(error).__name__}") from None


def _json_object(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _oauth_error(body: Mapping[str, Any]) -> str:
    """The OAuth error of a refused token request (RFC 6749 section 5.2): its code and description."""
    error, description = body.get("error"), body.get("error_description")
    if not isinstance(error, str):
        return "no OAuth error given"
    return f"{error}: {description}" if isinstance(description, str) and description else error
