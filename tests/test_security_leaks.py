"""What a careless or hostile client puts in a request never comes back out: not in an error body, not in a log
line at any level (the service's own loggers, werkzeug's, gunicorn's and the HTTP client libraries'), whatever
shape the secret has and wherever it stands in the request."""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from support.fhir_server import CountingServer
from support.hookcalls import SERVICE_IDS, hook_request
from support.live import free_port, serve
from support.wsgi_server import running

from cds_service import create_app
from cds_service.wire.validation import describe, first_error

SECRET = "eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJsZWFrIn0.leak-me-if-you-can-8f3a1c"  # shaped like a JWT
SECRET_NUMBER = 73914062958317
SECRET_ID = "patient-never-logged-5d1e9b"
# What must appear nowhere: the secrets whole, and distinctive pieces of them (a cut-off echo leaks too).
NEEDLES = (SECRET, "leak-me-if-you-can", "eyJzdWIiOiJsZWFrIn0", str(SECRET_NUMBER), SECRET_ID, "never-logged")
SERVICE = SERVICE_IDS["patient-view"]
GOOD_AUTHORIZATION = {
    "access_token": SECRET,
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.read",
    "subject": "cds-service",
}
FEEDBACK_ENTRY = {
    "card": "5f1d1f44-7f5e-4c3e-9a53-55e5e1b0a0a1",
    "outcome": "overridden",
    "outcomeTimestamp": "2026-01-01T00:00:00Z",
}

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Put ``value`` at the slash-separated ``path`` of a request (creating objects on the way)."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = body
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _base_request() -> dict[str, Any]:
    return hook_request(
        "patient-view", fhirServer="https://fhir.example.org/r4", fhirAuthorization=dict(GOOD_AUTHORIZATION)
    )


# Every wrong (and some right) place a careless EHR could put its access token or a patient id.
HOOK_ATTACKS: dict[str, Mutation] = {
    "fhirAuthorization as a string": _set("fhirAuthorization", "Bearer " + SECRET),
    "fhirAuthorization as a list": _set("fhirAuthorization", [SECRET]),
    "fhirAuthorization as a number": _set("fhirAuthorization", SECRET_NUMBER),
    "fhirAuthorization keyed by the token": _set("fhirAuthorization", {SECRET: SECRET}),
    "access_token as a list": _set("fhirAuthorization/access_token", [SECRET]),
    "access_token as an object": _set("fhirAuthorization/access_token", {"value": SECRET}),
    "access_token as a number": _set("fhirAuthorization/access_token", SECRET_NUMBER),
    "token_type holding the token": _set("fhirAuthorization/token_type", SECRET),
    "expires_in holding the token": _set("fhirAuthorization/expires_in", SECRET),
    "scope as a list": _set("fhirAuthorization/scope", [SECRET]),
    "token in extension": _set("extension", {"token": SECRET, SECRET: SECRET_ID}),
    "extension as a string": _set("extension", SECRET),
    "token in context/userId": _set("context/userId", SECRET),
    "token as context/userId's id": _set("context/userId", "Practitioner/" + SECRET),
    "patientId as a list": _set("context/patientId", [SECRET_ID]),
    "patientId as a number": _set("context/patientId", SECRET_NUMBER),
    "patientId too long": _set("context/patientId", SECRET_ID * 20),
    "token in an extra context field": _set("context/" + SECRET, SECRET_ID),
    "context as a string": _set("context", SECRET),
    "prefetch key as a string": _set("prefetch/patient", SECRET),
    "prefetch key named by the token": _set("prefetch/" + SECRET, SECRET_ID),
    "prefetch as a list": _set("prefetch", [SECRET, SECRET_ID]),
    "prefetch patient id": _set("prefetch/patient/id", SECRET_ID),
    "an earlier FHIR version's resource named by the id": _set(
        "prefetch/medrequests",
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "MedicationOrder", "id": SECRET_ID}}]},
    ),
    "unknown top-level key named by the token": _set(SECRET, SECRET_ID),
    "hook named by the token": _set("hook", SECRET),
    "hook as a list": _set("hook", [SECRET]),
    "hookInstance holding the token": _set("hookInstance", SECRET),
    "hookInstance too long": _set("hookInstance", SECRET * 5),
    "hookInstance as an object": _set("hookInstance", {SECRET: SECRET_ID}),
    "fhirServer with the token as user": _set("fhirServer", f"https://{SECRET}@fhir.example.org/r4"),
    "fhirServer with the token as port": _set("fhirServer", f"https://fhir.example.org:{SECRET}/r4"),
    "fhirServer with the token in the query": _set("fhirServer", f"https://fhir.example.org/r4?token={SECRET}"),
    "fhirServer not a URL": _set("fhirServer", SECRET + " " + SECRET_ID),
}
FEEDBACK_ATTACKS: dict[str, Mutation] = {
    "card holding the token": _set("feedback/0/card", SECRET),
    "card as a list": _set("feedback/0/card", [SECRET]),
    "outcome holding the token": _set("feedback/0/outcome", SECRET),
    "outcomeTimestamp holding the token": _set("feedback/0/outcomeTimestamp", SECRET),
    "outcomeTimestamp not a real day": _set("feedback/0/outcomeTimestamp", "2026-02-30T00:00:00+00:00"),
    "override reason keyed by the token": _set("feedback/0/overrideReason", {SECRET: SECRET_ID}),
    "override reason code as a number": _set("feedback/0/overrideReason", {"reason": {"code": SECRET_NUMBER}}),
    "acceptedSuggestions ids": _set("feedback/0/acceptedSuggestions", [{"id": [SECRET]}]),
    "feedback as a string": _set("feedback", SECRET),
    "unknown feedback key named by the token": _set("feedback/0/" + SECRET, SECRET_ID),
    "extension as a number": _set("extension", SECRET_NUMBER),
}


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


