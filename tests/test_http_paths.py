"""No spelling of a path is redirected, over real HTTP (werkzeug on 127.0.0.1, a free port).

A browser drops a redirected CORS preflight without a visible error: a discovery URL typed with a trailing slash
made the CDS Hooks sandbox call ``/cds-services//{id}``, which was answered with a 308. Repeated slashes are now
merged before routing and a trailing slash is accepted; the viewer's pages, which link relative to ``/viewer/``,
answer a 404 at any other spelling. With authentication on, a token's ``aud`` may name the URL as called or the
route's own URL, never another endpoint.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from support.hookcalls import SERVICE_IDS, assert_operation_outcome, hook_request
from support.tokens import JsonServer, Scenario, jwks, make_key
from support.wsgi_server import running
from werkzeug.routing import Rule

from cds_service import create_app
from cds_service.viewer.examples import shipped_examples

REPO = Path(__file__).resolve().parent.parent
FIXTURE_NOW = "2026-11-01T00:00:00Z"
SANDBOX = "https://sandbox.cds-hooks.org"
PV = SERVICE_IDS["patient-view"]
PREFLIGHT = {"Origin": SANDBOX, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}
send = partial(requests.request, timeout=10, allow_redirects=False)


def fixture_request(name: str) -> dict[str, Any]:
    return json.loads((REPO / "fixtures" / "requests" / f"{name}.json").read_text())


def without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    return value


@pytest.fixture(scope="module")
def open_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, str]]:
    """Authentication off, so the viewer is served too; metrics on."""
    data = tmp_path_factory.mktemp("paths")
    app = create_app({"data_dir": str(data), "now": FIXTURE_NOW, "viewer_enabled": True, "metrics_enabled": True})
    with running(app) as base:
        yield app, base
    app.extensions["cds_service"].issued.close()


def concrete(rule: Rule) -> str:
    """A path the rule matches, with a real service id, example name and static file."""
    values = {"service_id": PV, "name": next(iter(shipped_examples())), "filename": "viewer.js"}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)


def variants(path: str) -> dict[str, str]:
    """Other spellings of ``path``: its trailing slash added or removed, its slashes doubled, two more at the end."""
    return {
        "trailing slash toggled": path[:-1] if path.endswith("/") else path + "/",
        "slashes doubled": path.replace("/", "//"),
        "double slash at the end": path.rstrip("/") + "//",
    }


def test_no_route_is_redirected_at_any_spelling(open_app: tuple[Flask, str]) -> None:
    app, base = open_app
    rules = list(app.url_map.iter_rules())
    assert {r.endpoint for r in rules} >= {"discovery.discovery", "hook_calls.call_service", "feedback.post_feedback",
                                            "analytics.analytics", "health.healthz", "health.readyz",
                                            "metrics.metrics", "viewer.cards_page", "viewer.static"}
    for rule in rules:
        path = concrete(rule)
        for method in ("GET", "POST", "OPTIONS"):
            canonical = send(method, base + path, headers=PREFLIGHT, json={})
            assert not 300 <= canonical.status_code < 400, (method, path)
            for name, variant in variants(path).items():
                answer = send(method, base + variant, headers=PREFLIGHT, json={})
                where = (method, variant, answer.status_code, answer.text[:200])
                assert not 300 <= answer.status_code < 400 and "Location" not in answer.headers, where
                if not (rule.strict_slashes and name != "slashes doubled"):
                    assert answer.status_code == canonical.status_code, where


def test_viewer_pages_answer_only_at_their_own_spelling(open_app: tuple[Flask, str]) -> None:
    """The viewer's pages link relative to /viewer/: any other spelling gets a 404 that says where it is."""
    _app, base = open_app
    refused = send("GET", base + "/viewer")
    assert refused.status_code == 404
    assert_operation_outcome(refused.json(), "CDS-0008")
    assert "/viewer/" in refused.json()["issue"][0]["diagnostics"]
    assert send("GET", base + "/viewer/analytics/").status_code == 404
    assert send("GET", base + "//viewer//").status_code == 200


