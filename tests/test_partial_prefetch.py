"""A partial prefetch: a lab Bundle holding the first 500 of a patient's 1,500 labs and a ``next`` link.

The service completes it with its own date-filtered search (one query) instead of walking the Bundle's pages,
against the real FHIR engine (tests/fhir_server) and through the real app, unless the page, as sent, lists its
labs newest first back past the look-back (its next pages hold older labs only); other partial Bundles are walked
and stop at a page wholly older than the key's look-back, but only when the page is listed newest first.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from conftest import FIXTURE_NOW
from support.hookcalls import PATIENT_ID, SERVICE_IDS, cramp_condition, hook_request, searchset
from support.record_scenario import hook_call, lab, med_request
from support.wsgi_server import running

from cds_service.config import load_config
from cds_service.evaluation import Runtime
from cds_service.facts.build import first_day_within
from cds_service.facts.terminology import Terminology
from cds_service.record import RecordSettings, build_prefetch_templates, obtain_record
from cds_service.record.templates import LABS, Lookback, fill

pytestmark = pytest.mark.fhir

NOW = datetime.fromisoformat(FIXTURE_NOW)  # the evaluation time of make_app's apps
TEMPLATES = build_prefetch_templates(Terminology.load())
LAB_COUNT = 1500
FIRST_PAGE = 500
# the first day of the shipped rules' longest lab look-back, with the facts layer's margin
LOOKBACK_FLOOR = first_day_within(NOW, Runtime.load(load_config()).fact_windows.lab_lookback)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# (LOINC, unit, value in the last three weeks, value before): low potassium and a high CK lately
ANALYTES = [("2823-3", "mmol/L", 2.9, 4.2), ("2157-6", "U/L", 2500, 120), ("2951-2", "mmol/L", 140, 140),
            ("19123-9", "mg/dL", 2.0, 2.0), ("2160-0", "mg/dL", 0.9, 0.9)]


def labs_oldest_first() -> list[dict[str, Any]]:
    """1,500 labs evenly over eight years up to two days before NOW, oldest first."""
    step = timedelta(days=8 * 365) / LAB_COUNT
    found = []
    for i in range(LAB_COUNT):
        when = NOW - timedelta(days=8 * 365) + step * i
        code, unit, lately, before = ANALYTES[i % len(ANALYTES)]
        value = lately if NOW - when < timedelta(days=21) else before
        found.append(lab(f"lab-{i:04d}", code, value, unit, when.isoformat(), PATIENT_ID))
    return found


def other_resources() -> dict[str, list[dict[str, Any]]]:
    """Every prefetch key but the labs: cramps on furosemide and atorvastatin."""
    drugs = [("mr-furosemide", "313988", "furosemide 40 MG Oral Tablet"),
             ("mr-atorvastatin", "617311", "atorvastatin 40 MG Oral Tablet")]
    return {
        "patient": [{"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1950-02-01"}],
        "symptoms": [],
        "conditions": [cramp_condition()],
        "medrequests": [
            med_request(mr_id, patient_id=PATIENT_ID,
                        medicationCodeableConcept={"coding": [{"system": RXNORM, "code": code, "display": text}]})
            for mr_id, code, text in drugs
        ],
        "medstatements": [],
    }


@pytest.fixture
def history(fhir_server) -> Any:
    """The FHIR server holding the patient's whole record."""
    fhir_server.load([*labs_oldest_first(), *(r for group in other_resources().values() for r in group)])
    return fhir_server


def first_page(server_url: str, labs: list[dict[str, Any]], *, sort: str = "date") -> dict[str, Any]:
    """A searchset holding ``labs`` as the first page of a lab search, with a ``next`` link to the rest on the
    server (the Medplum test server pages 100 at a time: an EHR's larger first page is built here)."""
    bundle = searchset(*labs)
    query = fill(TEMPLATES[LABS], {"patientId": PATIENT_ID}).replace("_sort=-date", f"_sort={sort}")
    bundle["link"] = [{"relation": "next", "url": f"{server_url}/{query.replace('_count=500', '_count=100')}"
                                                  f"&_offset={len(labs)}"}]
    return bundle