def logged_text(records: list[logging.LogRecord]) -> str:
    """Every captured record as it would be written: the message, and all its fields (``extra`` included)."""
    return "\n".join(record.getMessage() + json.dumps(record.__dict__, default=str) for record in records)


def attack_bodies() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, path under the service, body) for every attack on the hook and feedback endpoints."""
    for name, mutate in HOOK_ATTACKS.items():
        body = _base_request()
        mutate(body)
        yield name, "", body
    for name, mutate in FEEDBACK_ATTACKS.items():
        body = {"feedback": [dict(FEEDBACK_ENTRY)]}
        mutate(body)
        yield name, "/feedback", body


# --- the schema errors themselves -------------------------------------------------------------------------------


def test_schema_errors_name_the_place_and_the_rule_never_the_value() -> None:
    """Every validator kind, with the secret as the wrong value and as a property name the schema does not know."""
    schema = {
        "type": "object",
        "properties": {
            "type": {"type": "object"},
            "enum": {"enum": ["a", "b"]},
            "const": {"const": "Bundle"},
            "pattern": {"type": "string", "pattern": "^[a-z]+$"},
            "format": {"type": "string", "format": "ipv4"},
            "minLength": {"type": "string", "maxLength": 5},
            "closed": {"type": "object", "additionalProperties": False},
            "unevaluated": {"type": "object", "properties": {"a": {}}, "unevaluatedProperties": False},
            "names": {"type": "object", "propertyNames": {"maxLength": 3}},
            "oneOf": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "anyOf": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
            "not": {"not": {"type": "string"}},
            "items": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            "never": False,
            "open": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "dependentRequired": {"type": ["dependent"]},
        "required": ["type", "absent"],
    }
    document = {
        "type": SECRET,
        "enum": SECRET,
        "const": SECRET,
        "pattern": SECRET,
        "format": SECRET,
        "minLength": SECRET,
        "closed": {SECRET: SECRET},
        "unevaluated": {SECRET: SECRET_ID},
        "names": {SECRET: 1},
        "oneOf": SECRET_NUMBER,
        "anyOf": SECRET,
        "not": SECRET,
        "items": [SECRET, SECRET],
        "never": SECRET,
        "open": {SECRET: SECRET},
    }
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = list(validator.iter_errors(document))
    kinds = {error.validator for error in errors}
    assert kinds >= {
        "type", "required", "dependentRequired", "enum", "const", "pattern", "format", "maxLength",
        "additionalProperties", "unevaluatedProperties", "oneOf", "anyOf", "not", "uniqueItems",
        None,
    }
    echoed = {error.validator for error in errors if leaks(error.message)}
    assert echoed >= {"type", "enum", "pattern", "format", "maxLength", "additionalProperties", "oneOf"}  # the risk
    for error in errors:
        line = describe(error)
        assert not leaks(line), line
    lines = [describe(error) for error in errors]
    assert "at type: expected type object" in lines  # a name the project's schemas define is kept ...
    assert 'at *: expected one of "a", "b"' in lines  # ... any other is not: it could be a token
    assert "at (root): type requires dependent" in lines


@pytest.mark.parametrize("name", HOOK_ATTACKS)
def test_request_schema_errors_hold_no_secret(name: str) -> None:
    body = _base_request()
    HOOK_ATTACKS[name](body)
    assert not leaks(first_error("request", body) or "")


@pytest.mark.parametrize(
    "shape", [SECRET, [SECRET], {SECRET: SECRET_ID}, SECRET_NUMBER], ids=["string", "list", "object", "number"]
)
def test_no_position_in_a_request_echoes_what_was_put_there(shape: Any) -> None:
    """The secret, in four shapes, in place of every value of a full request and under every object."""
    base = _base_request()
    for path in _paths(base):
        places = [path, f"{path}/{SECRET}"] if isinstance(_at(base, path), dict) else [path]
        for place in places:
            body = copy.deepcopy(base)
            _set(place, copy.deepcopy(shape))(body)
            assert not leaks(first_error("request", body) or ""), place


def _paths(value: Any, prefix: str = "") -> Iterator[str]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = f"{prefix}/{key}" if prefix else str(key)
        yield path
        yield from _paths(item, path)


def _at(value: Any, path: str) -> Any:
    for part in path.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# --- over HTTP, with every log line captured ---------------------------------------------------------------------


@pytest.fixture
def open_app(tmp_path: Path) -> Iterator[str]:
    with running(create_app({"data_dir": str(tmp_path), "log_level": "DEBUG"})) as base:
        yield base


def test_no_secret_in_any_answer_or_log_line(open_app: str, caplog: pytest.LogCaptureFixture) -> None:
    statuses: dict[str, int] = {}
    with caplog.at_level(logging.DEBUG):
        for name, suffix, body in attack_bodies():
            answer = requests.post(f"{open_app}/cds-services/{SERVICE}{suffix}", json=body, timeout=30)
            statuses[name] = answer.status_code
            assert not leaks(answer.text), (name, answer.text)
            assert not leaks(json.dumps(dict(answer.headers))), name
    assert not leaks(logged_text(caplog.records))
    assert {"cds_service.requests", "werkzeug"} <= {record.name for record in caplog.records}
    assert statuses["fhirAuthorization as a string"] == 400
    assert statuses["hookInstance holding the token"] == 200  # accepted: a string, though not the UUID it should be
    assert statuses["prefetch patient id"] == 200
    assert statuses["outcomeTimestamp not a real day"] == 400


@pytest.fixture
def fhir() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


def fetching_request(fhir_server: str) -> dict[str, Any]:
    """Nothing prefetched: the service must search ``fhir_server`` with the patient id and the access token."""
    body = hook_request("patient-view", prefetch={}, fhirServer=fhir_server, fhirAuthorization=dict(GOOD_AUTHORIZATION))
    body["context"]["patientId"] = SECRET_ID
    return body


def test_fhir_searches_at_debug_leave_no_patient_id_or_token_in_the_logs(
    tmp_path: Path, fhir: CountingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The HTTP client libraries log every request URL at DEBUG, and urllib3 its retries (with the URL) at
    WARNING: a search names the patient. Also a FHIR server that refuses connections, to make urllib3 retry."""
    closed = f"http://127.0.0.1:{free_port()}"
    settings = {"data_dir": str(tmp_path), "log_level": "DEBUG", "fhir_allowlist": [fhir.url, closed]}
    with running(create_app(settings)) as base, caplog.at_level(logging.DEBUG):
        for server in (fhir.url, closed):
            answer = requests.post(f"{base}/cds-services/{SERVICE}", json=fetching_request(server), timeout=30)
            assert answer.status_code in (200, 412), answer.text
            assert not leaks(answer.text)
    assert any(SECRET_ID in hit for hit in fhir.hits)  # the searches did carry the id ...
    assert any(headers.get("Authorization") == "Bearer " + SECRET for headers in fhir.headers)  # ... and the token
    assert {"cds_service.requests", "cds_service.record"} & {record.name for record in caplog.records}
    assert not leaks(logged_text(caplog.records))  # ... which no logger wrote down


