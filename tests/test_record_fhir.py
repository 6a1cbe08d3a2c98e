"""The record layer against a real FHIR server (Medplum's engine, tests/fhir_server): queries, paging, faults."""
from __future__ import annotations

import copy
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from support.record_scenario import (
    OPERATION_OUTCOME,
    PATIENT_ID,
    expected_ids,
    hook_call,
    ids_of,
    lab,
    med_request,
    medication,
    scenario_resources,
)

from cds_service.config import load_config
from cds_service.facts.build import build_facts
from cds_service.facts.terminology import Terminology
from cds_service.record import RecordSettings, build_prefetch_templates, obtain_record
from cds_service.record.templates import CONDITIONS, LABS, MEDREQUESTS, MEDSTATEMENTS, PATIENT, fill
from cds_service.wire.errors import DEADLINE, RECORD_UNAVAILABLE, CdsError
from cds_service.wire.hook_request import HookCall

pytestmark = pytest.mark.fhir

TERMINOLOGY = Terminology.load()
TEMPLATES = build_prefetch_templates(TERMINOLOGY)  # the templates the services publish
NOW = datetime(2025, 7, 1, tzinfo=UTC)
SANDBOX_REQUEST = Path(__file__).resolve().parent / "data" / "requests" / "sandbox-hook-request.json"  # as sent
TOKEN = "test-token-7f3a9c"  # the bearer token the EHR hands over; must never show up in logs


def settings(server_url: str, **overrides: Any) -> RecordSettings:
    return RecordSettings.from_settings(load_config(overrides={"fhir_allowlist": [server_url], **overrides}))


def prefetch_from(server_url: str, keys: tuple[str, ...] = tuple(TEMPLATES)) -> dict[str, Any]:
    """What a prefetching EHR would send for ``keys``: each template run against the server."""
    context = {"patientId": PATIENT_ID}
    return {
        key: requests.get(f"{server_url}/{fill(TEMPLATES[key], context)}", timeout=10).json() for key in keys
    }


@pytest.fixture
def scenario(fhir_server):
    fhir_server.load(scenario_resources())
    return fhir_server


def queried_types(server) -> list[str]:
    """The resource types (or Type/id reads) the server was asked for, in order."""
    return [r["url"].split("?")[0].removeprefix("/fhir/") for r in server.requests()]


# --- the same facts however the data arrives ----------------------------------------------------------------


def _variants(full: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    partial = {k: full[k] for k in (PATIENT, LABS)}
    with_outcomes = {**full, LABS: OPERATION_OUTCOME, MEDREQUESTS: OPERATION_OUTCOME}
    with_null = {**full, MEDSTATEMENTS: None}  # the patient has no MedicationStatement: null means "no data"
    return {"full": full, "partial": partial, "outcomes": with_outcomes, "null": with_null, "none": None}


LABS_SEARCH = "Observation/_search"  # the labs template is long (every analyte's LOINC codes): POST _search
SYMPTOMS_SEARCH = "Observation"


@pytest.mark.parametrize(
    ("variant", "queries"),
    [
        ("full", []),
        ("partial", ["Condition", "MedicationRequest", "MedicationStatement", SYMPTOMS_SEARCH]),
        ("outcomes", ["MedicationRequest", LABS_SEARCH]),
        ("null", []),
        ("none", ["Condition", "MedicationRequest", "MedicationStatement", SYMPTOMS_SEARCH, LABS_SEARCH,
                  f"Patient/{PATIENT_ID}"]),
    ],
)
def test_every_way_of_delivering_the_data_gives_the_same_facts(scenario, variant, queries):
    full = prefetch_from(scenario.base_url)
    reference = build_facts(obtain_record(hook_call(full), TEMPLATES, settings(scenario.base_url)), TERMINOLOGY, NOW)
    assert reference.labs and reference.medications and reference.findings  # the scenario has facts of each kind
    prefetch = _variants(full)[variant]
    before = len(scenario.requests())
    call = hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN)
    record = obtain_record(call, TEMPLATES, settings(scenario.base_url))
    assert ids_of(record.resources) == expected_ids()
    assert record.incomplete == frozenset()
    assert build_facts(record, TERMINOLOGY, NOW) == reference
    assert sorted(queried_types(scenario)[before:]) == sorted(queries)


