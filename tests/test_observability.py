"""Observability: one JSON log line per request, and Prometheus metrics that add up over gunicorn workers."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from gunicorn import glogging
from prometheus_client.parser import text_string_to_metric_families
from support.hookcalls import PATIENT_ID, SERVICE_IDS, cramp_condition, empty_prefetch, hook_request, searchset
from support.live import serve

from cds_service.server.cli import gunicorn_options
from cds_service.server.logs import JsonFormatter

PV = SERVICE_IDS["patient-view"]
TOKEN = "tok-SECRET-observability-4711"
SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def cramps_on_furosemide_with_low_potassium() -> dict[str, Any]:
    """A prefetch that fires the diuretic-hypokalaemia rule at the fixture time (2026-11-01)."""
    prefetch = empty_prefetch()
    prefetch["patient"]["name"] = [{"family": "Lastname-Not-Logged", "given": ["Firstname"]}]
    prefetch["labs"] = searchset({
        "resourceType": "Observation", "id": "k-1", "status": "final", "subject": SUBJECT,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "effectiveDateTime": "2026-10-28T08:00:00Z",
        "valueQuantity": {"value": 3.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    })
    prefetch["conditions"] = searchset(cramp_condition())
    prefetch["medrequests"] = searchset({
        "resourceType": "MedicationRequest", "id": "furosemide-1", "status": "active", "intent": "order",
        "subject": SUBJECT, "authoredOn": "2026-06-01",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313988"}], "text": "furosemide 40 MG"},
    })
    return prefetch


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The per-request log lines, as the JSON formatter writes them."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "cds_service.requests"]


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


@pytest.mark.parametrize("value", [
    {"Observation": 3}, ["a", 1.5, None], datetime(2026, 11, 1, tzinfo=UTC), 2**70, {7: "number key"}, "lone \ud800",
])
def test_every_field_value_is_written_as_one_line_of_json(value: Any) -> None:
    record = logging.makeLogRecord(
        {"name": "cds_service.requests", "levelname": "INFO", "msg": "request", "field": value}
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    line.encode("utf-8")  # writable to any UTF-8 stream
    parsed = json.loads(line)
    assert parsed["msg"] == "request" and parsed["logger"] == "cds_service.requests" and "field" in parsed


def test_a_hook_call_is_one_json_line_with_what_operators_need(client, logged) -> None:
    body = hook_request("patient-view", cramps_on_furosemide_with_low_potassium())
    response = client.post(f"/cds-services/{PV}", json=body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert cards, "the scenario should fire at least one card"

    [line] = request_lines(logged)
    assert line["msg"] == "request" and line["level"] == "INFO"
    assert line["hookInstance"] == body["hookInstance"]
    assert (line["method"], line["path"], line["service"], line["status"]) == ("POST", f"/cds-services/{PV}", PV, 200)
    assert line["duration_ms"] > 0
    assert line["cards"] == len(cards)
    assert "diuretic-hypokalemia" in line["rules"] and len(line["rules"]) == len(cards)
    assert line["patient"] == hashlib.sha256(PATIENT_ID.encode()).hexdigest()[:16]
    assert sorted(line["sources"]["prefetch"]) == sorted(k for k, v in body["prefetch"].items() if v is not None)
    assert line["resources"]["Observation"] == sum(
        1
        for v in body["prefetch"].values()
        if v
        for e in v.get("entry", [])
        if e["resource"]["resourceType"] == "Observation"
    )
    others = [r.getMessage() for r in logged.records if r.levelno >= logging.INFO and r.name != "cds_service.requests"]
    assert not others, f"one line per request, but also: {others}"
    text = json.dumps(line)
    assert PATIENT_ID not in text and "Lastname-Not-Logged" not in text and "Firstname" not in text


@pytest.mark.parametrize(
    ("path", "data", "status", "code", "service"),
    [
        (f"/cds-services/{PV}", b"{nope", 400, "CDS-0001", PV),
        ("/cds-services/no-such-service", b"{}", 404, None, "-"),
    ],
)
def test_a_refused_request_is_logged_with_its_status_and_error_code(client, logged, path, data, status, code, service):
    response = client.post(path, data=data, content_type="application/json")
    assert response.status_code == status
    [line] = request_lines(logged)
    assert (line["status"], line["service"]) == (status, service)
    expected_code = code or response.get_json()["issue"][0]["diagnostics"].split(":")[0]
    assert line["error"] == expected_code


def test_fhir_calls_are_logged_with_durations_and_the_token_never(make_app, counting_server, logged) -> None:
    app = make_app(fhir_allowlist=[counting_server.url])
    prefetch = cramps_on_furosemide_with_low_potassium()
    del prefetch["labs"]  # the service must read the labs from the FHIR server
    body = hook_request(
        "patient-view", prefetch, fhirServer=counting_server.url,
        fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                           "scope": "patient/Observation.read", "subject": "cds-service"},
    )
    before = metric_values(app.test_client().get("/metrics").get_data(as_text=True))
    response = app.test_client().post(f"/cds-services/{PV}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)

    [line] = request_lines(logged)
    [call] = line["fhir_calls"]
    assert call["resource"] == "Observation" and call["outcome"] == "ok" and call["ms"] >= 0
    assert len(counting_server.hits) == 1
    everything = logged.text + json.dumps(request_lines(logged))
    assert TOKEN not in everything and PATIENT_ID not in json.dumps(line)
    after = metric_values(app.test_client().get("/metrics").get_data(as_text=True))
    key = {"resource": "Observation", "outcome": "ok"}
    assert sample(after, "cds_fhir_request_duration_seconds_count", **key) == (
        sample(before, "cds_fhir_request_duration_seconds_count", **key) + 1
    )


def test_fhir_errors_are_counted_by_reason(make_app, counting_server, logged) -> None:
    app = make_app(fhir_allowlist=[counting_server.url], fhir_allow_unauthenticated=True, fhir_retries=0)
    counting_server.close()  # nothing listens there any more: connection refused
    prefetch = cramps_on_furosemide_with_low_potassium()
    del prefetch["labs"]
    body = hook_request("patient-view", prefetch, fhirServer=counting_server.url)
    before = metric_values(app.test_client().get("/metrics").get_data(as_text=True))
    response = app.test_client().post(f"/cds-services/{PV}", json=body)
    assert response.status_code == 412
    [line] = request_lines(logged)
    assert line["status"] == 412 and line["fhir_calls"][0]["outcome"] == "connection"
    after = metric_values(app.test_client().get("/metrics").get_data(as_text=True))
    key = {"resource": "Observation", "reason": "connection"}
    assert sample(after, "cds_fhir_errors_total", **key) == sample(before, "cds_fhir_errors_total", **key) + 1


def test_metrics_count_latency_cards_and_feedback(app: Flask) -> None:
    client = app.test_client()
    before = metric_values(client.get("/metrics").get_data(as_text=True))
    body = hook_request("patient-view", cramps_on_furosemide_with_low_potassium())
    response = client.post(f"/cds-services/{PV}", json=body)
    cards = response.get_json()["cards"]
    entry = {"card": cards[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:00:00Z"}
    for _ in range(2):  # the second is a repeat
        assert client.post(f"/cds-services/{PV}/feedback", json={"feedback": [entry]}).status_code == 200
    scraped = client.get("/metrics")
    assert scraped.status_code == 200 and scraped.mimetype == "text/plain"
    after = metric_values(scraped.get_data(as_text=True))

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    hook = {"endpoint": "hook_calls.call_service", "service": PV, "status": "200"}
    assert delta("cds_request_duration_seconds_count", **hook) == 1
    assert delta("cds_request_duration_seconds_bucket", le="+Inf", **hook) == 1
    shown = {"rule": "diuretic-hypokalemia", "indicator": cards[0]["indicator"], "deployment": "active"}
    assert delta("cds_cards_total", **shown) >= 1
    assert sum(delta("cds_cards_total", **dict(labels)) for (name, labels) in after if name == "cds_cards_total") \
        == len(cards)
    assert delta("cds_feedback_entries_total", service=PV, outcome="overridden") == 2
    assert delta("cds_feedback_repeats_total", service=PV) == 1


def test_metrics_can_be_turned_off(make_app) -> None:
    assert make_app(metrics_enabled=False).test_client().get("/metrics").status_code == 404


def test_the_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    logger = logging.getLogger("cds_service.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed %s", ("here",), None,
                                   extra={"hookInstance": "h-1", "when": uuid.UUID(int=1)})
        record.exc_info = __import__("sys").exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "failed here" and line["hookInstance"] == "h-1"
    assert line["when"] == str(uuid.UUID(int=1))  # not JSON by itself: written as text
    assert "ValueError: boom" in line["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


@pytest.mark.slow
def test_metrics_add_up_over_gunicorn_workers_and_every_log_line_is_json(tmp_path: Path) -> None:
    batch, calls = 24, 0
    def call(base: str) -> int:
        body = hook_request("patient-view", cramps_on_furosemide_with_low_potassium())
        return requests.post(f"{base}/cds-services/{PV}", json=body, timeout=10).status_code

    with serve(tmp_path, env={"CDS_NOW": "2026-11-01T00:00:00Z"}, workers=2) as base:
        with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent connections, so both workers take some
            for _ in range(20):  # the kernel picks the worker that accepts: call until both have answered
                assert list(pool.map(call, [base] * batch)) == [200] * batch
                calls += batch
                if len(_hook_call_pids(tmp_path)) == 2:
                    break
        counts = set()
        for _ in range(6):  # whichever worker answers the scrape reports the sum over both
            values = metric_values(requests.get(f"{base}/metrics", timeout=5).text)
            counts.add(sample(values, "cds_request_duration_seconds_count",
                              endpoint="hook_calls.call_service", service=PV, status="200"))
        assert counts == {calls}
    lines = [json.loads(text) for text in _log_of(tmp_path).splitlines() if text.strip()]  # all JSON
    hooks = [line for line in lines if line.get("path") == f"/cds-services/{PV}"]
    assert len(hooks) == calls
    assert len({line["pid"] for line in hooks}) == 2, "both workers should have answered hook calls"
    assert any(line["logger"] == "gunicorn.error" for line in lines)


def test_gunicorn_builds_no_access_lines_the_service_writes_its_own() -> None:
    """With serve's logging configuration stock gunicorn builds every access line's fields, then drops the line."""
    logger_class = gunicorn_options("127.0.0.1", 8080, 2, 4, "INFO")["logger_class"]
    assert issubclass(logger_class, glogging.Logger)
    logger = object.__new__(logger_class)  # without setup(), which would reconfigure this process's logging
    logger.access(None, None, {}, 0.0)
    with pytest.raises(AttributeError):  # the stock method reads its configuration and these arguments
        glogging.Logger.access(logger, None, None, {}, 0.0)


def _log_of(tmp_path: Path) -> str:
    [log] = tmp_path.glob("serve-*.log")
    return log.read_text()


def _hook_call_pids(tmp_path: Path) -> set[int]:
    """The workers that have logged a hook call so far (a line still being written is not read)."""
    complete = _log_of(tmp_path).rpartition("\n")[0]
    lines = [json.loads(text) for text in complete.splitlines() if text.strip()]
    return {line["pid"] for line in lines if line.get("path") == f"/cds-services/{PV}"}