@pytest.mark.slow
def test_under_gunicorn_at_debug_nothing_reaches_the_log(tmp_path: Path, fhir: CountingServer) -> None:
    """The production server's whole output (gunicorn's master and workers, every library) at DEBUG."""
    env = {"CDS_LOG_LEVEL": "DEBUG", "CDS_FHIR_ALLOWLIST": json.dumps([fhir.url])}
    with serve(tmp_path, env=env) as base:
        for _name, suffix, body in attack_bodies():
            answer = requests.post(f"{base}/cds-services/{SERVICE}{suffix}", json=body, timeout=30)
            assert not leaks(answer.text)
        answer = requests.post(f"{base}/cds-services/{SERVICE}", json=fetching_request(fhir.url), timeout=30)
        assert answer.status_code == 200, answer.text
    assert any(SECRET_ID in hit for hit in fhir.hits)
    output = "\n".join(path.read_text(errors="replace") for path in tmp_path.glob("serve-*.log"))
    assert '"level": "DEBUG"' in output or '"level":"DEBUG"' in output
    assert not leaks(output)


def test_a_secret_in_the_url_or_the_media_type_stays_out_of_answers_and_request_lines(
    open_app: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a client puts in the path or the Content-Type header is never echoed in an error or the request line."""
    with caplog.at_level(logging.DEBUG, logger="cds_service"):
        unknown = requests.post(f"{open_app}/cds-services/{SECRET}", json=_base_request(), timeout=30)
        nowhere = requests.get(f"{open_app}/{SECRET}/{SECRET_ID}", timeout=30)
        media = requests.post(f"{open_app}/cds-services/{SERVICE}", data=b"{}", timeout=30,
                              headers={"Content-Type": f"text/plain; token={SECRET}"})
    assert (unknown.status_code, nowhere.status_code, media.status_code) == (404, 404, 415)
    for answer in (unknown, nowhere, media):
        assert not leaks(answer.text), answer.text
    lines = [r for r in caplog.records if r.name == "cds_service.requests"]
    paths = [getattr(r, "path", None) for r in lines]
    assert paths == ["/cds-services/<service_id>", "(no route)", f"/cds-services/{SERVICE}"]
    assert not leaks(logged_text(lines))