def test_null_key_is_never_queried(fhir_server):
    prefetch = dict.fromkeys(TEMPLATES)
    record = obtain_record(hook_call(prefetch, fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                           settings(fhir_server.base_url))
    assert record.resources == {}
    assert record.incomplete == frozenset()
    assert fhir_server.requests() == []


def test_search_is_limited_to_the_patient_and_the_template_codes(scenario):
    record = obtain_record(hook_call(fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                           settings(scenario.base_url))
    observations = {o["id"] for o in record.of_type("Observation")}
    assert "k-other" not in observations
    assert "mr-stopped" not in {m["id"] for m in record.of_type("MedicationRequest")}


# --- paging ---------------------------------------------------------------------------------------------


def _many_labs(count: int) -> list[dict[str, Any]]:
    return [lab(f"k-{i:04d}", "2823-3", 4.0, "mmol/L", f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T08:00:00Z")
            for i in range(count)]


def test_searchset_pages_are_followed(fhir_server):
    fhir_server.load([{"resourceType": "Patient", "id": PATIENT_ID}, *_many_labs(250)])
    prefetch = {key: None for key in TEMPLATES if key != LABS}
    record = obtain_record(hook_call(prefetch, fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                           settings(fhir_server.base_url))
    assert len(record.of_type("Observation")) == 250
    assert record.incomplete == frozenset()
    urls = [r["url"] for r in fhir_server.requests()]
    assert len(urls) == 3  # 100 per page (the server's cap on _count=500)
    assert all(r["authorized"] and r["authorization"] for r in fhir_server.requests())


def test_page_cap_marks_the_key_incomplete(fhir_server, caplog):
    fhir_server.load([{"resourceType": "Patient", "id": PATIENT_ID}, *_many_labs(250)])
    prefetch = {key: None for key in TEMPLATES if key != LABS}
    with caplog.at_level(logging.INFO, logger="cds_service.record"):
        record = obtain_record(hook_call(prefetch, fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                               settings(fhir_server.base_url, fhir_max_pages=2))
    assert len(record.of_type("Observation")) == 200
    assert record.incomplete == {LABS}
    assert "incomplete keys labs" in caplog.text


def test_prefetched_bundle_with_a_next_link_is_continued(fhir_server):
    fhir_server.load([{"resourceType": "Patient", "id": PATIENT_ID}, *_many_labs(25)])
    first_page = requests.get(f"{fhir_server.base_url}/Observation", params={"patient": PATIENT_ID, "_count": 10},
                              timeout=10).json()
    assert any(link["relation"] == "next" for link in first_page["link"])
    prefetch = {**dict.fromkeys(TEMPLATES), LABS: first_page}
    record = obtain_record(hook_call(prefetch, fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                           settings(fhir_server.base_url))
    assert len(record.of_type("Observation")) == 25
    assert record.incomplete == frozenset()


def test_next_link_to_another_server_is_not_followed(fhir_server):
    fhir_server.load([{"resourceType": "Patient", "id": PATIENT_ID}, *_many_labs(5)])
    page = requests.get(f"{fhir_server.base_url}/Observation", params={"patient": PATIENT_ID}, timeout=10).json()
    page["link"] = [{"relation": "next", "url": "http://127.0.0.2:9/fhir/Observation?page=2"}]
    prefetch = {**dict.fromkeys(TEMPLATES), LABS: page}
    before = len(fhir_server.requests())
    record = obtain_record(hook_call(prefetch, fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                           settings(fhir_server.base_url))
    assert len(record.of_type("Observation")) == 5
    assert record.incomplete == {LABS}
    assert len(fhir_server.requests()) == before


# --- authorization --------------------------------------------------------------------------------------


def test_bearer_token_is_sent_and_never_logged(scenario, caplog):
    scenario.set_token(TOKEN)
    with caplog.at_level(logging.DEBUG):
        record = obtain_record(hook_call(fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                               settings(scenario.base_url))
    assert ids_of(record.resources) == expected_ids()
    assert all(r["authorized"] for r in scenario.requests())
    assert TOKEN not in caplog.text  # nor the patient id: test_security_leaks.py, with the service's log setup
    assert TOKEN not in repr(record)


def test_401_from_the_fhir_server_answers_412(scenario, caplog):
    scenario.set_token("another-token")
    with caplog.at_level(logging.DEBUG), pytest.raises(CdsError) as raised:
        obtain_record(hook_call(fhir_server=scenario.base_url, token=TOKEN), TEMPLATES, settings(scenario.base_url))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert "401" in str(raised.value)
    assert TOKEN not in caplog.text and TOKEN not in str(raised.value)


def test_open_server_is_called_without_a_token_only_when_allowed(scenario):
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(fhir_server=scenario.base_url), TEMPLATES, settings(scenario.base_url))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert scenario.requests() == []
    record = obtain_record(hook_call(fhir_server=scenario.base_url), TEMPLATES,
                           settings(scenario.base_url, fhir_allow_unauthenticated=True))
    assert ids_of(record.resources) == expected_ids()
    assert not any(r["authorization"] for r in scenario.requests())


# --- faults and the time budget -------------------------------------------------------------------------


def test_hanging_server_is_cut_off_within_the_budget(scenario):
    scenario.hang(5)
    budget = settings(scenario.base_url, hook_budget_seconds=0.8, fhir_budget_margin_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(fhir_server=scenario.base_url, token=TOKEN), TEMPLATES, budget)
    elapsed = time.monotonic() - started
    assert raised.value.kind is DEADLINE
    assert 0.5 < elapsed < budget.hook_budget_seconds  # fetching stops at budget - margin = 0.6 s


def test_one_hanging_key_leaves_the_others_and_is_listed_incomplete(scenario, caplog):
    full = prefetch_from(scenario.base_url)
    prefetch = {k: v for k, v in full.items() if k not in (LABS, CONDITIONS)}
    scenario.hang(5, count=1)  # whichever of the two queries arrives first hangs
    budget = settings(scenario.base_url, hook_budget_seconds=0.8, fhir_budget_margin_seconds=0.2)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="cds_service.record"):
        record = obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES, budget)
    assert time.monotonic() - started < budget.hook_budget_seconds
    assert len(record.incomplete) == 1 and record.incomplete <= {LABS, CONDITIONS}
    assert "incomplete keys" in caplog.text


def test_5xx_then_success_is_retried(scenario):
    prefetch = {**prefetch_from(scenario.base_url)}
    del prefetch[CONDITIONS]
    before = len(scenario.requests())
    scenario.fail(503, count=2)
    record = obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                           settings(scenario.base_url, fhir_retries=2))
    assert ids_of(record.resources) == expected_ids()
    assert queried_types(scenario)[before:] == ["Condition"] * 3


def test_5xx_beyond_the_retries_answers_412(scenario):
    prefetch = {**prefetch_from(scenario.base_url)}
    del prefetch[CONDITIONS]
    scenario.fail(502, count=3)
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                      settings(scenario.base_url, fhir_retries=2))
    assert raised.value.kind is RECORD_UNAVAILABLE


def test_4xx_is_not_retried(scenario):
    prefetch = {**prefetch_from(scenario.base_url)}
    del prefetch[CONDITIONS]
    before = len(scenario.requests())
    scenario.fail(400, count=5)
    with pytest.raises(CdsError):
        obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                      settings(scenario.base_url))
    assert len(scenario.requests()) - before == 1


def test_malformed_json_is_a_failed_key(scenario):
    prefetch = {**prefetch_from(scenario.base_url)}
    del prefetch[CONDITIONS], prefetch[LABS]
    scenario.malformed(count=1)
    record = obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                           settings(scenario.base_url))
    assert len(record.incomplete) == 1 and record.incomplete <= {LABS, CONDITIONS}
    assert any("not valid JSON" in w for w in record.warnings)


def test_redirect_is_not_followed(scenario, counting_server):
    prefetch = {**prefetch_from(scenario.base_url)}
    del prefetch[CONDITIONS]
    scenario.redirect(f"{counting_server.url}/fhir/Condition", count=1)
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                      settings(scenario.base_url))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert counting_server.hits == []


