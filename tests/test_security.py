"""JWT verification through the Authenticator, with a real JWKS endpoint on 127.0.0.1 and a real database.

Each refusal is checked for its logged reason, so an attack that fails for the wrong reason (e.g. an expired
token that would also have a bad signature) does not pass unnoticed. Over-HTTP tests: test_security_http.py.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from support.tokens import ATTACKS, Attack, JsonServer, Scenario, claims, jwks, make_key, sign, signed_as_is

from cds_service.config import ConfigError, Settings, load_config
from cds_service.security.auth import Authenticator, Claims
from cds_service.security.issuers import SANDBOX_ISSUER, SANDBOX_JKU
from cds_service.security.modes import check_bind_safety
from cds_service.storage.database import open_database, seen_jti
from cds_service.wire.errors import UNAUTHORIZED, CdsError

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/cramps-patient-view"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
FIVE_MINUTES_AGO = datetime.now(UTC) - timedelta(minutes=5)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_database(f"sqlite:///{tmp_path / 'security.sqlite3'}")
    yield engine
    engine.dispose()


@pytest.fixture
def jwks_server() -> Iterator[JsonServer]:
    server = JsonServer()
    yield server
    server.close()


@pytest.fixture
def scenario(jwks_server: JsonServer) -> Scenario:
    key = make_key("ES384")
    attacker = make_key("ES384", kid=key.kid)
    jwks_server.documents["/jwks.json"] = jwks(key)
    jwks_server.documents["/evil/jwks.json"] = jwks(attacker)
    return Scenario(
        iss=ISS,
        aud=AUD,
        jku=jwks_server.url("/jwks.json"),
        foreign_jku=jwks_server.url("/evil/jwks.json"),
        key=key,
        attacker=attacker,
    )


def config(tmp_path: Path, **overrides: Any) -> Settings:
    return load_config(overrides={"data_dir": str(tmp_path), **overrides})


def jku_issuer(scenario: Scenario, **extra: Any) -> dict[str, Any]:
    return {"iss": scenario.iss, "jku_allowlist": [scenario.jku], **extra}


@pytest.fixture
def authenticator(tmp_path: Path, engine: Engine, scenario: Scenario) -> Authenticator:
    return Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)]), engine)


def refusal_reason(auth: Authenticator, header: str | None, caplog: pytest.LogCaptureFixture, aud: str = AUD) -> str:
    """Authenticate expecting a 401; return the reason logged on cds_service.security."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cds_service.security"), pytest.raises(CdsError) as raised:
        auth.authenticate(header, aud)
    assert raised.value.kind is UNAUTHORIZED
    assert raised.value.detail is None
    assert raised.value.headers == {"WWW-Authenticate": "Bearer"}
    refusals = [r.getMessage() for r in caplog.records if r.name == "cds_service.security" and "refused" in r.message]
    assert len(refusals) == 1, caplog.text
    return refusals[0]


# --- acceptance -----------------------------------------------------------------------------------------------


def test_sandbox_shaped_token_from_allowlisted_jku_is_accepted(
    authenticator: Authenticator, scenario: Scenario, jwks_server: JsonServer
) -> None:
    token = scenario.token()
    found = authenticator.authenticate("Bearer " + token, AUD)
    assert isinstance(found, Claims)
    assert (found.iss, found.tenant, found.fhir_servers) == (ISS, None, None)
    assert found.jti and found.exp > time.time()
    assert jwks_server.hits["/jwks.json"] == 1
    assert jwks_server.hits["/evil/jwks.json"] == 0


def test_keys_are_cached_between_tokens(
    authenticator: Authenticator, scenario: Scenario, jwks_server: JsonServer
) -> None:
    for _ in range(3):
        authenticator.authenticate(scenario.bearer(), AUD)
    assert jwks_server.hits["/jwks.json"] == 1