def prefetch_with(labs: dict[str, Any]) -> dict[str, Any]:
    others = {key: searchset(*resources) for key, resources in other_resources().items()}
    return {**others, "patient": other_resources()["patient"][0], LABS: labs}


def cards_of(response: requests.Response | Any) -> list[dict[str, Any]]:
    """The cards without their uuids, which are fresh on every call (from a test client's or a real HTTP answer)."""
    body = response.json() if isinstance(response, requests.Response) else response.get_json()
    assert response.status_code == 200, body
    return [{k: v for k, v in card.items() if k not in ("uuid", "suggestions")}
            | {"suggestions": [{k: v for k, v in s.items() if k != "uuid"} for s in card.get("suggestions", [])]}
            for card in body["cards"]]


def request_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    [line] = [r for r in caplog.records if r.name == "cds_service.requests" and r.__dict__.get("hookInstance")]
    caplog.clear()
    return line


def lab_searches(server) -> list[dict[str, Any]]:
    """The Observation searches the server received, each with its parameters."""
    found = []
    for request in server.requests():
        path, _, query = request["url"].partition("?")
        if path.startswith("/fhir/Observation"):
            found.append({"path": path, "params": parse_qs(request["form"] or query)})
    return found


def test_a_partial_lab_prefetch_is_completed_by_one_date_filtered_search(make_app, history, caplog):
    labs = labs_oldest_first()
    app = make_app(fhir_allowlist=[history.base_url], fhir_allow_unauthenticated=True)
    service = f"/cds-services/{SERVICE_IDS['patient-view']}"
    caplog.set_level(logging.INFO)
    full = cards_of(app.test_client().post(service, json=hook_request("patient-view", prefetch_with(searchset(*labs)))))
    assert {"Potassium" in card["summary"] or "CK" in card["summary"] for card in full} >= {True}  # recent labs fire
    request_line(caplog)
    partial = hook_request("patient-view", prefetch_with(first_page(history.base_url, labs[:FIRST_PAGE])),
                           fhirServer=history.base_url)
    answered = cards_of(app.test_client().post(service, json=partial))
    assert answered == full
    line = request_line(caplog)
    assert line.incomplete == [] and LABS in line.sources["prefetch"]
    searches = lab_searches(history)
    # one search (its 185 results come in two pages of the server's 100), none of the prefetch's next link pages
    assert [search["path"] for search in searches] == ["/fhir/Observation/_search", "/fhir/Observation"]
    assert all(search["params"]["date"] == [f"ge{LOOKBACK_FLOOR.isoformat()}"] for search in searches)
    assert all(search["params"]["patient"] == [PATIENT_ID] for search in searches)
    assert {(call["resource"], call["via"], call["outcome"]) for call in line.fhir_calls} == {
        ("Observation", "completion", "ok")}


def test_a_failing_completion_marks_the_labs_incomplete(make_app, history, caplog):
    labs = labs_oldest_first()
    app = make_app(fhir_allowlist=[history.base_url], fhir_allow_unauthenticated=True)
    service = f"/cds-services/{SERVICE_IDS['patient-view']}"
    old_labs_only = hook_request("patient-view", prefetch_with(searchset(*labs[:FIRST_PAGE])))
    caplog.set_level(logging.INFO)
    absence = [card["summary"] for card in cards_of(app.test_client().post(service, json=old_labs_only))]
    request_line(caplog)
    assert any(" no potassium " in summary for summary in absence)  # complete but years old: absence is concluded
    partial = hook_request("patient-view", prefetch_with(first_page(history.base_url, labs[:FIRST_PAGE])),
                           fhirServer=history.base_url)
    history.fail(500, count=1)  # not retried: a 500 is not transient
    response = app.test_client().post(service, json=partial)
    line = request_line(caplog)
    assert line.incomplete == [LABS]
    assert [(call["via"], call["outcome"]) for call in line.fhir_calls] == [("completion", "http_5xx")]
    assert len(lab_searches(history)) == 1  # no page walk after the failed search
    assert not {card["summary"] for card in cards_of(response)} & set(absence)


