"""Requests an external reviewer sent to an installed service, each of which once got a 500 or a wrong status.

Every one must get the right status with a JSON body: 400 for a body that is not Unicode JSON or an envelope that
cannot be read, 413 for a body over the limit however it is framed, 200 for imperfect FHIR content. The property
test at the end sends generated imperfect Observations, Conditions and MedicationRequests to every hook.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hookcalls import (
    SERVICE_IDS,
    assert_operation_outcome,
    assert_valid_response,
    hook_request,
    searchset,
)
from support.live import serve

PV = f"/cds-services/{SERVICE_IDS['patient-view']}"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "requests"
SANDBOX = "https://sandbox.cds-hooks.org"
EHR_FHIR = "https://ehr.example.org/fhir"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def post(client, path: str, body: Any):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def fixture_request(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def feedback_entry(**fields: Any) -> dict[str, Any]:
    return {"card": "c0ffee00-0000-4000-8000-000000000001", "outcome": "overridden",
            "outcomeTimestamp": "2026-11-01T10:00:00.000Z", **fields}


# --------------------------------------------------------------------------------------- text that is not Unicode
def _with_patient_id(value: str) -> dict[str, Any]:
    body = hook_request("patient-view")
    body["context"]["patientId"] = value
    return body


def _with_condition_text(value: str) -> dict[str, Any]:
    body = hook_request("patient-view")
    body["prefetch"]["conditions"] = searchset({"resourceType": "Condition", "id": "c1", "code": {"text": value}})
    return body


LONE_SURROGATES = [
    ("patientId", PV, _with_patient_id("pat\udc00")),
    ("hookInstance", PV, hook_request("patient-view", hookInstance="\ud800")),
    ("FHIR text", PV, _with_condition_text("cramp \ud800")),
    ("feedback card", f"{PV}/feedback", {"feedback": [feedback_entry(card="\ud800")]}),
    ("feedback comment", f"{PV}/feedback", {"feedback": [feedback_entry(overrideReason={"userComment": "x\udfff"})]}),
    ("feedback reason", f"{PV}/feedback",
     {"feedback": [feedback_entry(overrideReason={"reason": {"code": "\udbff", "system": "urn:x"}})]}),
    ("feedback suggestion", f"{PV}/feedback",
     {"feedback": [feedback_entry(outcome="accepted", acceptedSuggestions=[{"id": "\ud800"}])]}),
]


@pytest.mark.parametrize(("path", "body"), [c[1:] for c in LONE_SURROGATES], ids=[c[0] for c in LONE_SURROGATES])
def test_an_unpaired_surrogate_escape_is_malformed_json(client, path, body):
    # json.dumps writes "\ud800": JSON syntax, but no Unicode text (it cannot be UTF-8 encoded, hashed or stored)
    response = post(client, path, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert_operation_outcome(response.get_json(), "CDS-0001")


def test_escaped_surrogate_pairs_and_escaped_backslashes_are_ordinary_text(client):
    body = _with_condition_text("Krämpfe \U0001f642 \\ud800")  # an emoji (a pair when escaped) and a literal "\ud800"
    response = post(client, PV, json.dumps(body, ensure_ascii=True).encode())
    assert response.status_code == 200, response.get_json()
    assert_valid_response(response.get_json())


def test_a_number_too_long_to_read_is_malformed_json_with_a_true_message(client):
    response = post(client, PV, b'{"hook": "patient-view", "x": ' + b"9" * 5000 + b"}")
    assert response.status_code == 400
    body = response.get_json()
    assert_operation_outcome(body, "CDS-0001")
    assert "digits" in body["issue"][0]["diagnostics"]


# --------------------------------------------------------------------------------------- fhirServer and FHIR URLs
@pytest.mark.parametrize("server", ["https://fhir.example.org:99999/r4", "https://fhir.example.org:port/r4",
                                    "http://[::1/fhir"])
@pytest.mark.parametrize("prefetched", [True, False], ids=["prefetched", "not-prefetched"])
def test_an_unreadable_fhir_server_url_is_a_bad_request(client, server, prefetched):
    body = hook_request("patient-view", fhirServer=server)
    if not prefetched:
        del body["prefetch"]
    response = post(client, PV, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert_operation_outcome(response.get_json(), "CDS-0003")


@pytest.fixture
def open_ehr_client(make_app):
    """A service allowed to read EHR_FHIR without a token; no test here makes it send a request."""
    return make_app(fhir_allowlist=[EHR_FHIR], fhir_allow_unauthenticated=True).test_client()


def test_a_medication_url_with_a_bad_port_in_prefetch_is_only_unresolved(open_ehr_client):
    body = hook_request("patient-view", fhirServer=EHR_FHIR)
    body["prefetch"]["medrequests"] = searchset({
        "resourceType": "MedicationRequest", "id": "mr1", "status": "active",
        "medicationReference": {"reference": "https://ehr.example.org:99999/fhir/Medication/m1"},
    })
    response = post(open_ehr_client, PV, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_response(response.get_json())


def test_a_next_link_with_a_bad_port_in_prefetch_is_not_followed(open_ehr_client):
    body = hook_request("patient-view", fhirServer=EHR_FHIR)
    next_page = "https://ehr.example.org:99999/fhir/Observation?p=2"
    body["prefetch"]["labs"]["link"] = [{"relation": "next", "url": next_page}]
    response = post(open_ehr_client, PV, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_response(response.get_json())


@pytest.mark.parametrize("ident", [["m1"], {"value": "m1"}, 7])
def test_a_medication_whose_id_is_not_a_string_is_tolerated(client, ident):
    body = hook_request("patient-view")
    body["prefetch"]["medrequests"] = searchset(
        {"resourceType": "MedicationRequest", "id": "mr1", "status": "active",
         "medicationReference": {"reference": "Medication/m1"}},
    )
    body["prefetch"]["medrequests"]["entry"].append({"resource": {"resourceType": "Medication", "id": ident}})
    response = post(client, PV, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_response(response.get_json())


@pytest.mark.parametrize("limit", [10**400, "1" + "0" * 400])
def test_a_reference_limit_too_large_for_a_float_does_not_cost_the_card(client, limit):
    # the CK card must not be lost because the range holds an absurd number: it is read as if there were no range
    without_range = fixture_request("statin-ck-critical")
    del without_range["prefetch"]["labs"]["entry"][0]["resource"]["referenceRange"]
    expected = post(client, PV, without_range).get_json()["cards"]
    odd = copy.deepcopy(without_range)
    odd["prefetch"]["labs"]["entry"][0]["resource"]["referenceRange"] = [{"high": {"value": limit, "unit": "U/L"}}]
    response = post(client, PV, odd)
    assert response.status_code == 200
    assert expected and [c["summary"] for c in response.get_json()["cards"]] == [c["summary"] for c in expected]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_lab_value_that_is_no_finite_number_is_unusable_not_fatal_to_the_rule(client, literal):
    # Python's JSON reader turns these into float nan/inf; the Observation must count as having no usable value
    without_value = fixture_request("statin-ck-critical")
    del without_value["prefetch"]["labs"]["entry"][0]["resource"]["valueQuantity"]
    expected = post(client, PV, without_value).get_json()["cards"]
    odd = fixture_request("statin-ck-critical")
    odd["prefetch"]["labs"]["entry"][0]["resource"]["valueQuantity"]["value"] = "@@"
    response = post(client, PV, json.dumps(odd).encode().replace(b'"@@"', literal))
    assert response.status_code == 200
    assert expected and [c["summary"] for c in response.get_json()["cards"]] == [c["summary"] for c in expected]


# --------------------------------------------------------------------------------------- feedback and analytics
@pytest.mark.parametrize("moment", ["2026-02-30T10:00:00Z", "2026-13-01T10:00:00Z", "2026-11-01T24:00:00Z",
                                    "0000-01-01T00:00:00Z", "2026-11-01T10:00:00+99:99"])
def test_a_feedback_time_of_the_right_shape_but_no_real_moment_is_a_bad_request(client, moment):
    response = post(client, f"{PV}/feedback", {"feedback": [feedback_entry(outcomeTimestamp=moment)]})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert_operation_outcome(response.get_json(), "CDS-0015")


@pytest.mark.parametrize("query", ["since=0001-01-01T00:00:00%2B01:00", "until=9999-12-31T23:59:59-01:00",
                                   "until=0001-01-02"])
def test_an_analytics_period_beyond_the_calendar_is_a_bad_request(client, query):
    response = client.get(f"/analytics?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert_operation_outcome(response.get_json(), "CDS-0022")


# --------------------------------------------------------------------------------------- the sandbox's path
@pytest.mark.parametrize("path", ["/cds-services", *(f"/cds-services/{sid}" for sid in SERVICE_IDS.values()),
                                  *(f"/cds-services/{sid}/feedback" for sid in SERVICE_IDS.values())])
def test_every_url_the_sandbox_calls_answers_its_preflight(client, path):
    method = "GET" if path == "/cds-services" else "POST"
    response = client.options(path, headers={"Origin": SANDBOX, "Access-Control-Request-Method": method,
                                             "Access-Control-Request-Headers": "authorization,content-type"})
    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX
    assert method in response.headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}


def test_discovery_is_what_the_sandbox_accepts(client):
    services = client.get("/cds-services", headers={"Accept": "application/json"}).get_json()["services"]
    assert services, "the sandbox treats an empty list as a failed discovery"
    assert len({s["id"] for s in services}) == len(services), "the sandbox keeps one service per id"
    assert sorted(s["hook"] for s in services) == sorted(SERVICE_IDS)
    for service in services:
        for template in service["prefetch"].values():
            # the sandbox fills {{context.X}} from root primitive context fields; it never sends encounterId
            assert set(re.findall(r"\{\{(.*?)\}\}", template)) == {"context.patientId"}, template


def test_discovery_with_a_trailing_slash_is_the_same_document(client):
    response = client.get("/cds-services/")
    assert response.status_code == 200
    assert response.get_json() == client.get("/cds-services").get_json()


@pytest.mark.parametrize(("sent", "service"), list(itertools.permutations(sorted(SERVICE_IDS), 2)))
def test_a_valid_request_for_another_hook_is_named_a_hook_mismatch(client, sent, service):
    # not "draftOrders is required": the request is fine for its own hook, it went to the wrong service
    response = post(client, f"/cds-services/{SERVICE_IDS[service]}", hook_request(sent))
    assert response.status_code == 400
    assert_operation_outcome(response.get_json(), "CDS-0004")


def _sandbox_shaped(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the public sandbox sends it: no encounterId, draftOrders without Bundle.type, category an object."""
    shaped = copy.deepcopy(body)
    shaped["context"].pop("encounterId", None)
    orders = shaped["context"]["draftOrders"]
    orders.pop("type", None)
    for entry in orders["entry"]:
        entry["resource"]["category"] = {"coding": [{"code": "outpatient"}]}
        entry["resource"]["id"] = "request-123"
    shaped["fhirServer"] = "https://launch.smarthealthit.org/v/r4/fhir"
    return shaped


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_sandbox_shaped_order_gets_the_same_cards_as_a_tidy_one(client, hook):
    tidy = fixture_request("order-sign-diuretic-low-potassium")
    tidy["hook"] = hook
    tidy["context"]["selections"] = ["MedicationRequest/fx-draft-furosemide"]
    expected = post(client, f"/cds-services/{SERVICE_IDS[hook]}", tidy).get_json()["cards"]
    shaped = _sandbox_shaped(tidy)
    shaped["context"]["selections"] = ["MedicationRequest/request-123"]
    response = post(client, f"/cds-services/{SERVICE_IDS[hook]}", shaped)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_response(response.get_json())
    cards = response.get_json()["cards"]
    assert cards, "the fixture is written to give a card"
    assert [c["summary"] for c in cards] == [c["summary"] for c in expected]
    assert all(c["uuid"] for c in cards), "the sandbox sends feedback only for cards with a uuid"


