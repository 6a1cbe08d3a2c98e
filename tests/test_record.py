"""The record layer without a FHIR server: templates, prefetch semantics, and which servers may be called."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import replace

import pytest
from support.fhir_server import CountingServer
from support.record_scenario import (
    OPERATION_OUTCOME,
    PATIENT_ID,
    ScenarioCodes,
    hook_call,
    ids_of,
    lab,
    med_request,
    scenario_resources,
    searchset,
)

from cds_service.config import Settings, load_config
from cds_service.facts.terminology import Terminology
from cds_service.record import RecordSettings, build_prefetch_templates, client, obtain_record
from cds_service.record.access import FhirEndpoint, is_absolute, normalize_base
from cds_service.record.templates import (
    CONDITIONS,
    LABS,
    MEDREQUESTS,
    MEDSTATEMENTS,
    PATIENT,
    SYMPTOMS,
    fill,
    resource_type_of,
)
from cds_service.wire.errors import FHIR_SERVER_NOT_ALLOWED, RECORD_UNAVAILABLE, CdsError
from cds_service.wire.hook_request import HookCall

TEMPLATES = build_prefetch_templates(ScenarioCodes())
TOKEN = "unit-token-0d9e"


def settings(**overrides) -> RecordSettings:
    return RecordSettings.from_settings(load_config(overrides=overrides))


def full_prefetch() -> dict:
    """The scenario as a prefetching EHR would send it, every key filled."""
    resources = scenario_resources()
    mine = [r for r in resources if r.get("subject", {}).get("reference") == f"Patient/{PATIENT_ID}"]

    def of(rtype: str, *codes: str) -> list[dict]:
        return [r for r in mine if r["resourceType"] == rtype
                and (not codes or r["code"]["coding"][0]["code"] in codes)]

    meds = [r for r in of("MedicationRequest") if r["status"] == "active"]
    hctz = next(r for r in resources if r["id"] == "med-hctz")
    return {
        PATIENT: next(r for r in resources if r["id"] == PATIENT_ID),
        LABS: searchset(of("Observation", "2823-3", "2157-6", "19123-9")),
        SYMPTOMS: searchset(of("Observation", "55300003")),
        CONDITIONS: searchset(of("Condition")),
        MEDREQUESTS: searchset([*meds, hctz]),
        MEDSTATEMENTS: searchset([]),
    }


# --- templates --------------------------------------------------------------------------------------------


def test_templates_cover_the_keys_with_only_the_patient_token():
    assert list(TEMPLATES) == [PATIENT, LABS, SYMPTOMS, CONDITIONS, MEDREQUESTS, MEDSTATEMENTS]
    for template in TEMPLATES.values():
        assert set(re.findall(r"\{\{[^}]*\}\}", template)) == {"{{context.patientId}}"}
    assert TEMPLATES[PATIENT] == "Patient/{{context.patientId}}"
    assert TEMPLATES[LABS] == (
        "Observation?patient={{context.patientId}}&code=http://loinc.org|19123-9,http://loinc.org|2157-6,"
        "http://loinc.org|2823-3,http://loinc.org|4548-4&_sort=-date&_count=500"
    )
    assert "code=http://snomed.info/sct|55300003&" in TEMPLATES[SYMPTOMS]
    assert TEMPLATES[MEDREQUESTS] == (
        "MedicationRequest?patient={{context.patientId}}&status=active,on-hold"
        "&_include=MedicationRequest:medication&_count=500"
    )
    assert [resource_type_of(t) for t in TEMPLATES.values()] == [
        "Patient", "Observation", "Observation", "Condition", "MedicationRequest", "MedicationStatement"]


def test_published_templates_use_the_terminology():
    templates = build_prefetch_templates(Terminology.load())
    assert list(templates) == list(TEMPLATES)
    for template in templates.values():
        assert set(re.findall(r"\{\{[^}]*\}\}", template)) == {"{{context.patientId}}"}
    assert "http://loinc.org|2823-3," in templates[LABS] and "http://loinc.org|2157-6," in templates[LABS]
    assert "http://snomed.info/sct|55300003" in templates[SYMPTOMS]


def test_fill_url_encodes_the_patient_id_and_refuses_missing_tokens():
    assert fill(TEMPLATES[PATIENT], {"patientId": "a b/c&d"}) == "Patient/a%20b%2Fc%26d"
    assert fill("Encounter/{{context.encounterId}}", {"patientId": "1"}) is None


def test_a_template_whose_token_has_no_value_is_incomplete():
    templates = {**TEMPLATES, "encounter": "Encounter/{{context.encounterId}}"}
    call = hook_call(full_prefetch(), fhir_server="https://fhir.example.org/r4", token=TOKEN)
    record = obtain_record(call, templates, settings(fhir_allowlist=["https://fhir.example.org/r4"]))
    assert record.incomplete == {"encounter"}


# --- prefetch semantics without a server ---------------------------------------------------------------


def test_full_prefetch_needs_no_fhir_server():
    record = obtain_record(hook_call(full_prefetch()), TEMPLATES, settings())
    assert ("Observation", "cramp-1") in ids_of(record.resources)
    assert ("Medication", "med-hctz") in ids_of(record.resources)
    assert record.incomplete == frozenset()
    assert record.patient_id == PATIENT_ID


def test_null_keys_are_empty_and_need_no_server():
    record = obtain_record(hook_call(dict.fromkeys(TEMPLATES)), TEMPLATES, settings())
    assert record.resources == {}
    assert record.incomplete == frozenset()


@pytest.mark.parametrize("missing", [CONDITIONS, LABS])
def test_absent_key_without_fhir_server_answers_412(missing, caplog):
    prefetch = full_prefetch()
    del prefetch[missing]
    with caplog.at_level(logging.INFO, logger="cds_service.record"), pytest.raises(CdsError) as raised:
        obtain_record(hook_call(prefetch), TEMPLATES, settings())
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert "no fhirServer" in caplog.text


def test_operation_outcome_key_without_fhir_server_answers_412():
    prefetch = {**full_prefetch(), LABS: OPERATION_OUTCOME}
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(prefetch), TEMPLATES, settings())
    assert raised.value.status == 412


@pytest.mark.parametrize("junk", ["text", 42, [], {"entry": []}])
def test_a_key_holding_no_fhir_resource_is_queried(junk):
    prefetch = {**full_prefetch(), LABS: junk}
    with pytest.raises(CdsError) as raised:
        obtain_record(hook_call(prefetch), TEMPLATES, settings())
    assert raised.value.kind is RECORD_UNAVAILABLE


def test_bundles_are_read_leniently():
    k = lab("k-9", "2823-3", 3.0, "mmol/L", "2025-06-01")
    bundle = {"resourceType": "Bundle", "entry": [
        "not an entry", {"fullUrl": "no resource"}, {"resource": {"no": "type"}},
        {"resource": OPERATION_OUTCOME, "search": {"mode": "outcome"}}, {"resource": k}]}
    record = obtain_record(hook_call({**full_prefetch(), LABS: bundle}), TEMPLATES, settings())
    assert [o["id"] for o in record.of_type("Observation")] == ["k-9", "cramp-1"]
    assert "OperationOutcome" not in record.resources
    # what the three broken entries held is unknown, so nothing may be concluded from its absence
    assert record.incomplete == {LABS}
    assert record.warnings == [f"{LABS}: 3 of its Bundle entries hold no FHIR resource and were not read"]


def test_a_lone_entry_sent_as_an_object_is_read():
    k = lab("k-9", "2823-3", 3.0, "mmol/L", "2025-06-01")
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": {"resource": k}}
    record = obtain_record(hook_call({**full_prefetch(), LABS: bundle}), TEMPLATES, settings())
    assert [o["id"] for o in record.of_type("Observation")] == ["k-9", "cramp-1"]
    assert record.incomplete == frozenset()


def test_the_same_resource_in_two_keys_is_kept_once():
    prefetch = full_prefetch()
    cramp, k1 = prefetch[SYMPTOMS]["entry"][0]["resource"], prefetch[LABS]["entry"][0]["resource"]
    prefetch[SYMPTOMS] = searchset([cramp, k1])
    record = obtain_record(hook_call(prefetch), TEMPLATES, settings())
    ids = [o["id"] for o in record.of_type("Observation")]
    assert sorted(ids) == ["ck-1", "cramp-1", "k-1", "k-2", "mg-1"]


def test_next_link_without_usable_server_marks_the_key_incomplete():
    prefetch = full_prefetch()
    prefetch[LABS]["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/Observation?page=2"}]
    record = obtain_record(hook_call(prefetch), TEMPLATES, settings())
    assert record.incomplete == {LABS}
    assert len(record.of_type("Observation")) == 5


def test_unreadable_medication_reference_marks_its_key_incomplete():
    prefetch = full_prefetch()
    prefetch[MEDREQUESTS] = searchset([med_request("mr-1", medicationReference={"reference": "Medication/x"})])
    record = obtain_record(hook_call(prefetch), TEMPLATES, settings())
    assert record.incomplete == {MEDREQUESTS}


def test_draft_orders_and_selections_are_carried():
    draft = med_request("d1", status="draft", medicationCodeableConcept={"text": "x"})
    call = HookCall.from_request("cramps-order-sign", {
        "hookInstance": "0f6b7a2e-1111-4000-8000-000000000002", "hook": "order-sign",
        "context": {"userId": "Practitioner/1", "patientId": PATIENT_ID,
                    "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}},
        "prefetch": full_prefetch(),
    })
    record = obtain_record(call, TEMPLATES, settings())
    assert [d["id"] for d in record.draft_orders] == ["d1"]
    assert record.selections == {"MedicationRequest/d1"}
    assert "d1" not in {m["id"] for m in record.of_type("MedicationRequest")}


# --- which FHIR servers may be called ---------------------------------------------------------------------


def _missing_conditions() -> dict:
    prefetch = full_prefetch()
    del prefetch[CONDITIONS]
    return prefetch


def test_server_not_on_the_allowlist_receives_nothing(counting_server, caplog):
    call = hook_call(_missing_conditions(), fhir_server=f"{counting_server.url}/fhir", token=TOKEN)
    with caplog.at_level(logging.DEBUG), pytest.raises(CdsError) as raised:
        obtain_record(call, TEMPLATES, settings(fhir_allowlist=["https://fhir.example.org/r4"]))
    assert raised.value.kind is FHIR_SERVER_NOT_ALLOWED
    assert raised.value.status == 412
    assert counting_server.hits == []
    assert "allowlist" in caplog.text and TOKEN not in caplog.text


def test_allowlisted_server_is_called(counting_server):
    call = hook_call(_missing_conditions(), fhir_server=f"{counting_server.url}/fhir/", token=TOKEN)
    record = obtain_record(call, TEMPLATES, settings(fhir_allowlist=[f"{counting_server.url}/fhir"]))
    assert counting_server.hits == [f"/fhir/Condition?patient={PATIENT_ID}&_count=500"]
    sent = counting_server.headers[0]
    assert sent["Accept"] == "application/fhir+json"
    assert sent["Authorization"] == f"Bearer {TOKEN}"
    assert record.incomplete == frozenset()


def test_issuer_servers_replace_the_allowlist(counting_server):
    base = f"{counting_server.url}/fhir"
    call = hook_call(_missing_conditions(), fhir_server=base, token=TOKEN)
    with pytest.raises(CdsError) as raised:
        obtain_record(call, TEMPLATES, settings(fhir_allowlist=[base]).for_issuer(["https://other.example.org/fhir"]))
    assert raised.value.kind is FHIR_SERVER_NOT_ALLOWED
    obtain_record(call, TEMPLATES, settings().for_issuer([base]))
    assert len(counting_server.hits) == 1


@pytest.mark.parametrize(
    ("server", "overrides"),
    [
        ("http://fhir.example.org/r4", {}),  # http only for loopback
        ("http://127.0.0.1:9/fhir", {"fhir_allow_http_loopback": False}),
        ("ftp://fhir.example.org/r4", {}),
        ("https://user:pw@fhir.example.org/r4", {}),
        ("https://fhir.example.org/r4?x=1", {}),
    ],
)
def test_unsafe_server_urls_are_refused(server, overrides):
    call = hook_call(_missing_conditions(), fhir_server=server, token=TOKEN)
    with pytest.raises(CdsError) as raised:
        # on the allowlist anyway (the settings would refuse an ftp entry; the record layer must refuse it too)
        obtain_record(call, TEMPLATES, replace(settings(**overrides), fhir_allowlist=(server,)))
    assert raised.value.kind is FHIR_SERVER_NOT_ALLOWED


def test_no_token_is_refused_unless_open_servers_are_allowed(counting_server):
    base = f"{counting_server.url}/fhir"
    call = hook_call(_missing_conditions(), fhir_server=base)
    with pytest.raises(CdsError) as raised:
        obtain_record(call, TEMPLATES, settings(fhir_allowlist=[base]))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert counting_server.hits == []
    obtain_record(call, TEMPLATES, settings(fhir_allowlist=[base], fhir_allow_unauthenticated=True))
    assert len(counting_server.hits) == 1


def test_only_bearer_tokens_are_used(counting_server):
    base = f"{counting_server.url}/fhir"
    body = {"hookInstance": "5d0e4e55-2222-4000-8000-000000000003", "hook": "patient-view", "fhirServer": base,
            "fhirAuthorization": {"access_token": TOKEN, "token_type": "MAC", "expires_in": 60, "scope": "x",
                                  "subject": "y"},
            "context": {"userId": "Practitioner/1", "patientId": PATIENT_ID}, "prefetch": _missing_conditions()}
    with pytest.raises(CdsError) as raised:
        obtain_record(HookCall.from_request("s", body), TEMPLATES, settings(fhir_allowlist=[base]))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert counting_server.hits == []


def test_base_urls_compare_by_meaning():
    assert normalize_base("HTTPS://FHIR.Example.org:443/r4/") == "https://fhir.example.org/r4"
    assert normalize_base("http://[::1]:8080/fhir") == "http://[::1]:8080/fhir"
    endpoint = FhirEndpoint("https://fhir.example.org/r4")
    assert endpoint.owns("https://fhir.example.org:443/r4/Observation?_offset=10")
    assert not endpoint.owns("https://fhir.example.org/r40/Observation")
    assert not endpoint.owns("https://evil.example.org/r4/Observation")
    assert is_absolute("https://x/y") and not is_absolute("Observation?code=http://loinc.org|1")
    assert "secret" not in repr(FhirEndpoint("https://x", token="secret"))


def test_settings_come_from_configuration():
    built = settings(fhir_allowlist=["https://a"], hook_budget_seconds=1.0)
    assert built.allowlist == ("https://a",)
    margin = Settings.model_fields["fhir_budget_margin_seconds"].default
    assert built.fetch_budget_seconds == pytest.approx(1.0 - margin)
    assert built.for_issuer(["https://b"]).allowlist == ("https://b",)


def test_connection_errors_are_retried_then_answer_412():
    closed = CountingServer()
    base = f"{closed.url}/fhir"
    closed.close()  # nothing listens on this port any more
    call = hook_call(_missing_conditions(), fhir_server=base, token=TOKEN)
    started = time.monotonic()
    with pytest.raises(CdsError) as raised:
        obtain_record(call, TEMPLATES, settings(fhir_allowlist=[base], fhir_retries=2))
    assert raised.value.kind is RECORD_UNAVAILABLE
    assert "connection failed" in str(raised.value)
    assert 0.05 + 0.1 <= time.monotonic() - started < 1.0  # two backoffs (50 ms, 100 ms), well within the budget


def test_each_process_gets_its_own_session_and_pool(monkeypatch):
    mine = client._process_state()
    assert client._process_state() is mine
    monkeypatch.setattr(client.os, "getpid", lambda: mine.pid + 1)  # as in a forked gunicorn worker
    forked = client._process_state()
    assert forked is not mine and forked.session is not mine.session and forked.pool is not mine.pool
    forked.pool.shutdown()
    forked.session.close()
    monkeypatch.undo()
    client._state = mine
