"""Authentication of the real app over real HTTP (werkzeug on 127.0.0.1, free ports), plus what must never
leave the service: tokens into logs, requests to FHIR servers off the allowlist."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests
from support.fhir_server import CountingServer
from support.hookcalls import SERVICE_IDS, assert_operation_outcome, hook_request
from support.tokens import ATTACKS, Attack, JsonServer, Scenario, claims, jwks, make_key, sign
from support.wsgi_server import running

from cds_service import create_app

get = partial(requests.get, timeout=10)
post = partial(requests.post, timeout=10)
options = partial(requests.options, timeout=10)

ISS = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"  # public_base_url of apps behind a (pretend) proxy
SERVICE = SERVICE_IDS["patient-view"]
FEEDBACK_ENTRY = {
    "card": "5f1d1f44-7f5e-4c3e-9a53-55e5e1b0a0a1",
    "outcome": "overridden",
    "outcomeTimestamp": "2026-01-01T00:00:00Z",
}


class Start(Protocol):
    def __call__(self, **config: Any) -> str: ...


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(**config)`` runs an app (all apps of one test share one database) and returns its base URL."""
    with ExitStack() as stack:

        def launch(**config: Any) -> str:
            return stack.enter_context(running(create_app({"data_dir": str(tmp_path), **config})))

        yield launch


@pytest.fixture
def jwks_server() -> Iterator[JsonServer]:
    server = JsonServer()
    yield server
    server.close()


def trust(jwks_server: JsonServer, aud: str, **issuer_extra: Any) -> tuple[dict[str, Any], Scenario]:
    """Serve a fresh key (and an attacker's) from ``jwks_server``; the issuer entry and a scenario for ``aud``."""
    key = make_key("ES384")
    attacker = make_key("ES384", kid=key.kid)
    jwks_server.documents["/jwks.json"] = jwks(key)
    jwks_server.documents["/evil/jwks.json"] = jwks(attacker)
    jku = jwks_server.url("/jwks.json")
    scenario = Scenario(ISS, aud, jku, jwks_server.url("/evil/jwks.json"), key, attacker)
    return {"iss": ISS, "jku_allowlist": [jku], **issuer_extra}, scenario


def bearer(scenario: Scenario, aud: str) -> dict[str, str]:
    return {"Authorization": replace(scenario, aud=aud).bearer()}