# --------------------------------------------------------------------------------------- framing, over real HTTP
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    with serve(tmp, env={"CDS_NOW": "2026-11-01T00:00:00Z", "CDS_MAX_BODY_BYTES": "200000"}, workers=1) as base:
        yield base


def _raw_exchange(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_413_not_a_truncated_400(server):
    body = hook_request("patient-view")
    body["padding"] = "x" * 300_000
    data = json.dumps(body).encode()
    response = requests.post(f"{server}{PV}", data=(data[i:i + 65536] for i in range(0, len(data), 65536)),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413, response.text
    assert_operation_outcome(response.json(), "CDS-0010")


@pytest.mark.slow
def test_a_chunked_body_within_the_limit_is_answered(server):
    data = json.dumps(hook_request("patient-view")).encode()
    response = requests.post(f"{server}{PV}", data=iter([data[:100], data[100:]]),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    assert_valid_response(response.json())


@pytest.mark.slow
def test_broken_chunk_framing_is_400_json(server):
    request = (f"POST {PV} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n").encode()
    status, headers, body = _raw_exchange(server, request)
    assert status == 400, body
    assert "json" in headers["content-type"]
    assert_operation_outcome(json.loads(body), "CDS-0021")


# --------------------------------------------------------------------------------------- imperfect FHIR content
# Shapes a field should not have; containers first (hypothesis favours the first alternatives).
JUNK = st.one_of(st.lists(st.integers(0, 9), max_size=2), st.just({"x": [1]}), st.just({}), st.text(max_size=8),
                 st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
CODES = [("http://loinc.org", "2823-3"), ("http://loinc.org", "6298-4"), ("http://loinc.org", "2157-6"),
         ("http://loinc.org", "19123-9"), ("http://loinc.org", "2951-2"), ("http://snomed.info/sct", "55300003"),
         ("http://snomed.info/sct", "45352006"), ("http://hl7.org/fhir/sid/icd-10-cm", "R25.2"),
         (RXNORM, "83367"), (RXNORM, "617311"), (RXNORM, "4603"), (RXNORM, "313988"), ("", "2823-3"),
         (None, "55300003")]
DATES = st.one_of(
    st.sampled_from(["2026", "2026-10", "2026-10-30", "2026-10-30T08:00:00", "2026-10-30T08:00:00Z",
                     "2026-10-30T08:00:00+05:30", "2099-01-01", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2026-02-30", "yesterday", ""]),
    st.dates().map(str), JUNK,
)


def maybe(value: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(value, JUNK)


CODING = st.builds(
    lambda system_code, extra: {**({"system": system_code[0]} if system_code[0] is not None else {}),
                                "code": system_code[1], **extra},
    st.sampled_from(CODES), st.fixed_dictionaries({}, optional={"display": maybe(st.text(max_size=20))}),
)
CONCEPT = maybe(st.fixed_dictionaries({}, optional={
    "coding": st.one_of(st.lists(st.one_of(CODING, JUNK), max_size=3), CODING, JUNK),
    "text": maybe(st.sampled_from(["muscle cramps", "furosemide 40 mg", "atorvastatin", "potassium"])),
}))
STATUS_CONCEPT = st.one_of(
    st.sampled_from(["active", "resolved", "inactive", "entered-in-error", "refuted"]).map(
        lambda code: {"coding": [{"code": code}]}),
    st.sampled_from(["active", "resolved", "refuted"]), JUNK,
)
QUANTITY = maybe(st.fixed_dictionaries({}, optional={
    "value": st.one_of(st.floats(-1e9, 1e9), st.integers(-10**30, 10**30), st.sampled_from(["3.1", "<2", "abc"]), JUNK),
    "comparator": maybe(st.sampled_from(["<", ">=", ""])),
    "unit": maybe(st.sampled_from(["mmol/L", "mEq/L", "U/L", "mg/dL", "", "furlongs"])),
    "code": maybe(st.sampled_from(["mmol/L", "meq/L", "U/L", "mg/dL", "[fur]"])),
    "system": maybe(st.just("http://unitsofmeasure.org")),
}))
PERIOD = maybe(st.fixed_dictionaries({}, optional={"start": DATES, "end": DATES}))
IDS = maybe(st.sampled_from(["a", "b", "m1", "dup"]))
OBSERVATION = st.fixed_dictionaries({"resourceType": st.just("Observation")}, optional={
    "id": IDS, "status": maybe(st.sampled_from(["final", "amended", "preliminary", "entered-in-error"])),
    "code": CONCEPT, "valueQuantity": QUANTITY, "valueString": maybe(st.text(max_size=10)),
    "valueBoolean": JUNK, "valueCodeableConcept": CONCEPT, "effectiveDateTime": DATES, "effectivePeriod": PERIOD,
    "issued": DATES, "interpretation": CONCEPT, "extension": JUNK,
    "referenceRange": maybe(st.lists(maybe(st.fixed_dictionaries({}, optional={
        "low": QUANTITY, "high": QUANTITY, "type": CONCEPT, "appliesTo": JUNK})), max_size=2)),
})
CONDITION = st.fixed_dictionaries({"resourceType": st.just("Condition")}, optional={
    "id": IDS, "code": CONCEPT, "clinicalStatus": STATUS_CONCEPT, "verificationStatus": STATUS_CONCEPT,
    "onsetDateTime": DATES, "onsetPeriod": PERIOD, "abatementDateTime": DATES, "abatementPeriod": PERIOD,
    "recordedDate": DATES,
})
MEDICATION = st.fixed_dictionaries({"resourceType": st.just("Medication")}, optional={
    "id": IDS, "code": CONCEPT, "ingredient": maybe(st.lists(st.fixed_dictionaries({"itemCodeableConcept": CONCEPT}),
                                                             max_size=2)),
})
MEDICATION_REQUEST = st.fixed_dictionaries({"resourceType": st.just("MedicationRequest")}, optional={
    "id": IDS, "status": maybe(st.sampled_from(["active", "on-hold", "completed", "draft", "stopped"])),
    "intent": maybe(st.just("order")), "medicationCodeableConcept": CONCEPT, "authoredOn": DATES,
    "medicationReference": maybe(st.fixed_dictionaries({}, optional={
        "reference": maybe(st.sampled_from(["#m1", "Medication/m1", "urn:uuid:m1", "Medication/gone",
                                            "https://ehr.example.org:99999/Medication/m1"])),
        "display": maybe(st.just("furosemide"))})),
    "contained": maybe(st.lists(MEDICATION, max_size=2)), "doNotPerform": JUNK,
    "dispenseRequest": maybe(st.fixed_dictionaries({}, optional={"validityPeriod": PERIOD})),
    "category": maybe(st.just({"coding": [{"code": "outpatient"}]})),
})


CARDED_FIXTURES = ["statin-ck-critical", "diuretic-hypokalemia-critical", "red-flag-dvt",
                   "encounter-start-diuretic-hypokalemia", "order-select-statin-raised-ck",
                   "order-sign-diuretic-low-potassium"]  # one per hook at least, each answered with a card


def _add(bundle: dict[str, Any], additions: list[Any]) -> None:
    bundle.setdefault("entry", []).extend(additions)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    fixture=st.sampled_from(CARDED_FIXTURES),
    observations=st.lists(OBSERVATION, max_size=4),
    conditions=st.lists(CONDITION, max_size=3),
    requests_=st.lists(st.one_of(MEDICATION_REQUEST, MEDICATION), max_size=3),
    drafts=st.lists(MEDICATION_REQUEST, max_size=2),
    junk_entries=st.lists(maybe(st.fixed_dictionaries({"resource": JUNK})), max_size=2),
    patient=st.fixed_dictionaries({"resourceType": st.just("Patient")}, optional={
        "id": IDS, "gender": maybe(st.sampled_from(["female", "male", "other", "FEMALE"])), "birthDate": DATES}),
)
def test_imperfect_fhir_content_is_always_answered(
    client, caplog, fixture, observations, conditions, requests_, drafts, junk_entries, patient
):
    """A record that gives a card, with imperfect resources and broken entries added: always a valid 200, and no
    rule fails on it (a failing rule is skipped, so its card would be lost without an error status)."""
    caplog.clear()
    body = fixture_request(fixture)
    prefetch = body["prefetch"]
    _add(prefetch["labs"], [{"resource": r} for r in observations] + junk_entries)
    _add(prefetch["symptoms"], [{"resource": r} for r in observations[:1]])
    _add(prefetch["conditions"], [{"resource": r} for r in conditions] + junk_entries)
    _add(prefetch["medrequests"], [{"resource": r} for r in requests_])
    prefetch["patient"] = {**prefetch["patient"], **patient}
    if "draftOrders" in body["context"]:
        _add(body["context"]["draftOrders"], [{"resource": r} for r in drafts] + junk_entries)
    response = post(client, f"/cds-services/{SERVICE_IDS[body['hook']]}", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_response(response.get_json())
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