@pytest.mark.parametrize("path", [f"/cds-services//{PV}", f"/cds-services/{PV}/", f"//cds-services//{PV}//"])
def test_sandbox_preflight_and_hook_call_on_other_spellings(open_app: tuple[Flask, str], path: str) -> None:
    """The answer at another spelling is the canonical one: CORS preflight headers, then the same cards."""
    _app, base = open_app
    canonical = send("OPTIONS", f"{base}/cds-services/{PV}", headers=PREFLIGHT)
    preflight = send("OPTIONS", base + path, headers=PREFLIGHT)
    assert preflight.status_code == canonical.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == SANDBOX
    cors = {k: v for k, v in canonical.headers.items() if k.lower().startswith("access-control-")}
    assert {k: preflight.headers.get(k) for k in cors} == cors
    body = fixture_request("diuretic-hypokalemia-critical")
    expected = send("POST", f"{base}/cds-services/{PV}", json=body, headers={"Origin": SANDBOX})
    answered = send("POST", base + path, json=body, headers={"Origin": SANDBOX})
    assert answered.status_code == expected.status_code == 200, answered.text
    assert answered.json()["cards"]
    assert without_uuids(answered.json()) == without_uuids(expected.json())
    assert answered.headers["Access-Control-Allow-Origin"] == SANDBOX
    entry = {"card": answered.json()["cards"][0]["uuid"], "outcome": "overridden",
             "outcomeTimestamp": "2026-11-01T10:00:00Z"}
    feedback = send("POST", base + path.rstrip("/") + "//feedback/", json={"feedback": [entry]})
    assert feedback.json() == {"received": 1, "stored": 1, "duplicates": 0}


def test_the_log_line_names_the_path_as_called(open_app: tuple[Flask, str], caplog: pytest.LogCaptureFixture) -> None:
    _app, base = open_app
    with caplog.at_level(logging.INFO, logger="cds_service.requests"):
        send("POST", f"{base}/cds-services//{PV}", json=hook_request("patient-view"))
        send("POST", f"{base}/cds-services/{PV}", json=hook_request("patient-view"))
    lines = [r.__dict__ for r in caplog.records if r.name == "cds_service.requests"]
    assert [(line["path"], line.get("path_as_called")) for line in lines] == [
        (f"/cds-services/{PV}", f"/cds-services//{PV}"),
        (f"/cds-services/{PV}", None),
    ]


# --- the JWT aud on other spellings ---------------------------------------------------------------------------

ISS = "https://ehr.example.org"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Scenario]]:
    """An app trusting one issuer; the scenario signs that issuer's tokens (set ``aud`` per call)."""
    keys = JsonServer()
    key = make_key("ES384")
    keys.documents["/jwks.json"] = jwks(key)
    jku = keys.url("/jwks.json")
    settings = {"data_dir": str(tmp_path_factory.mktemp("paths-auth")), "now": FIXTURE_NOW,
                "trusted_issuers": [{"iss": ISS, "jku_allowlist": [jku]}]}
    app = create_app(settings)
    with running(app) as base:
        yield base, Scenario(ISS, "", jku, jku, key, key)
    app.extensions["cds_service"].issued.close()
    keys.close()


OTHER = SERVICE_IDS["order-sign"]


@pytest.mark.parametrize(("called", "aud", "status"), [
    (f"/cds-services//{PV}", f"/cds-services/{PV}", 200),  # the route's own URL
    (f"/cds-services//{PV}", f"/cds-services//{PV}", 200),  # the URL as called: what the sandbox signs
    (f"/cds-services/{PV}/", f"/cds-services/{PV}", 200),
    (f"/cds-services/{PV}/", f"/cds-services/{PV}/", 200),
    (f"/cds-services/{PV}", f"/cds-services//{PV}", 401),  # another spelling than the one called
    (f"/cds-services//{PV}", f"/cds-services/{OTHER}", 401),  # another endpoint
    (f"/cds-services//{PV}", f"/cds-services//{OTHER}", 401),
    (f"/cds-services//{PV}", f"/cds-services/{PV}/feedback", 401),
    (f"/cds-services//{PV}", "/cds-services", 401),
    ("/cds-services/", "/cds-services", 200),
    ("//cds-services", f"/cds-services/{PV}", 401),
])
def test_aud_names_the_url_called_or_its_route(guarded: tuple[str, Scenario], called: str, aud: str,
                                               status: int) -> None:
    base, scenario = guarded
    method = "GET" if called.rstrip("/").endswith("/cds-services") else "POST"
    body = hook_request("patient-view") if method == "POST" else None
    answer = send(method, base + called, json=body,
                  headers={"Authorization": replace(scenario, aud=base + aud).bearer()})
    assert answer.status_code == status, answer.text
    if status == 401:
        assert_operation_outcome(answer.json(), "CDS-0014")