def assert_refused(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_operation_outcome(response.json(), "CDS-0014")
    return response.json()


# --- the attack matrix ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guarded:
    """A running app trusting one issuer, whose keys ``jwks_server`` serves; ``scenario`` targets ``url``."""

    base: str
    url: str  # the patient-view service
    scenario: Scenario
    jwks_server: JsonServer


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """One app for the tests that need no fresh JWKS cache or replay store (each token has its own jti)."""
    jwks_server = JsonServer()
    issuer, scenario = trust(jwks_server, aud="")
    settings = {"data_dir": str(tmp_path_factory.mktemp("guarded")), "trusted_issuers": [issuer]}
    with running(create_app(settings)) as base:
        url = f"{base}/cds-services/{SERVICE}"
        yield Guarded(base, url, replace(scenario, aud=url), jwks_server)
    jwks_server.close()


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_attack_gets_401_with_the_same_body(guarded: Guarded, attack: Attack) -> None:
    authorization = attack.authorization(guarded.scenario)
    headers = {"Authorization": authorization} if authorization is not None else {}
    outcome = assert_refused(post(guarded.url, json=hook_request("patient-view"), headers=headers))
    no_token = assert_refused(post(guarded.url, json=hook_request("patient-view")))
    assert outcome == no_token  # no reason leaks to the client
    assert guarded.jwks_server.hits["/evil/jwks.json"] == 0


def test_sandbox_shaped_token_is_accepted_once(guarded: Guarded) -> None:
    header = {"Authorization": guarded.scenario.bearer()}
    accepted = post(guarded.url, json=hook_request("patient-view"), headers=header)
    assert accepted.status_code == 200, accepted.text
    assert isinstance(accepted.json()["cards"], list)
    assert_refused(post(guarded.url, json=hook_request("patient-view"), headers=header))


def test_every_cds_route_needs_a_token_but_preflight_and_health_do_not(guarded: Guarded) -> None:
    base, url, scenario = guarded.base, guarded.url, guarded.scenario
    assert_refused(get(base + "/cds-services"))
    assert_refused(post(url, json=hook_request("patient-view")))
    assert_refused(post(url + "/feedback", json={"feedback": [FEEDBACK_ENTRY]}))
    assert_refused(post(base + "/cds-services/no-such-service", json={}))
    discovery = get(base + "/cds-services", headers=bearer(scenario, base + "/cds-services"))
    assert discovery.status_code == 200, discovery.text
    headers = bearer(scenario, url + "/feedback")
    feedback = post(url + "/feedback", json={"feedback": [FEEDBACK_ENTRY]}, headers=headers)
    assert feedback.status_code == 200, feedback.text
    preflight = options(
        url,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert get(base + "/healthz").status_code == 200
    assert get(base + "/readyz").status_code == 200


def test_unknown_kid_costs_exactly_one_jwks_refresh(start: Start, jwks_server: JsonServer) -> None:
    issuer, scenario = trust(jwks_server, aud="")
    base = start(trusted_issuers=[issuer])
    aud = base + "/cds-services"
    assert get(aud, headers=bearer(scenario, aud)).status_code == 200
    assert jwks_server.hits["/jwks.json"] == 1
    for _ in range(3):
        token = sign(make_key(kid="unknown"), claims(ISS, aud), jku=scenario.jku)
        assert_refused(get(aud, headers={"Authorization": "Bearer " + token}))
    assert jwks_server.hits["/jwks.json"] == 2


def test_replayed_jti_is_refused_by_another_instance_on_the_same_database(
    start: Start, jwks_server: JsonServer
) -> None:
    issuer, scenario = trust(jwks_server, aud=PUBLIC + "/cds-services")
    first, second = (start(trusted_issuers=[issuer], public_base_url=PUBLIC) for _ in range(2))
    header = {"Authorization": scenario.bearer()}
    assert get(first + "/cds-services", headers=header).status_code == 200
    assert_refused(get(second + "/cds-services", headers=header))


def test_aud_is_the_public_url_behind_a_proxy(start: Start, jwks_server: JsonServer) -> None:
    issuer, scenario = trust(jwks_server, aud="")
    base = start(trusted_issuers=[issuer], public_base_url=PUBLIC + "/")
    assert get(base + "/cds-services", headers=bearer(scenario, PUBLIC + "/cds-services")).status_code == 200
    assert_refused(get(base + "/cds-services", headers=bearer(scenario, base + "/cds-services")))


def test_open_mode_needs_no_token(start: Start) -> None:
    base = start()
    answered = post(f"{base}/cds-services/{SERVICE}", json=hook_request("patient-view"))
    assert answered.status_code == 200, answered.text


# --- aud is never taken from the request's Host header ------------------------------------------------------

OTHER_HOST = "other-deployment.example.org"  # another service that trusts the same issuer
FORGED = {  # what a client may claim about the address it called; none of it may change the expected aud
    "Host": OTHER_HOST,
    "X-Forwarded-Host": OTHER_HOST,
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "Forwarded": f"host={OTHER_HOST};proto=https",
}


@pytest.mark.parametrize("public_base_url", ["", PUBLIC], ids=["bound address", "public_base_url"])
def test_a_token_for_another_deployment_is_refused_whatever_the_host_header(
    start: Start, jwks_server: JsonServer, public_base_url: str
) -> None:
    """A token minted for another deployment, replayed here with that deployment's Host header: 401. The
    expected aud is public_base_url, or without it the address the server is bound to (werkzeug's and
    gunicorn's SERVER_NAME and SERVER_PORT), never what the client says it called."""
    issuer, scenario = trust(jwks_server, aud="")
    base = start(trusted_issuers=[issuer], public_base_url=public_base_url)
    path = "/cds-services"
    for other in (f"http://{OTHER_HOST}", f"https://{OTHER_HOST}"):
        assert_refused(get(base + path, headers={**FORGED, **bearer(scenario, other + path)}))
    own = get(base + path, headers={**FORGED, **bearer(scenario, (public_base_url or base) + path)})
    assert own.status_code == 200, own.text  # the forged headers neither help nor hurt a right token


def test_metrics_need_a_token_when_authentication_is_on(guarded: Guarded) -> None:
    assert_refused(get(guarded.base + "/metrics"))
    scraped = get(guarded.base + "/metrics", headers=bearer(guarded.scenario, guarded.base + "/metrics"))
    assert scraped.status_code == 200 and "cds_request_duration_seconds" in scraped.text


def test_metrics_bind_takes_metrics_off_the_main_port(start: Start) -> None:
    base = start(metrics_bind="127.0.0.1:9")  # served there by `serve` only (test_security_gunicorn.py)
    assert get(base + "/metrics").status_code == 404
    assert get(base + "/healthz").status_code == 200


# --- nothing secret reaches the logs --------------------------------------------------------------------------


def test_no_jwt_or_access_token_reaches_the_logs(guarded: Guarded, caplog: pytest.LogCaptureFixture) -> None:
    access_token = "fhir-access-token-" + "s3cr3t" * 8
    fhir_authorization = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    body = hook_request(
        "patient-view", fhirServer="https://fhir.example.org/r4", fhirAuthorization=fhir_authorization
    )
    headers = [attack.authorization(guarded.scenario) for attack in ATTACKS]
    valid = guarded.scenario.bearer()
    headers += [valid, valid, valid.removeprefix("Bearer ")]  # accepted, replayed, sent without a scheme
    sent = [header for header in headers if header]
    with caplog.at_level(logging.DEBUG):
        for header in sent:
            post(guarded.url, json=body, headers={"Authorization": header})
    assert any(r.name == "cds_service.security" for r in caplog.records)
    logged = caplog.text + "\n".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    secrets = {access_token}
    for header in sent:
        token = header.split(" ")[-1]
        secrets.update(part for part in token.split(".") if len(part) > 16)  # header, payload, signature
    leaked = sorted(secret[:24] for secret in secrets if secret in logged)
    assert not leaked


# --- a fhirServer off the allowlist is never contacted --------------------------------------------------------


@pytest.fixture
def counting() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


def call_with_fhir_server(url: str, server: CountingServer, headers: dict[str, str] | None = None) -> requests.Response:
    """A hook call without prefetch, so every piece of the record has to come from ``server``."""
    authorization = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "x", "subject": "s"}
    body = hook_request("patient-view", prefetch={}, fhirServer=server.url, fhirAuthorization=authorization)
    return post(url, json=body, headers=headers)


def test_fhir_server_off_the_allowlist_receives_no_request(start: Start, counting: CountingServer) -> None:
    base = start(fhir_allowlist=["https://fhir.example.org/r4"])
    answered = call_with_fhir_server(f"{base}/cds-services/{SERVICE}", counting)
    assert answered.status_code == 412, answered.text
    assert counting.hits == []


def test_fhir_server_outside_the_issuers_servers_receives_no_request(
    start: Start, counting: CountingServer, jwks_server: JsonServer
) -> None:
    issuer, scenario = trust(jwks_server, aud=f"{PUBLIC}/cds-services/{SERVICE}", fhir_servers=[PUBLIC + "/fhir"])
    base = start(trusted_issuers=[issuer], fhir_allowlist=[counting.url], public_base_url=PUBLIC)
    answered = call_with_fhir_server(f"{base}/cds-services/{SERVICE}", counting, {"Authorization": scenario.bearer()})
    assert answered.status_code == 412, answered.text
    assert counting.hits == []


def test_allowlisted_fhir_server_is_contacted(start: Start, counting: CountingServer, jwks_server: JsonServer) -> None:
    """The control for the two tests above: the same call reaches the server when both lists allow it."""
    issuer, scenario = trust(jwks_server, aud=f"{PUBLIC}/cds-services/{SERVICE}", fhir_servers=[counting.url])
    base = start(trusted_issuers=[issuer], fhir_allowlist=[counting.url], public_base_url=PUBLIC)
    answered = call_with_fhir_server(f"{base}/cds-services/{SERVICE}", counting, {"Authorization": scenario.bearer()})
    assert answered.status_code == 200, answered.text
    assert counting.hits


@pytest.mark.parametrize(
    ("issuer_servers", "global_allowlist", "contacted"),
    [
        (["self"], [], True),  # the issuer's list is enough: it replaces fhir_allowlist
        ([], ["self"], False),  # an issuer that lists no server allows none, whatever fhir_allowlist says
        (None, ["self"], True),  # an issuer without fhir_servers: fhir_allowlist applies
        (None, [], False),
    ],
    ids=["issuer list only", "issuer list empty", "no issuer list, global", "no list at all"],
)
def test_which_allowlist_applies_to_a_tokens_issuer(
    start: Start,
    counting: CountingServer,
    jwks_server: JsonServer,
    issuer_servers: list[str] | None,
    global_allowlist: list[str],
    contacted: bool,
) -> None:
    """README, Security, FHIR access: the issuer's fhir_servers when it has them, in place of fhir_allowlist."""
    extra = {"fhir_servers": [counting.url for _ in issuer_servers]} if issuer_servers is not None else {}
    issuer, scenario = trust(jwks_server, aud=f"{PUBLIC}/cds-services/{SERVICE}", **extra)
    allowlist = [counting.url for _ in global_allowlist]
    base = start(trusted_issuers=[issuer], fhir_allowlist=allowlist, public_base_url=PUBLIC)
    answered = call_with_fhir_server(f"{base}/cds-services/{SERVICE}", counting, {"Authorization": scenario.bearer()})
    assert answered.status_code == (200 if contacted else 412), answered.text
    assert bool(counting.hits) == contacted


def test_a_token_put_in_the_path_of_an_unknown_service_is_not_logged(
    guarded: Guarded, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused JWT logs the audience it was checked against: for a path naming no service, the route pattern."""
    secret = "eyJhbGciOiJFUzM4NCJ9.path-secret.sig"
    scenario = guarded.scenario
    with caplog.at_level(logging.DEBUG, logger="cds_service"):
        refused = post(f"{guarded.base}/cds-services/{secret}", json={},
                       headers=bearer(scenario, f"{guarded.base}/cds-services/{secret}"))
    assert_refused(refused)
    assert secret not in refused.text
    service_records = [r for r in caplog.records if r.name.startswith("cds_service")]  # not the dev server's line
    assert not [r.getMessage() for r in service_records if secret in r.getMessage() + str(r.__dict__)]
    refusals = [r.getMessage() for r in service_records if r.name == "cds_service.security"]
    assert any("/cds-services/<service_id>" in message for message in refusals)