def test_aud_may_be_a_list_and_scheme_is_case_insensitive(authenticator: Authenticator, scenario: Scenario) -> None:
    token = scenario.token(aud=["https://elsewhere.example.org", AUD])
    assert authenticator.authenticate("bearer " + token, AUD) is not None


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256", "RS256"])
def test_each_default_algorithm_verifies_with_an_inline_jwks(tmp_path: Path, engine: Engine, alg: str) -> None:
    key = make_key(alg)
    auth = Authenticator(config(tmp_path, trusted_issuers=[{"iss": ISS, "jwks": jwks(key)}]), engine)
    found = auth.authenticate("Bearer " + sign(key, claims(ISS, AUD)), AUD)
    assert found is not None and found.iss == ISS


def test_jwks_file_and_issuer_policy_reach_the_claims(tmp_path: Path, engine: Engine) -> None:
    key = make_key("RS384")
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps(jwks(key)))
    issuer = {"iss": ISS, "jwks_file": str(path), "fhir_servers": ["https://ehr.example.org/fhir/"], "tenants": ["t1"]}
    auth = Authenticator(config(tmp_path, trusted_issuers=[issuer]), engine)
    found = auth.authenticate("Bearer " + sign(key, claims(ISS, AUD, tenant="t1")), AUD)
    assert found is not None
    assert found.tenant == "t1"
    assert found.fhir_servers == ("https://ehr.example.org/fhir",)


def test_jwks_url_serves_tokens_without_jku(
    tmp_path: Path, engine: Engine, scenario: Scenario, jwks_server: JsonServer
) -> None:
    auth = Authenticator(config(tmp_path, trusted_issuers=[{"iss": ISS, "jwks_url": scenario.jku}]), engine)
    token = sign(scenario.key, claims(ISS, AUD))
    assert auth.authenticate("Bearer " + token, AUD) is not None
    assert auth.authenticate("Bearer " + scenario.token(), AUD) is not None  # jku == jwks_url is allowed
    assert jwks_server.hits["/jwks.json"] == 1


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_attack_is_refused_for_its_reason(
    authenticator: Authenticator,
    scenario: Scenario,
    jwks_server: JsonServer,
    caplog: pytest.LogCaptureFixture,
    attack: Attack,
) -> None:
    reason = refusal_reason(authenticator, attack.authorization(scenario), caplog)
    assert attack.reason in reason
    assert jwks_server.hits["/evil/jwks.json"] == 0


def test_replayed_jti_is_refused(
    authenticator: Authenticator, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    header = scenario.bearer()
    assert authenticator.authenticate(header, AUD) is not None
    assert "was already used" in refusal_reason(authenticator, header, caplog)


def test_jti_is_shared_by_authenticators_on_one_database(
    tmp_path: Path, engine: Engine, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    settings = config(tmp_path, trusted_issuers=[jku_issuer(scenario)])
    first, second = Authenticator(settings, engine), Authenticator(settings, open_database(str(engine.url)))
    jti = "shared-jti"
    assert first.authenticate(scenario.bearer(jti=jti), AUD) is not None
    assert "was already used" in refusal_reason(second, scenario.bearer(jti=jti), caplog)


def test_concurrent_uses_of_one_jti_accept_exactly_one(
    authenticator: Authenticator, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    authenticator.authenticate(scenario.bearer(), AUD)  # warm the key cache
    header = scenario.bearer()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(authenticator.authenticate(header, AUD) is not None)
        except CdsError:
            results.append(False)

    with caplog.at_level(logging.CRITICAL, logger="cds_service.security"):
        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_expired_seen_jti_rows_are_purged(tmp_path: Path, scenario: Scenario, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(seen_jti.insert().values(issuer=ISS, jti="old", expires_at=FIVE_MINUTES_AGO))
    fresh = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)]), engine)
    assert fresh.authenticate(scenario.bearer(), AUD) is not None
    with engine.connect() as conn:
        jtis = conn.execute(select(seen_jti.c.jti)).scalars().all()
    assert "old" not in jtis and len(jtis) == 1


def test_a_jti_can_be_reused_once_its_first_token_has_expired(
    authenticator: Authenticator, scenario: Scenario, engine: Engine
) -> None:
    authenticator.authenticate(scenario.bearer(), AUD)  # the purge of this instance has run now
    with engine.begin() as conn:
        conn.execute(seen_jti.insert().values(issuer=ISS, jti="reused", expires_at=FIVE_MINUTES_AGO))
    assert authenticator.authenticate(scenario.bearer(jti="reused"), AUD) is not None
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(seen_jti).where(seen_jti.c.jti == "reused")).scalar()
    assert count == 1


