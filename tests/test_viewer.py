"""The card viewer's server side: when it is served, its security headers, and the shipped example requests
moved to the service's evaluation time. The pages themselves are tested in a browser (test_viewer_browser.py)."""
from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select
from support.hookcalls import SERVICE_IDS, assert_operation_outcome
from support.tokens import jwks, make_key
from support.viewer_requests import SUMMARY, critical_request

from cds_service import create_app
from cds_service.storage.database import issued_cards
from cds_service.viewer.examples import WRITTEN_FOR, shift_days, shifted, shipped_examples

LATER = WRITTEN_FOR + timedelta(days=500)  # a demo run long after the fixtures were written, across 29 February

PAGES = ["/viewer/", "/viewer/analytics", "/viewer/static/viewer.js", "/viewer/static/markdown.js",
         "/viewer/static/viewer.css", "/viewer/examples"]


def test_viewer_pages_are_served_with_a_strict_content_security_policy(client) -> None:
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/viewer/static/viewer.js").mimetype == "text/javascript"
    assert client.get("/viewer").status_code == 404  # never a redirect: the pages link relative to /viewer/


def test_pages_load_nothing_from_another_origin(client) -> None:
    for path in ["/viewer/", "/viewer/analytics"]:
        html = client.get(path).get_data(as_text=True)
        assert "http://" not in html and "https://" not in html and "//" not in html.replace("<!--", "")


@pytest.mark.parametrize(
    "settings",
    [
        {"viewer_enabled": False},
        {"trusted_issuers": [{"iss": "https://ehr.example.org", "jwks": jwks(make_key())}]},
    ],
    ids=["disabled", "authentication-on"],
)
def test_viewer_is_not_served_when_disabled_or_when_authentication_is_on(make_app, settings) -> None:
    with make_app(**settings).test_client() as client:
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 404, path
            assert_operation_outcome(response.get_json(), "CDS-0008")


def test_unknown_example_is_not_found(client) -> None:
    for name in ["no-such-patient", "..%2Fpyproject", "__init__"]:
        response = client.get(f"/viewer/examples/{name}")
        assert response.status_code == 404
        assert_operation_outcome(response.get_json(), "CDS-0008")


def test_every_shipped_example_is_listed_and_served_as_written_at_the_fixture_time(client) -> None:
    examples = shipped_examples()
    listed = client.get("/viewer/examples").get_json()["examples"]
    assert listed == [
        {"name": e.name, "hook": e.hook, "patientId": e.patient_id} for e in examples.values()
    ]
    for example in examples.values():
        served = client.get(f"/viewer/examples/{example.name}").get_json()
        assert served["shiftedDays"] == 0  # the test app runs at the fixture time
        assert served["request"] == example.request
        assert example.hook in SERVICE_IDS


# --- moving examples in time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("2026-10-27", 10, "2026-11-06"),
        ("2026-10-27T09:00:00Z", 10, "2026-11-06T09:00:00Z"),
        ("2026-12-31T23:59:59.123+02:00", 1, "2027-01-01T23:59:59.123+02:00"),
        ("2024-02-28", 1, "2024-02-29"),
        ("2026-03-01T10:00", -1, "2026-02-28T10:00"),
        ("2026-10", 10, "2026-10"),  # partial dates are kept
        ("1950", 10, "1950"),  # a bare year cannot be told from a code
        ("2823-3", 10, "2823-3"),  # a LOINC code
        ("2026-02-30", 10, "2026-02-30"),  # not a calendar date
        ("on 2026-10-27", 10, "on 2026-10-27"),  # free text
        ("2026-10-27", 0, "2026-10-27"),
    ],
)
def test_shifted_moves_full_dates_only(value: str, days: int, expected: str) -> None:
    assert shifted(value, days) == expected


def test_shifted_walks_the_whole_request_and_leaves_the_original_alone() -> None:
    request = critical_request()
    original = copy.deepcopy(request)
    moved = shifted(request, 30)
    assert request == original
    lab = moved["prefetch"]["labs"]["entry"][0]["resource"]
    assert lab["effectiveDateTime"] == "2026-11-26T09:00:00Z"
    assert lab["valueQuantity"] == original["prefetch"]["labs"]["entry"][0]["resource"]["valueQuantity"]
    assert moved["prefetch"]["patient"]["birthDate"] == "1950-03-03"
    assert json.dumps(moved).count("2026-10-27") == 0


def test_shift_is_whole_days_from_the_fixture_time() -> None:
    assert shift_days(WRITTEN_FOR) == 0
    assert shift_days(WRITTEN_FOR + timedelta(days=3, hours=23)) == 3
    assert shift_days(WRITTEN_FOR - timedelta(hours=1)) == -1


def test_a_moved_request_fires_at_the_later_time_as_the_original_did(make_app) -> None:
    """What the viewer relies on: the example, moved to a later "now", gives the same card as at the fixture time."""
    later = WRITTEN_FOR + timedelta(days=200)
    service = f"/cds-services/{SERVICE_IDS['patient-view']}"
    with make_app(now=later.isoformat()).test_client() as client:
        unmoved = client.post(service, json=critical_request()).get_json()["cards"]
        moved = client.post(service, json=shifted(critical_request(), shift_days(later))).get_json()["cards"]
    # Unmoved, the potassium is 205 days old: no longer the critical card (another rule asks for a new one).
    assert [c for c in unmoved if c["summary"].startswith(SUMMARY)] == []
    assert [(c["indicator"], c["summary"].startswith(SUMMARY)) for c in moved] == [("critical", True)]


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> dict[str, Flask]:
    """The service at the fixture time and at ``LATER``."""
    folder = tmp_path_factory.mktemp("viewer-apps")
    return {
        when: create_app({"data_dir": str(folder / when), "now": moment.isoformat()})
        for when, moment in (("written", WRITTEN_FOR), ("later", LATER))
    }


def cards_and_rules(app: Flask, body: dict) -> list[tuple[str, str]]:
    """(rule id, indicator) of each card the service answers ``body`` with, in response order."""
    service = SERVICE_IDS[body["hook"]]
    with app.test_client() as client:
        response = client.post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    app.extensions["cds_service"].issued.flush()
    engine = app.extensions["cds_service"].engine
    with engine.connect() as conn:
        rules = dict(conn.execute(select(issued_cards.c.card_uuid, issued_cards.c.rule_id)).all())
    return [(rules[card["uuid"]], card["indicator"]) for card in cards]


@pytest.mark.parametrize("name", sorted(shipped_examples()))
def test_each_example_served_later_fires_as_it_does_at_the_fixture_time(apps: dict[str, Flask], name: str) -> None:
    with apps["later"].test_client() as client:
        served = client.get(f"/viewer/examples/{name}").get_json()
    assert served["shiftedDays"] == 500
    assert cards_and_rules(apps["later"], served["request"]) == cards_and_rules(
        apps["written"], shipped_examples()[name].request
    )