def test_response_size_is_capped(scenario):
    prefetch = {**prefetch_from(scenario.base_url)}
    del prefetch[LABS]
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                      settings(scenario.base_url, fhir_max_response_bytes=500))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert "larger than 500 bytes" in str(raised.value)


# --- medicationReference: contained, included, and read from the server ---------------------------------------


def test_medication_reference_in_its_three_forms(scenario):
    full = prefetch_from(scenario.base_url)
    without_included = copy.deepcopy(full[MEDREQUESTS])
    entries = without_included["entry"]
    without_included["entry"] = [e for e in entries if e["resource"]["resourceType"] != "Medication"]
    prefetch = {**full, MEDREQUESTS: without_included}
    before = len(scenario.requests())
    record = obtain_record(hook_call(prefetch, fhir_server=scenario.base_url, token=TOKEN), TEMPLATES,
                           settings(scenario.base_url))
    assert queried_types(scenario)[before:] == ["Medication/med-hctz"]
    assert ids_of(record.resources) == expected_ids()
    furosemide = next(m for m in record.of_type("MedicationRequest") if m["id"] == "mr-furosemide")
    assert furosemide["contained"][0]["id"] == "m1"  # contained medications stay where they are
    assert record.incomplete == frozenset()


def test_medication_statement_includes_its_medication(fhir_server):
    fhir_server.load([
        {"resourceType": "Patient", "id": PATIENT_ID},
        medication("med-atorva", "617311", "atorvastatin 40 MG Oral Tablet"),
        {"resourceType": "MedicationStatement", "id": "ms-1", "status": "active",
         "subject": {"reference": f"Patient/{PATIENT_ID}"},
         "medicationReference": {"reference": "Medication/med-atorva"}},
    ])
    record = obtain_record(hook_call(fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                           settings(fhir_server.base_url))
    assert {m["id"] for m in record.of_type("Medication")} == {"med-atorva"}
    assert not any(r["url"].startswith("/fhir/Medication/") for r in fhir_server.requests())


def test_missing_medication_marks_its_key_incomplete(fhir_server):
    fhir_server.load([{"resourceType": "Patient", "id": PATIENT_ID},
                      med_request("mr-x", medicationReference={"reference": "Medication/gone"})])
    prefetch = {key: None for key in TEMPLATES if key != MEDREQUESTS}
    prefetch[MEDREQUESTS] = requests.get(f"{fhir_server.base_url}/MedicationRequest",
                                         params={"patient": PATIENT_ID}, timeout=10).json()
    record = obtain_record(hook_call(prefetch, fhir_server=fhir_server.base_url, token=TOKEN), TEMPLATES,
                           settings(fhir_server.base_url))
    assert record.incomplete == {MEDREQUESTS}


def test_draft_order_medication_reference_is_read(fhir_server):
    fhir_server.load([medication("med-simva", "312961", "Simvastatin 20 MG Oral Tablet")])
    call = HookCall.from_request("cramps-order-select", {
        "hookInstance": "d3f1c1a2-0000-4000-8000-000000000001",
        "hook": "order-select",
        "fhirServer": fhir_server.base_url,
        "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "cds-service"},
        "context": {"userId": "Practitioner/1", "patientId": PATIENT_ID, "selections": ["MedicationRequest/d1"],
                    "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": med_request(
                        "d1", status="draft", medicationReference={"reference": "Medication/med-simva"})}]}},
        "prefetch": dict.fromkeys(TEMPLATES),
    })
    record = obtain_record(call, TEMPLATES, settings(fhir_server.base_url))
    assert [m["id"] for m in record.of_type("Medication")] == ["med-simva"]
    assert [d["id"] for d in record.draft_orders] == ["d1"]