def test_tenant_must_be_on_the_issuer_allowlist(
    tmp_path: Path, engine: Engine, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario, tenants=["t1"])]), engine)
    assert auth.authenticate(scenario.bearer(tenant="t1"), AUD) is not None
    assert "tenant 't2' is not allowed" in refusal_reason(auth, scenario.bearer(tenant="t2"), caplog)
    assert "tenant None is not allowed" in refusal_reason(auth, scenario.bearer(), caplog)


def test_algorithm_off_the_configured_list_is_refused(
    tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    key = make_key("ES256")
    settings = config(tmp_path, trusted_issuers=[{"iss": ISS, "jwks": jwks(key)}], jwt_algorithms=["ES384"])
    auth = Authenticator(settings, engine)
    assert "alg 'ES256' is not accepted" in refusal_reason(auth, "Bearer " + sign(key, claims(ISS, AUD)), caplog)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


class _FailOnError(logging.Handler):
    """Turns an error log (an unexpected exception during verification) into a test failure."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        raise AssertionError(f"unexpected verification failure: {record.getMessage()}")


@pytest.fixture(scope="module")
def strict_authenticator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Authenticator, Scenario]]:
    """An authenticator trusting an inline JWKS, on which any unexpected failure raises."""
    tmp = tmp_path_factory.mktemp("fuzz-jwt")
    key = make_key("ES384")
    scenario = Scenario(ISS, AUD, "https://ehr.example.org/jwks.json", "", key, key)
    engine = open_database(f"sqlite:///{tmp / 'db.sqlite3'}")
    issuer = {"iss": ISS, "jwks": jwks(key), "jku_allowlist": [scenario.jku]}
    handler = _FailOnError()
    logging.getLogger("cds_service.security").addHandler(handler)
    yield Authenticator(config(tmp, trusted_issuers=[issuer]), engine), scenario
    logging.getLogger("cds_service.security").removeHandler(handler)
    engine.dispose()


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    header_changes=st.dictionaries(st.sampled_from(["alg", "kid", "jku", "typ", "crit", "x5u"]), json_values),
    claim_changes=st.dictionaries(st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "jti", "tenant"]), json_values),
)
def test_any_header_or_claim_values_are_refused_cleanly(
    strict_authenticator: tuple[Authenticator, Scenario], header_changes: dict[str, Any], claim_changes: dict[str, Any]
) -> None:
    """Validly signed by the trusted key, whatever the values: accepted or a 401, never an unexpected error."""
    auth, scenario = strict_authenticator
    header = {"alg": "ES384", "typ": "JWT", "kid": scenario.key.kid, "jku": scenario.jku, **header_changes}
    token = signed_as_is(scenario.key, header, {**claims(ISS, AUD), **claim_changes})
    try:
        auth.authenticate("Bearer " + token, AUD)
    except CdsError as error:  # a refusal is fine; any other exception fails the test
        assert error.kind is UNAUTHORIZED  # noqa: PT017 - either outcome is allowed, so pytest.raises does not fit


# --- JWKS fetching --------------------------------------------------------------------------------------------


def test_unknown_kid_triggers_exactly_one_refresh(
    authenticator: Authenticator, scenario: Scenario, jwks_server: JsonServer, caplog: pytest.LogCaptureFixture
) -> None:
    authenticator.authenticate(scenario.bearer(), AUD)
    assert jwks_server.hits["/jwks.json"] == 1
    stranger = make_key(kid="rotated-later")
    for _ in range(3):
        refusal_reason(authenticator, "Bearer " + sign(stranger, claims(ISS, AUD), jku=scenario.jku), caplog)
    assert jwks_server.hits["/jwks.json"] == 2


def test_rotated_key_is_picked_up_by_the_refresh(
    tmp_path: Path, engine: Engine, scenario: Scenario, jwks_server: JsonServer
) -> None:
    auth = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)], jwks_min_refresh_seconds=0), engine)
    assert auth.authenticate(scenario.bearer(), AUD) is not None
    rotated = make_key("ES384")
    jwks_server.documents["/jwks.json"] = jwks(scenario.key, rotated)
    assert auth.authenticate("Bearer " + sign(rotated, claims(ISS, AUD), jku=scenario.jku), AUD) is not None
    assert jwks_server.hits["/jwks.json"] == 2


def test_keys_are_fetched_again_once_the_cache_expires(
    tmp_path: Path, engine: Engine, scenario: Scenario, jwks_server: JsonServer
) -> None:
    settings = config(tmp_path, trusted_issuers=[jku_issuer(scenario)], jwks_cache_seconds=0)
    auth = Authenticator(settings, engine)
    for _ in range(3):
        assert auth.authenticate(scenario.bearer(), AUD) is not None
    assert jwks_server.hits["/jwks.json"] == 3


def test_unreachable_jwks_is_refused_and_not_retried_at_once(
    tmp_path: Path, engine: Engine, scenario: Scenario, jwks_server: JsonServer, caplog: pytest.LogCaptureFixture
) -> None:
    missing = jwks_server.url("/missing.json")
    auth = Authenticator(config(tmp_path, trusted_issuers=[{"iss": ISS, "jwks_url": missing}]), engine)
    token = sign(scenario.key, claims(ISS, AUD))
    assert "no key with kid" in refusal_reason(auth, "Bearer " + token, caplog)
    assert "JWKS fetch from" in caplog.text and "HTTP status 404" in caplog.text
    refusal_reason(auth, "Bearer " + sign(scenario.key, claims(ISS, AUD)), caplog)
    assert jwks_server.hits["/missing.json"] == 1


def test_a_slow_jwks_endpoint_is_given_up_after_the_timeout(
    tmp_path: Path, engine: Engine, scenario: Scenario, jwks_server: JsonServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.delays["/jwks.json"] = 3.0
    auth = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)], jwks_timeout_seconds=0.2), engine)
    started = time.monotonic()
    assert "no key with kid" in refusal_reason(auth, scenario.bearer(), caplog)
    assert time.monotonic() - started < 2.0
    assert "ReadTimeout" in caplog.text


def test_symmetric_keys_in_a_jwks_are_ignored(tmp_path: Path, engine: Engine) -> None:
    oct_key = {"kty": "oct", "kid": "k", "k": "c2VjcmV0", "alg": "HS256"}
    with pytest.raises(ConfigError, match="no EC or RSA signature key"):
        Authenticator(config(tmp_path, trusted_issuers=[{"iss": ISS, "jwks": {"keys": [oct_key]}}]), engine)


# --- the sandbox issuer ---------------------------------------------------------------------------------------


def test_sandbox_issuer_is_untrusted_unless_opted_in(
    tmp_path: Path, engine: Engine, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)]), engine)
    token = sign(make_key(kid=SANDBOX_KID), claims(SANDBOX_ISSUER, AUD), jku=SANDBOX_JKU)
    assert "'https://sandbox.cds-hooks.org' is not trusted" in refusal_reason(auth, "Bearer " + token, caplog)


def test_sandbox_issuer_uses_the_shipped_jwks_without_fetching(
    tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(config(tmp_path, allow_sandbox_issuer=True), engine)
    assert auth.enabled
    assert "private key is public" in caplog.text
    # Signed with another P-384 key under the sandbox's kid: the shipped key is found (no fetch of the public
    # jku happens: the keys are pinned), and the signature check is what fails.
    forged = sign(make_key(kid=SANDBOX_KID), claims(SANDBOX_ISSUER, AUD), jku=SANDBOX_JKU)
    assert "signature does not verify" in refusal_reason(auth, "Bearer " + forged, caplog)
    off_list = sign(make_key(kid=SANDBOX_KID), claims(SANDBOX_ISSUER, AUD), jku="https://evil.example.org/jwks")
    assert "not on the issuer's allowlist" in refusal_reason(auth, "Bearer " + off_list, caplog)


# --- modes and configuration ----------------------------------------------------------------------------------


def test_no_issuer_means_open_with_a_warning(tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cds_service.security"):
        auth = Authenticator(config(tmp_path), engine)
    assert not auth.enabled
    assert auth.authenticate(None, AUD) is None
    assert "authentication is OFF" in caplog.text


def test_auth_required_without_issuers_is_a_configuration_error(tmp_path: Path, engine: Engine) -> None:
    with pytest.raises(ConfigError, match="no trusted issuer"):
        Authenticator(config(tmp_path, auth_required=True), engine)


def test_auth_required_false_turns_checks_off(tmp_path: Path, engine: Engine, scenario: Scenario) -> None:
    auth = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)], auth_required=False), engine)
    assert not auth.enabled


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jwt_algorithms": ["ES384", "HS256"]}, "not allowed: HS256"),
        ({"jwt_algorithms": ["none"]}, "not allowed: none"),
        ({"trusted_issuers": [{"iss": ISS}]}, "needs jwks_url, jwks_file, jwks or a jku_allowlist"),
        ({"trusted_issuers": [{"iss": ISS, "jwks_url": "https://a", "jwks_file": "b"}]}, "only one of"),
        ({"trusted_issuers": [{"iss": ISS, "jwks_url": "https://a", "sub": "x"}]}, r"\[0\]\.sub: unknown key"),
        ({"trusted_issuers": [{"jwks_url": "https://a"}]}, r"trusted_issuers\[0\]\.iss: required"),
        ({"trusted_issuers": [{"iss": ISS, "jwks_url": "/jwks.json"}]}, "jwks_url = '/jwks.json': not an absolute"),
        ({"trusted_issuers": [{"iss": ISS, "jku_allowlist": ["ftp://a/jwks"]}]}, r"\[0\] = 'ftp://a/jwks': not an"),
        ({"trusted_issuers": [{"iss": ISS, "jwks_file": "/nonexistent/jwks.json"}]}, "cannot read jwks_file"),
        ({"trusted_issuers": [{"iss": ISS, "jwks_url": "https://a", "tenants": "t1"}]}, "tenants = 't1': input"),
        (
            {"trusted_issuers": [{"iss": SANDBOX_ISSUER, "jwks_url": "https://a"}], "allow_sandbox_issuer": True},
            "more than once",
        ),
    ],
)
def test_unusable_configuration_is_refused(
    tmp_path: Path, engine: Engine, settings: dict[str, Any], message: str
) -> None:
    settings.setdefault("trusted_issuers", [{"iss": ISS, "jwks_url": "https://ehr.example.org/jwks"}])
    with pytest.raises(ConfigError, match=message):
        Authenticator(config(tmp_path, **settings), engine)


@pytest.mark.parametrize(
    ("public_base_url", "base", "expected"),
    [
        ("", "http://127.0.0.1:5000/", "http://127.0.0.1:5000/cds-services/x"),
        ("https://cds.example.org/", "http://10.0.0.5:8000/", "https://cds.example.org/cds-services/x"),
        ("https://example.org/cds//", "http://internal/", "https://example.org/cds/cds-services/x"),
    ],
)
def test_audience_uses_the_public_base_url(
    tmp_path: Path, engine: Engine, public_base_url: str, base: str, expected: str
) -> None:
    auth = Authenticator(config(tmp_path, public_base_url=public_base_url), engine)
    assert auth.audience_for("/cds-services/x", base) == expected


@pytest.mark.parametrize("bound", ["http://10.0.0.5:8000", "http://0.0.0.0:8080", "http://cds.example.org"])
def test_without_public_base_url_only_a_loopback_server_can_accept_tokens(
    tmp_path: Path, engine: Engine, scenario: Scenario, bound: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve` refuses such a bind; an app served another way (gunicorn on 0.0.0.0 or a unix socket, whose
    SERVER_NAME is then the Host header) refuses every token rather than trust an address clients do not call."""
    auth = Authenticator(config(tmp_path, trusted_issuers=[jku_issuer(scenario)]), engine)
    with pytest.raises(CdsError) as raised:
        auth.audience_for("/cds-services/x", bound)
    assert raised.value.kind is UNAUTHORIZED
    assert "public_base_url is not set" in caplog.text


# --- where an open service may listen -------------------------------------------------------------------------


TRUSTED = {"trusted_issuers": [{"iss": ISS, "jwks_url": "https://ehr.example.org/jwks"}]}
PUBLIC_URL = {"public_base_url": "https://cds.example.org"}


@pytest.mark.parametrize(
    ("host", "settings", "insecure", "refused"),
    [
        ("127.0.0.1", {}, False, None),
        ("127.8.9.10", {}, False, None),
        ("localhost", {}, False, None),
        ("::1", {}, False, None),
        ("[::1]", {}, False, None),
        ("::ffff:127.0.0.1", {}, False, None),
        ("0.0.0.0", {}, False, "--insecure"),
        ("::", {}, False, "--insecure"),
        ("10.1.2.3", {}, False, "--insecure"),
        ("myhost.local", {}, False, "--insecure"),
        ("localhost.evil.example", {}, False, "--insecure"),
        ("0.0.0.0", {}, True, None),
        ("0.0.0.0", {**TRUSTED, **PUBLIC_URL}, False, None),
        ("0.0.0.0", {"allow_sandbox_issuer": True, **PUBLIC_URL}, False, None),
        ("0.0.0.0", TRUSTED, False, "public_base_url"),
        ("10.1.2.3", {"allow_sandbox_issuer": True}, True, "public_base_url"),
        ("127.0.0.1", TRUSTED, False, None),
        ("0.0.0.0", {**TRUSTED, "auth_required": False}, False, "--insecure"),
    ],
)
def test_where_serve_may_listen(host: str, settings: dict[str, Any], insecure: bool, refused: str | None) -> None:
    """Open: loopback only (or --insecure). Authenticated beyond loopback: only with public_base_url, since the
    bound address (0.0.0.0, a pod IP) is not what clients call and the Host header may not stand in for it."""
    message = check_bind_safety(host, load_config(overrides=settings), insecure)
    if refused is None:
        assert message is None
    else:
        assert message is not None and refused in message and host in message and "\n" not in message


# --- where keys may be fetched from --------------------------------------------------------------------------

EVIL_HTTP = "http://ehr.example.org/jwks.json"


@pytest.mark.parametrize(
    ("entry", "refused"),
    [
        ({"jwks_url": EVIL_HTTP}, f"trusted_issuers[0].jwks_url = '{EVIL_HTTP}'"),
        ({"jwks_url": "http://10.0.0.7/jwks.json"}, "jwks_url = 'http://10.0.0.7/jwks.json'"),
        ({"jwks_url": "http://localhost.evil.example/k"}, "jwks_url = 'http://localhost.evil.example/k'"),
        ({"jku_allowlist": ["https://ehr.example.org/a", EVIL_HTTP]}, f"jku_allowlist[1] = '{EVIL_HTTP}'"),
        ({"jwks": {"keys": [make_key().jwk]}, "jku_allowlist": [EVIL_HTTP]}, f"jku_allowlist[0] = '{EVIL_HTTP}'"),
        ({"jwks_url": "https://ehr.example.org/jwks.json"}, None),
        ({"jwks_url": "http://127.0.0.1:8081/jwks.json"}, None),
        ({"jwks_url": "http://localhost:8081/jwks.json"}, None),
        ({"jku_allowlist": ["http://[::1]:8081/jwks.json", "https://ehr.example.org/jwks.json"]}, None),
    ],
)
def test_keys_are_fetched_over_https_only_except_on_loopback(
    tmp_path: Path, engine: Engine, entry: dict[str, Any], refused: str | None
) -> None:
    """A JWKS fetched over plain http to another host could be swapped on the way: refused at start, with a
    message naming the key and the URL."""
    if refused is None:
        assert Authenticator(config(tmp_path, trusted_issuers=[{"iss": ISS, **entry}]), engine).enabled
        return
    with pytest.raises(ConfigError) as raised:
        config(tmp_path, trusted_issuers=[{"iss": ISS, **entry}])
    assert f"{refused}: must be an https URL (http only on loopback)" in str(raised.value)
