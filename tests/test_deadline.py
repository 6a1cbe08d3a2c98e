"""The hard deadline: a FHIR server that hangs never makes a hook call hang, fail with 5xx, or fire on absence.

The hanging server accepts every request and holds it (headers never sent, or the headers or the body trickled out
byte by byte)
until the test ends. The service must answer within its budget plus a small slack, with 412 when it got no data
at all, or with the cards whose data is complete, never with a card that relies on data being absent.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from support.hookcalls import PATIENT_ID, SERVICE_IDS, cramp_condition, empty_prefetch, hook_request, searchset
from support.live import serve

from cds_service.record.client import POOL_THREADS

PV = SERVICE_IDS["patient-view"]
BUDGET = 1.0  # seconds; the default is 1.2
SLACK = 0.35  # scheduling, response building, a loaded CI machine
SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the service hangs up on held requests at its deadline: expected, not worth a traceback


class HangingServer:
    """A FHIR server that holds every request until closed: ``mode`` "silent" sends nothing, "trickle" sends
    200 headers and then one body byte every 0.2 s, "trickle-headers" a status line and then one header byte
    every 0.2 s (each read gets a byte well within the read timeout, so only a deadline stops it). Searches of the
    resource types in ``answers`` are answered at once with the Bundle given there."""

    def __init__(self, mode: str, answers: dict[str, dict[str, Any]] | None = None) -> None:
        release = threading.Event()
        self.requests = 0
        self.answers = answers or {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                resource_type = self.path.split("?", 1)[0].removeprefix("/fhir/").split("/", 1)[0]
                if resource_type in server.answers:
                    body = json.dumps(server.answers[resource_type]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not release.wait(0.2):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                elif mode == "trickle-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    self.wfile.flush()
                    while not release.wait(0.2):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                else:
                    release.wait(60)

            do_POST = do_GET  # noqa: N815 - long searches go as POST _search

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._release = release
        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(params=["silent", "trickle", "trickle-headers"])
def hanging(request: pytest.FixtureRequest) -> Iterator[HangingServer]:
    server = HangingServer(request.param)
    try:
        yield server
    finally:
        server.close()


def statin_interaction_patient() -> dict[str, Any]:
    """Cramps on atorvastatin with clarithromycin, and furosemide: statin-interaction fires on medications alone,
    while diuretic-no-recent-electrolytes fires on the absence of a recent potassium, which only a complete labs
    key can show."""
    prefetch = empty_prefetch()
    prefetch["conditions"] = searchset(cramp_condition())
    prefetch["medrequests"] = searchset(
        {"resourceType": "MedicationRequest", "id": "atorvastatin-1", "status": "active", "intent": "order",
         "subject": SUBJECT, "authoredOn": "2026-01-10",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "617311"}],
                                       "text": "atorvastatin 40 MG Oral Tablet"}},
        {"resourceType": "MedicationRequest", "id": "clarithromycin-1", "status": "active", "intent": "order",
         "subject": SUBJECT, "authoredOn": "2026-10-25",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "21212"}], "text": "clarithromycin"}},
        {"resourceType": "MedicationRequest", "id": "furosemide-1", "status": "active", "intent": "order",
         "subject": SUBJECT, "authoredOn": "2026-06-01",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313988"}], "text": "furosemide 40 MG"}},
    )
    return prefetch


def timed_post(client: Any, body: dict[str, Any]) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.post(f"/cds-services/{PV}", json=body)
    return response, time.monotonic() - started


@pytest.fixture
def app_for(make_app):
    def build(server_url: str):
        return make_app(fhir_allowlist=[server_url], fhir_allow_unauthenticated=True, hook_budget_seconds=BUDGET)

    return build


def request_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The fields of the one per-request log line (rule ids of the cards, incomplete keys, FHIR calls)."""
    [record] = [r for r in caplog.records if r.name == "cds_service.requests"]
    return record.__dict__


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def test_with_complete_labs_both_statin_rules_fire(app_for, hanging: HangingServer, logged) -> None:
    """The control: the same patient with an (empty) labs key fires the interaction and the no-potassium card."""
    body = hook_request("patient-view", statin_interaction_patient(), fhirServer=hanging.url)  # labs: empty
    response, _ = timed_post(app_for(hanging.url).test_client(), body)
    assert response.status_code == 200
    assert set(request_line(logged)["rules"]) == {"statin-interaction", "diuretic-no-recent-electrolytes"}
    assert hanging.requests == 0


