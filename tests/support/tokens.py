"""Test helpers for client JWTs: signing keys, JWK Sets, signed and forged tokens, a local JWKS server.

Tokens are made the way the CDS Hooks sandbox makes them (``jwt-generator.js``): header alg/typ/kid/jku,
payload iss/aud/exp (= iat + 300)/iat/jti, no sub, no tenant.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


@dataclass(frozen=True)
class SigningKey:
    """A private key with its kid and algorithm; ``jwk`` is the public half as a JWK."""

    kid: str
    alg: str
    private_key: Any

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        codec = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        return {**codec.to_jwk(public, as_dict=True), "kid": self.kid, "use": "sig", "alg": self.alg}

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def make_key(alg: str = "ES384", kid: str | None = None) -> SigningKey:
    if alg in CURVES:
        private = ec.generate_private_key(CURVES[alg]())
    elif alg in {"RS256", "RS384"}:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(alg)
    return SigningKey(kid=kid or str(uuid.uuid4()), alg=alg, private_key=private)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk for key in keys]}


def claims(iss: str, aud: str | list[str], *, lifetime: int = 300, **extra: Any) -> dict[str, Any]:
    """Sandbox-shaped claims: iat now, exp now + lifetime, a fresh uuid4 jti; ``extra`` adds or overrides
    (a value of None removes the claim)."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": iss, "aud": aud, "exp": now + lifetime, "iat": now, "jti": str(uuid.uuid4())}
    payload.update(extra)
    return {name: value for name, value in payload.items() if value is not None}


def sign(key: SigningKey, payload: dict[str, Any], *, jku: str | None = None, **header: Any) -> str:
    """A JWS signed with ``key``; header alg, typ JWT, kid, and jku when given (``header`` overrides)."""
    fields: dict[str, Any] = {"typ": "JWT", "kid": key.kid, **({"jku": jku} if jku else {}), **header}
    return jwt.encode(payload, key.private_key, algorithm=key.alg, headers=fields)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())


def signed_as_is(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An ES384 signature over exactly this header and payload (PyJWT's encode would normalise the header)."""
    signing_input = _segments(header, payload)
    r, s = decode_dss_signature(key.private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA384())))
    return signing_input + "." + _b64(r.to_bytes(48, "big") + s.to_bytes(48, "big"))


def unsigned(payload: dict[str, Any], kid: str) -> str:
    """An ``alg: none`` token (empty signature)."""
    return _segments({"alg": "none", "typ": "JWT", "kid": kid}, payload) + "."


def hmac_signed(secret: bytes, payload: dict[str, Any], kid: str) -> str:
    """An HS256 token; with the issuer's public key PEM as secret it is the classic key-confusion attack."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": kid}, payload)
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(changes)
    return f"{header}.{_b64(json.dumps(decoded).encode())}.{signature}"


@dataclass
class JsonServer:
    """An HTTP server on 127.0.0.1 (free port) answering GETs with JSON per path, counting every request.

    Used as a client's JWKS endpoint and as a FHIR server that must never be called.
    """

    documents: dict[str, Any] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)  # seconds to wait before answering, per path
    hits: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                server.hits[path] += 1
                time.sleep(server.delays.get(path, 0))
                document = server.documents.get(path)
                body = json.dumps(document if document is not None else {"error": "not found"}).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class Scenario:
    """A trusted issuer whose keys are served at ``jku``, an endpoint URL ``aud``, and an attacker's key."""

    iss: str
    aud: str
    jku: str  # on the issuer's allowlist
    foreign_jku: str  # not on it; serves the attacker's key, so fetching it would be exploitable
    key: SigningKey
    attacker: SigningKey  # same kid as ``key``

    def token(self, **claim_changes: Any) -> str:
        return sign(self.key, claims(**{"iss": self.iss, "aud": self.aud, **claim_changes}), jku=self.jku)

    def bearer(self, **claim_changes: Any) -> str:
        return "Bearer " + self.token(**claim_changes)


@dataclass(frozen=True)
class Attack:
    name: str
    authorization: Any  # Callable[[Scenario], str | None]: the Authorization header to send
    reason: str  # what the service logs (a fragment)


def _at(offset: int) -> int:
    return int(time.time()) + offset


ATTACKS: tuple[Attack, ...] = (
    Attack("no token", lambda s: None, "no Authorization header"),
    Attack("not a bearer token", lambda s: "Basic " + s.token(), "is not 'Bearer <token>'"),
    Attack("garbage", lambda s: "Bearer not.a.jwt", "not a JWS"),
    Attack("alg none", lambda s: "Bearer " + unsigned(claims(s.iss, s.aud), s.key.kid), "alg 'none' is not accepted"),
    Attack(
        "HS256 signed with the public key",
        lambda s: "Bearer " + hmac_signed(s.key.public_pem, claims(s.iss, s.aud), s.key.kid),
        "alg 'HS256' is not accepted",
    ),
    Attack(
        "bad signature",
        lambda s: "Bearer " + sign(s.attacker, claims(s.iss, s.aud), jku=s.jku),
        "signature does not verify",
    ),
    Attack(
        "tampered payload",
        lambda s: "Bearer " + tampered(s.token(), tenant="someone-else"),
        "signature does not verify",
    ),
    Attack("expired", lambda s: s.bearer(iat=_at(-420), exp=_at(-120)), "token has expired"),
    Attack("iat in the future", lambda s: s.bearer(iat=_at(120), exp=_at(420)), "iat or nbf is in the future"),
    Attack("wrong aud", lambda s: s.bearer(aud="https://other.example.org/cds-services/x"), "aud does not match"),
    Attack("aud with a trailing slash", lambda s: s.bearer(aud=s.aud + "/"), "aud does not match"),
    Attack("unknown iss", lambda s: s.bearer(iss="https://evil.example.org"), "is not trusted"),
    Attack(
        "foreign jku",
        lambda s: "Bearer " + sign(s.attacker, claims(s.iss, s.aud), jku=s.foreign_jku),
        "jku is not on the issuer's allowlist",
    ),
    Attack(
        "unknown kid",
        lambda s: "Bearer " + sign(make_key(kid="no-such-kid"), claims(s.iss, s.aud), jku=s.jku),
        "no key with kid 'no-such-kid'",
    ),
    Attack(
        "alg not the key's",
        lambda s: "Bearer " + sign(make_key("RS384", kid=s.key.kid), claims(s.iss, s.aud), jku=s.jku),
        "does not match the key's alg",
    ),
    Attack("no jti", lambda s: s.bearer(jti=None), "required claim jti is missing"),
    Attack("no exp", lambda s: s.bearer(exp=None), "required claim exp is missing"),
    Attack("no iat", lambda s: s.bearer(iat=None), "required claim iat is missing"),
    Attack("lifetime of a day", lambda s: s.bearer(exp=_at(86400)), "exp is more than"),
    Attack("typ not JWT", lambda s: "Bearer " + sign(s.key, claims(s.iss, s.aud), jku=s.jku, typ="at+jwt"), "typ"),
    Attack(
        "crit header",
        lambda s: "Bearer " + sign(s.key, claims(s.iss, s.aud), jku=s.jku, crit=["exp"]),
        "not a JWS",
    ),
)