def hook_over_http(app: Any, prefetch: dict[str, Any], fhir_server: str) -> requests.Response:
    """A patient-view call to ``app`` served over real HTTP."""
    with running(app) as base:
        return requests.post(f"{base}/cds-services/{SERVICE_IDS['patient-view']}", timeout=60,
                             json=hook_request("patient-view", prefetch, fhirServer=fhir_server))


def newest_first(count: int) -> list[dict[str, Any]]:
    """The ``count`` newest labs, newest first (the template's own ``_sort=-date`` order)."""
    return labs_oldest_first()[::-1][:count]


def full_prefetch_cards(app: Any, caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The cards for the whole lab history prefetched."""
    service = f"/cds-services/{SERVICE_IDS['patient-view']}"
    full = cards_of(app.test_client().post(service, json=hook_request("patient-view", prefetch_with(
        searchset(*labs_oldest_first())))))
    assert {"Potassium" in card["summary"] or "CK" in card["summary"] for card in full} >= {True}
    request_line(caplog)
    return full


@pytest.mark.parametrize("page_size", [
    FIRST_PAGE,  # two thirds of the page are older than the look-back: the body reader leaves them out unparsed
    250,  # a quarter of it is older: the body is parsed in full
])
def test_a_newest_first_page_reaching_past_the_look_back_is_not_completed(make_app, history, caplog, page_size):
    page = newest_first(page_size)
    assert page[-1]["effectiveDateTime"][:10] < LOOKBACK_FLOOR.isoformat()
    line = answered_as_in_full(make_app, history, caplog, page)
    assert LABS in line.sources["prefetch"]
    assert lab_searches(history) == []
    [skipped] = line.fhir_calls
    assert (skipped["resource"], skipped["via"], skipped["outcome"]) == ("Observation", "completion", "skipped")
    assert skipped["reason"] == ("the prefetched page lists its entries newest first back to "
                                 f"{page[-1]['effectiveDateTime'][:10]}, before the look-back")


def test_a_newest_first_page_within_the_look_back_is_completed(make_app, history, caplog):
    page = newest_first(150)
    assert page[-1]["effectiveDateTime"][:10] > LOOKBACK_FLOOR.isoformat()
    assert_completed(make_app, history, caplog, page)
    assert all(search["params"]["date"] == [f"ge{LOOKBACK_FLOOR.isoformat()}"] for search in lab_searches(history))


@pytest.mark.parametrize("swapped", [
    (450, 460),  # two labs older than the look-back, which the body reader leaves out, out of order
    (0, 499),  # the newest and the oldest
])
def test_a_page_out_of_newest_first_order_is_completed(make_app, history, caplog, swapped):
    """A page whose next link asks for ``_sort=-date`` but whose entries are not in that order says nothing of
    its next pages: the server's order is checked on the page as sent, left-out entries included."""
    page = newest_first(FIRST_PAGE)
    first, second = swapped
    page[first], page[second] = page[second], page[first]
    assert_completed(make_app, history, caplog, page)
    assert lab_searches(history) != []


def answered_as_in_full(make_app: Any, history: Any, caplog: Any, page: list[dict[str, Any]]) -> Any:
    """The request line of the hook call whose lab prefetch is ``page`` (``_sort=-date`` in its next link), after
    checking that it answered the cards of the full prefetch with a complete record."""
    app = make_app(fhir_allowlist=[history.base_url], fhir_allow_unauthenticated=True)
    caplog.set_level(logging.INFO)
    full = full_prefetch_cards(app, caplog)
    response = hook_over_http(app, prefetch_with(first_page(history.base_url, page, sort="-date")), history.base_url)
    assert cards_of(response) == full
    line = request_line(caplog)
    assert line.incomplete == []
    return line


def assert_completed(make_app: Any, history: Any, caplog: Any, page: list[dict[str, Any]]) -> None:
    """The hook call whose lab prefetch is ``page`` completes it with the service's own search."""
    line = answered_as_in_full(make_app, history, caplog, page)
    assert {(call["via"], call["outcome"]) for call in line.fhir_calls} == {("completion", "ok")}


def record_settings(server_url: str, **overrides: Any) -> RecordSettings:
    return RecordSettings.from_settings(load_config(overrides={"fhir_allowlist": [server_url], **overrides}))


def test_completed_labs_are_each_kept_once(history):
    labs = labs_oldest_first()
    page = labs[: FIRST_PAGE - 5] + labs[-5:]  # five of the newest labs are both prefetched and found again
    call = hook_call({**dict.fromkeys(TEMPLATES), LABS: first_page(history.base_url, page)},
                     fhir_server=history.base_url, token="t", patient_id=PATIENT_ID)
    record = obtain_record(call, TEMPLATES, record_settings(history.base_url),
                           lookbacks={LABS: Lookback(LOOKBACK_FLOOR, search=True)})
    ids = [o["id"] for o in record.of_type("Observation")]
    recent = {lab["id"] for lab in labs if lab["effectiveDateTime"][:10] >= LOOKBACK_FLOOR.isoformat()}
    assert len(ids) == len(set(ids))
    assert set(ids) == {lab["id"] for lab in page} | recent
    assert record.incomplete == frozenset()


@pytest.mark.parametrize(("sort", "pages_fetched", "labs_read"), [
    ("-date", 1, 200),  # newest first: the first all-old page after the prefetched one ends the walk
    ("date", 14, LAB_COUNT),  # oldest first: all-old pages say nothing of the next ones, so all are read
])
def test_the_page_walk_stops_at_an_all_old_page_listed_newest_first(fhir_server, sort, pages_fetched, labs_read):
    fhir_server.load(labs_oldest_first())
    prefetched = requests.get(f"{fhir_server.base_url}/Observation", timeout=10,
                              params={"patient": PATIENT_ID, "_sort": sort, "_count": 100}).json()
    # the look-back lies inside the first page of the newest-first search, so its second page is wholly older
    since = datetime.fromisoformat(labs_oldest_first()[-60]["effectiveDateTime"]).date()
    call = hook_call({**dict.fromkeys(TEMPLATES), LABS: prefetched}, fhir_server=fhir_server.base_url,
                     token="t", patient_id=PATIENT_ID)
    before = len(fhir_server.requests())
    record = obtain_record(call, TEMPLATES, record_settings(fhir_server.base_url, fhir_max_pages=20),
                           lookbacks={LABS: Lookback(since, search=False)})
    assert len(fhir_server.requests()) - before == pages_fetched
    assert len(record.of_type("Observation")) == labs_read
    assert record.incomplete == frozenset()


def cramp_observations(count: int) -> list[dict[str, Any]]:
    """``count`` cramp Observations (SNOMED CT 55300003) evenly over eight years up to a day before NOW."""
    step = timedelta(days=8 * 365) / count
    return [{"resourceType": "Observation", "id": f"cramp-{i:03d}", "status": "final",
             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
             "subject": {"reference": f"Patient/{PATIENT_ID}"},
             "effectiveDateTime": (NOW - timedelta(days=1) - step * i).isoformat()} for i in range(count)]


def test_a_partial_symptoms_prefetch_is_walked_until_an_all_old_page(make_app, fhir_server, caplog):
    """Symptom searches are not narrowed: their partial Bundle is walked, newest first, and the walk stops at the
    first page older than the symptoms' window (90 days) instead of reading eight years of them."""
    fhir_server.load(cramp_observations(250))
    first = fill(TEMPLATES["symptoms"], {"patientId": PATIENT_ID})
    assert first is not None
    page = requests.get(f"{fhir_server.base_url}/{first.replace('_count=500', '_count=100')}", timeout=10).json()
    assert any(link["relation"] == "next" for link in page["link"])
    prefetch = {**prefetch_with(searchset()), "symptoms": page}
    app = make_app(fhir_allowlist=[fhir_server.base_url], fhir_allow_unauthenticated=True)
    caplog.set_level(logging.INFO)
    before = len(fhir_server.requests())
    response = app.test_client().post(f"/cds-services/{SERVICE_IDS['patient-view']}",
                                      json=hook_request("patient-view", prefetch, fhirServer=fhir_server.base_url))
    cards_of(response)
    line = request_line(caplog)
    assert [(call["via"], call["outcome"]) for call in line.fhir_calls] == [("prefetch_page", "ok")]
    assert len(fhir_server.requests()) - before == 1  # page 2 is wholly older than the window: page 3 is not read
    assert line.incomplete == []