def test_hanging_labs_answer_in_time_with_only_the_complete_data_cards(app_for, hanging: HangingServer, logged) -> None:
    prefetch = statin_interaction_patient()
    hanging.answers = {"Condition": prefetch.pop("conditions"), "MedicationRequest": prefetch.pop("medrequests")}
    del prefetch["labs"]  # conditions and medications come from the server at once, the labs never do
    body = hook_request("patient-view", prefetch, fhirServer=hanging.url)
    response, seconds = timed_post(app_for(hanging.url).test_client(), body)
    assert seconds < BUDGET + SLACK, f"answered after {seconds:.2f} s"
    assert response.status_code == 200
    line = request_line(logged)
    assert line["rules"] == ["statin-interaction"]  # no "no recent potassium" card: the labs never arrived
    assert line["incomplete"] == ["labs"] and line["status"] == 200
    outcomes = {call["resource"]: call["outcome"] for call in line["fhir_calls"]}
    assert outcomes["Condition"] == outcomes["MedicationRequest"] == "ok"


def test_when_no_queried_key_arrives_the_answer_is_412_not_a_guess(app_for, hanging: HangingServer) -> None:
    prefetch = statin_interaction_patient()
    del prefetch["labs"]  # the only key to query, and it hangs
    body = hook_request("patient-view", prefetch, fhirServer=hanging.url)
    response, seconds = timed_post(app_for(hanging.url).test_client(), body)
    assert seconds < BUDGET + SLACK, f"answered after {seconds:.2f} s"
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["diagnostics"].startswith("CDS-0020")


def test_a_server_that_gives_nothing_in_time_gets_412_in_time(app_for, hanging: HangingServer) -> None:
    body = hook_request("patient-view", {}, fhirServer=hanging.url)  # every key must come from the server
    response, seconds = timed_post(app_for(hanging.url).test_client(), body)
    assert seconds < BUDGET + SLACK, f"answered after {seconds:.2f} s"
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["diagnostics"].startswith("CDS-0020")


def test_held_requests_do_not_starve_later_calls_to_a_healthy_server(make_app, hanging: HangingServer) -> None:
    """Each held request occupies a fetch thread only until its call's deadline, so more hanging calls than
    the pool has threads leave it free for the next call (a trickled body used to hold its thread for good)."""
    healthy = HangingServer("silent", answers={"Observation": searchset()})
    try:
        app = make_app(fhir_allowlist=[hanging.url, healthy.url], fhir_allow_unauthenticated=True,
                       hook_budget_seconds=BUDGET)
        prefetch = statin_interaction_patient()
        del prefetch["labs"]

        def call(server: HangingServer) -> int:
            body = hook_request("patient-view", prefetch, fhirServer=server.url)
            return app.test_client().post(f"/cds-services/{PV}", json=body).status_code

        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(call(hanging))) for _ in range(POOL_THREADS + 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [412] * len(threads)
        time.sleep(0.5)  # past every held request's deadline
        assert call(healthy) == 200
    finally:
        healthy.close()


@pytest.mark.slow
def test_the_production_server_answers_in_time_while_the_fhir_server_hangs(tmp_path, hanging: HangingServer) -> None:
    env = {
        "CDS_NOW": "2026-11-01T00:00:00Z",
        "CDS_FHIR_ALLOWLIST": json.dumps([hanging.url]),
        "CDS_FHIR_ALLOW_UNAUTHENTICATED": "true",
        "CDS_HOOK_BUDGET_SECONDS": str(BUDGET),
    }
    patient = statin_interaction_patient()
    hanging.answers = {"Condition": patient["conditions"], "MedicationRequest": patient["medrequests"]}
    partial = {k: v for k, v in patient.items() if k not in ("labs", "conditions", "medrequests")}  # -> 200
    labs_only = {k: v for k, v in patient.items() if k != "labs"}  # the one queried key hangs -> 412
    with serve(tmp_path, env=env) as base:
        results: list[tuple[int, float]] = []

        def call(prefetch: dict[str, Any]) -> None:
            started = time.monotonic()
            body = hook_request("patient-view", prefetch, fhirServer=hanging.url)
            status = requests.post(f"{base}/cds-services/{PV}", json=body, timeout=10).status_code
            results.append((status, time.monotonic() - started))

        threads = [threading.Thread(target=call, args=(partial if n % 2 else labs_only,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(status for status, _ in results) == [200] * 6 + [412] * 6
    served = [line for line in map(json.loads, _log_lines(tmp_path)) if line.get("logger") == "cds_service.requests"]
    assert len(served) == 12 and max(line["duration_ms"] for line in served) < (BUDGET + SLACK) * 1000, served
    # The budget runs from when a worker thread takes the call. 12 calls on 2 workers x 4 threads: gunicorn's
    # gthread worker accepts connections beyond its threads, so a call may wait up to two rounds for a thread.
    assert max(seconds for _, seconds in results) < 3 * BUDGET + SLACK, results


def _log_lines(tmp_path) -> list[str]:
    [log] = tmp_path.glob("serve-*.log")
    return [text for text in log.read_text().splitlines() if text.startswith("{")]
