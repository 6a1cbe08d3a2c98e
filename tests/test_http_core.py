"""The CDS Hooks envelope over the Flask test client: discovery, the four hooks, errors, CORS, health."""
from __future__ import annotations

import json
import re

import pytest
from support.hookcalls import (
    PREFETCH_KEYS,
    SERVICE_IDS,
    assert_operation_outcome,
    assert_valid_discovery,
    assert_valid_response,
    hook_request,
    sandbox_draft_orders,
)

SANDBOX = "https://sandbox.cds-hooks.org"
LEGAL_TOKENS = {"context.patientId", "context.userId", "context.encounterId", "userPractitionerId",
                "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


def post(client, path, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type=kwargs.pop("content_type", "application/json"), **kwargs)


def test_discovery_lists_one_service_per_hook_with_distinct_ids(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.get_json()
    assert_valid_discovery(body)
    services = {s["hook"]: s for s in body["services"]}
    assert set(services) == set(SERVICE_IDS)
    assert {s["id"] for s in body["services"]} == set(SERVICE_IDS.values())
    assert [s["id"] for s in body["services"]] == sorted(s["id"] for s in body["services"])
    for service in body["services"]:
        assert service["title"] and service["description"] and service["usageRequirements"]
        assert set(service["prefetch"]) == set(PREFETCH_KEYS)


def test_prefetch_templates_use_only_2_0_1_tokens(client):
    for service in client.get("/cds-services").get_json()["services"]:
        for template in service["prefetch"].values():
            tokens = set(re.findall(r"\{\{\s*([^}]*?)\s*\}\}", template))
            assert tokens <= LEGAL_TOKENS, (template, tokens)
            assert "today()" not in template


def test_lab_template_asks_for_blood_and_serum_codes(client):
    labs = client.get("/cds-services").get_json()["services"][0]["prefetch"]["labs"]
    for code in ("2823-3", "6298-4", "2951-2", "2947-0", "17861-6", "49765-1", "19123-9", "2157-6"):
        assert f"http://loinc.org|{code}" in labs


def test_medication_templates_include_the_medication(client):
    prefetch = client.get("/cds-services").get_json()["services"][0]["prefetch"]
    assert "_include=MedicationRequest:medication" in prefetch["medrequests"]
    assert "_include=MedicationStatement:medication" in prefetch["medstatements"]


@pytest.mark.parametrize("hook", sorted(SERVICE_IDS))
def test_each_hook_answers_a_valid_request(client, hook):
    response = post(client, f"/cds-services/{SERVICE_IDS[hook]}", hook_request(hook))
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/json"
    assert_valid_response(response.get_json())


def test_sandbox_order_without_medication_or_bundle_type_is_answered(client):
    body = hook_request("order-select")
    body["context"]["draftOrders"] = sandbox_draft_orders(with_medication=False)
    response = post(client, f"/cds-services/{SERVICE_IDS['order-select']}", body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_extensions_and_unknown_fields_are_ignored(client):
    body = hook_request("patient-view", extension={"org.example.flag": {"a": 1}}, futureField=[1, 2])
    body["context"]["extension"] = {"org.example.ctx": True}
    body["context"]["somethingNew"] = "x"
    response = post(client, f"/cds-services/{SERVICE_IDS['patient-view']}", body)
    assert response.status_code == 200
    assert_valid_response(response.get_json())


def test_null_prefetch_keys_mean_no_data(client):
    prefetch = dict.fromkeys(PREFETCH_KEYS)
    response = post(client, f"/cds-services/{SERVICE_IDS['patient-view']}", hook_request("patient-view", prefetch))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def _without(body, *path):
    target = body
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return body


PV = SERVICE_IDS["patient-view"]
ERRORS = [
    ("malformed JSON", PV, b'{"hook": "patient-view",', 400, "CDS-0001"),
    ("empty body", PV, b"", 400, "CDS-0001"),
    ("JSON array", PV, b"[]", 400, "CDS-0002"),
    ("not UTF-8", PV, b'{"hook": "\xff\xfe"}', 400, "CDS-0001"),
    ("missing hook", PV, _without(hook_request("patient-view"), "hook"), 400, "CDS-0003"),
    ("missing hookInstance", PV, _without(hook_request("patient-view"), "hookInstance"), 400, "CDS-0003"),
    ("missing context", PV, _without(hook_request("patient-view"), "context"), 400, "CDS-0003"),
    ("context not an object", PV, hook_request("patient-view", context="x"), 400, "CDS-0003"),
    ("missing patientId", PV, _without(hook_request("patient-view"), "context", "patientId"), 400, "CDS-0005"),
    ("empty patientId", PV, hook_request("patient-view", context={"userId": "Practitioner/1", "patientId": ""}),
     400, "CDS-0005"),
    ("patientId a number", PV, hook_request("patient-view", context={"userId": "Practitioner/1", "patientId": 7}),
     400, "CDS-0005"),
    ("missing userId", PV, _without(hook_request("patient-view"), "context", "userId"), 400, "CDS-0005"),
    ("prefetch not an object", PV, hook_request("patient-view", prefetch=[]), 400, "CDS-0003"),
    ("prefetch value a string", PV, hook_request("patient-view", {"labs": "x"}), 400, "CDS-0003"),
    ("wrong hook for service", PV, hook_request("order-sign"), 400, "CDS-0004"),
    ("unknown hook", PV, {**hook_request("patient-view"), "hook": "patient-close"}, 400, "CDS-0004"),
    ("encounter-start without encounterId", SERVICE_IDS["encounter-start"],
     _without(hook_request("encounter-start"), "context", "encounterId"), 400, "CDS-0005"),
    ("order-select without selections", SERVICE_IDS["order-select"],
     _without(hook_request("order-select"), "context", "selections"), 400, "CDS-0005"),
    ("order-sign without draftOrders", SERVICE_IDS["order-sign"],
     _without(hook_request("order-sign"), "context", "draftOrders"), 400, "CDS-0005"),
    ("draftOrders not a Bundle", SERVICE_IDS["order-sign"],
     hook_request("order-sign", context={"userId": "Practitioner/1", "patientId": "p", "draftOrders": {"a": 1}}),
     400, "CDS-0005"),
    ("fhirAuthorization without fhirServer", PV,
     hook_request("patient-view", fhirAuthorization={"access_token": "secret-token-abc", "token_type": "Bearer",
                                                     "expires_in": 300, "scope": "patient/*.read", "subject": "x"}),
     400, "CDS-0006"),
    ("unknown service", "no-such-service", hook_request("patient-view"), 404, "CDS-0007"),
    ("no prefetch and no fhirServer", PV, _without(hook_request("patient-view"), "prefetch"), 412, "CDS-0012"),
]


@pytest.mark.parametrize(("name", "service", "body", "status", "code"), ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_requests_get_the_right_status_and_an_operation_outcome(client, name, service, body, status, code):
    response = post(client, f"/cds-services/{service}", body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    assert_operation_outcome(response.get_json(), code)


def test_operation_outcome_in_prefetch_without_fhir_server_is_412(client):
    body = hook_request("patient-view")
    body["prefetch"]["labs"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    response = post(client, f"/cds-services/{PV}", body)
    assert response.status_code == 412
    assert_operation_outcome(response.get_json(), "CDS-0012")


def test_non_json_media_type_is_refused(client):
    response = post(client, f"/cds-services/{PV}", json.dumps(hook_request("patient-view")), content_type="text/plain")
    assert response.status_code == 415
    assert_operation_outcome(response.get_json(), "CDS-0011")


def test_deep_nesting_is_refused(client):
    body = hook_request("patient-view")
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["a"] = {}
        node = node["a"]
    body["extension"] = deep
    response = post(client, f"/cds-services/{PV}", body)
    assert response.status_code == 400
    assert_operation_outcome(response.get_json(), "CDS-0016")


def test_body_over_the_limit_is_413(make_app):
    app = make_app(max_body_bytes=10_000)
    body = hook_request("patient-view")
    body["padding"] = "x" * 20_000
    response = post(app.test_client(), f"/cds-services/{PV}", body)
    assert response.status_code == 413
    assert_operation_outcome(response.get_json(), "CDS-0010")


def test_too_many_prefetch_entries_is_413(make_app):
    app = make_app(max_prefetch_entries=3)
    body = hook_request("patient-view")
    body["prefetch"]["labs"]["entry"] = [{"resource": {"resourceType": "Observation", "id": str(i)}} for i in range(4)]
    response = post(app.test_client(), f"/cds-services/{PV}", body)
    assert response.status_code == 413
    assert_operation_outcome(response.get_json(), "CDS-0017")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/cds-services/{PV}"), ("PUT", "/cds-services"), ("DELETE", f"/cds-services/{PV}"),
    ("GET", f"/cds-services/{PV}/feedback"),
])
def test_wrong_method_is_405(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"] or "GET" in response.headers["Allow"]
    assert_operation_outcome(response.get_json(), "CDS-0009")


def test_unknown_path_is_404_json(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert_operation_outcome(response.get_json(), "CDS-0008")


def test_a_bug_is_500_with_an_operation_outcome_and_no_trace(make_app, monkeypatch):
    app = make_app()
    import cds_service.evaluation as evaluation

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom in the rule engine")

    monkeypatch.setattr(evaluation, "evaluate", broken)
    response = post(app.test_client(), f"/cds-services/{PV}", hook_request("patient-view"))
    assert response.status_code == 500
    assert_operation_outcome(response.get_json(), "CDS-0019")
    assert "boom" not in response.get_data(as_text=True)


def test_cors_preflight_is_answered_for_the_sandbox(client):
    response = client.options(
        f"/cds-services/{PV}",
        headers={"Origin": SANDBOX, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080", SANDBOX])
def test_cors_headers_are_on_success_and_error_responses(client, origin):
    ok = client.get("/cds-services", headers={"Origin": origin})
    bad = post(client, f"/cds-services/{PV}", b"{", headers={"Origin": origin})
    assert ok.headers["Access-Control-Allow-Origin"] == origin
    assert bad.status_code == 400 and bad.headers["Access-Control-Allow-Origin"] == origin


def test_cors_refuses_other_origins(client):
    response = client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_headers_are_only_for_requests_with_an_origin(client):
    """An EHR's server-to-server call sends no Origin and needs no CORS headers; a browser always sends one."""
    response = post(client, f"/cds-services/{PV}", b"{")
    assert response.status_code == 400
    headers = response.headers.keys()
    assert not [name for name in headers if name.lower().startswith("access-control-")]


def test_cors_origins_are_configurable(make_app):
    client = make_app(cors_origins=["https://ehr.example.org"]).test_client()
    assert client.get("/cds-services", headers={"Origin": "https://ehr.example.org"}).headers[
        "Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Access-Control-Allow-Origin" not in client.get("/cds-services", headers={"Origin": SANDBOX}).headers


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"rules": True, "database": True}


def test_readiness_fails_when_the_database_is_gone(make_app, tmp_path):
    database = tmp_path / "db.sqlite3"
    app = make_app(database_url=f"sqlite:///{database}")
    app.extensions["cds_service"].engine.dispose()
    for path in tmp_path.glob("db.sqlite3*"):
        path.unlink()
    database.mkdir()  # a directory where the database file was: every connection fails
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] is False