# --- the request the public sandbox sends ---------------------------------------------------------------------


def test_sandbox_shaped_request(fhir_server):
    body = json.loads(SANDBOX_REQUEST.read_text())
    prefetched = body["prefetch"]
    fhir_server.load([prefetched["patient"],
                      *(e["resource"] for key in ("hba1c", "meds") for e in prefetched[key]["entry"])])
    body["fhirServer"] = fhir_server.base_url  # the sandbox's own server is not running here
    call = HookCall.from_request("cramps-patient-view", body)
    open_settings = settings(fhir_server.base_url, fhir_allow_unauthenticated=True)
    record = obtain_record(call, TEMPLATES, open_settings)
    patient_id = body["context"]["patientId"]
    assert [p["id"] for p in record.of_type("Patient")] == [patient_id]
    asked = queried_types(fhir_server)
    assert f"Patient/{patient_id}" not in asked  # the prefetched patient is used as given
    assert sorted(asked) == sorted(["Condition", "MedicationRequest", "MedicationStatement", SYMPTOMS_SEARCH,
                                    LABS_SEARCH])
    assert not any(r["authorization"] for r in fhir_server.requests())  # open mode: no token to send
    hba1c = {e["resource"]["id"] for e in prefetched["hba1c"]["entry"]}
    assert hba1c <= {o["id"] for o in record.of_type("Observation")}
    active = {e["resource"]["id"] for e in prefetched["meds"]["entry"] if e["resource"]["status"] == "active"}
    assert {m["id"] for m in record.of_type("MedicationRequest")} == active
    facts = build_facts(record, TERMINOLOGY, NOW)
    assert facts.latest("hba1c").value == 6  # the newest of the five prefetched HbA1c results
    with pytest.raises(CdsError) as raised:
        obtain_record(call, TEMPLATES, settings(fhir_server.base_url))
    assert raised.value.kind is RECORD_UNAVAILABLE
