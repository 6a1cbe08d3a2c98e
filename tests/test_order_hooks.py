"""Issue 19 items 1 and 3 over real HTTP (the app served by werkzeug on a loopback port), as a clinician meets
them in the CDS Hooks sandbox: one card per problem at each step of patient-view, order-select and order-sign,
and no card from a cramp diagnosis that only speaks for a visit three years ago.

The rule behind each card is read from the service's own record of issued cards (the card does not name it).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select
from support.hookcalls import (
    PATIENT_ID,
    SERVICE_IDS,
    assert_valid_response,
    cramp_condition,
    empty_prefetch,
    hook_request,
    sandbox_draft_orders,
    searchset,
)
from support.wsgi_server import running

from cds_service.storage.database import issued_cards

RXNORM, LOINC = "http://www.nlm.nih.gov/research/umls/rxnorm", "http://loinc.org"
DRAFT = "MedicationRequest/request-123"  # the sandbox's draft atorvastatin (support.hookcalls)


def atorvastatin_taken() -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest", "id": "atorva-1", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "authoredOn": "2026-03-01",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "617311",
                                                  "display": "atorvastatin 40 MG Oral Tablet"}]},
    }


def ck(value: float) -> dict[str, Any]:
    """A CK drawn on 2026-10-30, after the cramps began (2026-10-20), against an upper limit of 200 U/L."""
    quantity = {"unit": "U/L", "system": "http://unitsofmeasure.org", "code": "U/L"}
    return {
        "resourceType": "Observation", "id": "ck-1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "2157-6"}]}, "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": "2026-10-30T08:00:00Z", "valueQuantity": {"value": value, **quantity},
        "referenceRange": [{"high": {"value": 200, **quantity}}],
    }


def prefetch(*, labs: list[dict[str, Any]], conditions: list[dict[str, Any]]) -> dict[str, Any]:
    found = empty_prefetch()
    found["labs"], found["conditions"] = searchset(*labs), searchset(*conditions)
    found["medrequests"] = searchset(atorvastatin_taken())
    return found


@pytest.fixture
def served(make_app) -> Iterator[tuple[str, Flask]]:
    app = make_app()
    with running(app) as base:
        yield base, app


def answer(base: str, hook: str, data: dict[str, Any], **context: Any) -> list[dict[str, Any]]:
    body = hook_request(hook, data)
    body["context"].update(context)
    response = requests.post(f"{base}/cds-services/{SERVICE_IDS[hook]}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert_valid_response(response.json())
    return response.json()["cards"]


def rules_of(app: Flask, cards: list[dict[str, Any]]) -> list[str]:
    """The rule that issued each card, from the service's database of issued cards."""
    state = app.extensions["cds_service"]
    state.issued.flush()
    with state.engine.connect() as conn:
        rows = dict(conn.execute(select(issued_cards.c.card_uuid, issued_cards.c.rule_id)).all())
    return [rows[card["uuid"]] for card in cards]


@pytest.mark.parametrize(("value", "indicator"), [(2400, "critical"), (900, "warning")])
def test_the_sandbox_sequence_gives_one_card_per_problem_at_each_step(
    served: tuple[str, Flask], value: float, indicator: str
) -> None:
    base, app = served
    data = prefetch(labs=[ck(value)], conditions=[cramp_condition()])

    chart = answer(base, "patient-view", data)
    assert rules_of(app, chart) == ["statin-muscle-symptoms-ck"] and chart[0]["indicator"] == indicator

    # order-select before a drug is chosen (the sandbox's draft has no medication yet): the chart's card again
    # only when it is critical
    browsing = answer(base, "order-select", data, draftOrders=sandbox_draft_orders(with_medication=False))
    assert rules_of(app, browsing) == (["statin-muscle-symptoms-ck"] if indicator == "critical" else [])

    for hook, context in (("order-select", {"selections": [DRAFT]}), ("order-sign", {})):
        (card,) = answer(base, hook, data, **context)
        assert rules_of(app, [card]) == ["draft-statin-raised-ck"], hook
        assert card["indicator"] == indicator and card["summary"].startswith("Ordering atorvastatin with CK")
        findings, also = card["detail"].split("**Also relevant**")
        assert f"CK **{value} U/L**" in findings
        assert f"CK {value} U/L" in also and "on atorvastatin" in also  # the chart card's finding, once
        labels = [s["label"] for s in card["suggestions"]]
        assert labels[0] == "Remove the draft atorvastatin order" and "Order a repeat CK" in labels
        delete = card["suggestions"][0]["actions"][0]
        assert (delete["type"], delete["resourceId"]) == ("delete", DRAFT)


def test_the_draft_order_in_the_sandbox_shape_is_what_makes_the_card(served: tuple[str, Flask]) -> None:
    """Without the draft statin (another drug being signed) the warning stays on the chart, not on the order."""
    base, app = served
    data = prefetch(labs=[ck(900)], conditions=[cramp_condition()])
    other = sandbox_draft_orders()
    other["entry"][0]["resource"]["medicationCodeableConcept"] = {
        "coding": [{"system": RXNORM, "code": "313988", "display": "furosemide 40 MG Oral Tablet"}]}
    assert answer(base, "order-sign", data, draftOrders=other) == []
    assert rules_of(app, answer(base, "patient-view", data)) == ["statin-muscle-symptoms-ck"]


def _encounter_cramp(recorded: str) -> dict[str, Any]:
    condition = cramp_condition()
    condition.update(
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                               "code": "encounter-diagnosis"}]}],
        onsetDateTime=recorded, recordedDate=recorded,
    )
    return condition


def test_a_cramp_diagnosed_at_one_visit_long_ago_gives_no_card(served: tuple[str, Flask]) -> None:
    base, app = served
    stale = prefetch(labs=[ck(900)], conditions=[_encounter_cramp("2023-10-15")])
    assert answer(base, "patient-view", stale) == []
    recent = prefetch(labs=[ck(900)], conditions=[_encounter_cramp("2026-10-20")])
    assert rules_of(app, answer(base, "patient-view", recent)) == ["statin-muscle-symptoms-ck"]


def test_a_ck_drawn_before_the_cramps_began_asks_for_a_new_one(served: tuple[str, Flask]) -> None:
    base, app = served
    before = ck(2400)
    before["effectiveDateTime"] = "2026-10-19T08:00:00Z"  # the cramps began on 2026-10-20
    (card,) = answer(base, "patient-view", prefetch(labs=[before], conditions=[cramp_condition()]))
    assert rules_of(app, [card]) == ["statin-muscle-symptoms-no-ck"]
    assert "no CK since the cramps began (2026-10-20)" in card["summary"]
