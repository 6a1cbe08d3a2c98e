"""Rule governance over HTTP against the real app: deployment (active, silent, off), repeats, feedback counting,
override reasons a clinician reads, the firing-rate check, and the settings that stop the start."""
from __future__ import annotations

import copy
import json
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from support.governance import (
    EXPERIMENTAL,
    GOVERNED,
    experimental_fixture,
    governed_site,
    potassium_request,
    seed_history,
)
from support.hookcalls import PATIENT_ID, SERVICE_IDS
from support.viewer_requests import RULE_ID, critical_request

from cds_service import create_app
from cds_service.config import ConfigError
from cds_service.storage.analytics import BASELINE_DAYS, MIN_CALLS
from cds_service.storage.database import issued_cards

PV = SERVICE_IDS["patient-view"]
NOT_APPLICABLE = "Not relevant for this patient"


def call(client: FlaskClient, body: dict[str, Any], service: str = PV) -> list[dict[str, Any]]:
    body = copy.deepcopy(body)
    body["hookInstance"] = str(uuid.uuid4())
    response = client.post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def rule_report(client: FlaskClient, rule_id: str) -> dict[str, Any]:
    report = client.get("/analytics").get_json()
    return next(rule for rule in report["rules"] if rule["ruleId"] == rule_id)


def metric(client: FlaskClient, line_start: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


# --- deployment ---------------------------------------------------------------------------------------------------


def test_an_experimental_rule_runs_silent_by_default_its_firings_recorded_not_returned(make_app, tmp_path) -> None:
    app = make_app(**governed_site(tmp_path))
    request = experimental_fixture()
    with app.test_client() as client:
        assert call(client, request, SERVICE_IDS[request["hook"]]) == []
        rule = rule_report(client, EXPERIMENTAL)
        assert (rule["deployment"], rule["shown"], rule["silent"]) == ("silent", 0, 1)
        assert rule["days"] == [{"day": datetime.now(UTC).date().isoformat(), "shown": 0, "silent": 1}]
        silent = f'cds_cards_total{{deployment="silent",indicator="warning",rule="{EXPERIMENTAL}"}}'
        assert metric(client, silent) >= 1
    with app.app_context():
        engine = app.extensions["cds_service"].engine
        with engine.connect() as conn:
            row = conn.execute(select(issued_cards).where(issued_cards.c.rule_id == EXPERIMENTAL)).mappings().one()
    assert row["deployment"] == "silent" and row["indicator"] == "warning"
    assert len(row["patient"]) == 16 and request["context"]["patientId"] not in json.dumps(dict(row), default=str)


def test_the_committee_activates_a_silent_rule_and_switches_another_off(make_app, tmp_path) -> None:
    site = {**governed_site(tmp_path), "rule_deployment": {EXPERIMENTAL: "active", RULE_ID: "off"}}
    app = make_app(**site)
    hyperkalemia = experimental_fixture()
    with app.test_client() as client:
        assert [c["indicator"] for c in call(client, hyperkalemia, SERVICE_IDS[hyperkalemia["hook"]])] == ["warning"]
        assert call(client, critical_request()) == []  # diuretic-hypokalemia is off: not even recorded
        report = client.get("/analytics").get_json()
    assert [rule["ruleId"] for rule in report["rules"]] == [EXPERIMENTAL]
    assert report["rules"][0]["deployment"] == "active" and report["totals"]["hookCalls"] == 2


# --- repeats ------------------------------------------------------------------------------------------------------


def test_a_warning_seen_today_is_not_shown_again_a_critical_card_always_is(make_app) -> None:
    with make_app(**GOVERNED).test_client() as client:
        first = call(client, potassium_request(3.0))
        assert [c["indicator"] for c in first] == ["warning"]
        assert call(client, potassium_request(3.0)) == []  # the same finding, the same user, within P1D
        other_hook = {**potassium_request(3.0), "hook": "encounter-start"}
        other_hook["context"]["encounterId"] = "enc-2"
        assert call(client, other_hook, SERVICE_IDS["encounter-start"]) == []  # whatever the hook or encounter
        assert metric(client, f'cds_card_repeats_total{{rule="{RULE_ID}"}}') >= 2
        assert [c["indicator"] for c in call(client, potassium_request(2.4))] == ["critical"]
        assert [c["indicator"] for c in call(client, potassium_request(2.4))] == ["critical"]
        assert rule_report(client, RULE_ID)["shown"] == 3


def test_a_finding_that_got_worse_or_a_colleague_sees_the_card_again(make_app) -> None:
    with make_app(**GOVERNED).test_client() as client:
        assert len(call(client, potassium_request(3.2))) == 1
        assert len(call(client, potassium_request(3.2, user="Practitioner/colleague"))) == 1  # per user
        assert len(call(client, potassium_request(2.9, day="2026-10-29"))) == 1  # a new, lower result
        assert call(client, potassium_request(2.9, day="2026-10-29")) == []


@pytest.mark.parametrize("settings", [{"repeat_after": "PT0S"}, {"rule_repeat_after": {RULE_ID: "PT0S"}}])
def test_the_window_is_configured_for_all_rules_or_per_rule(make_app, settings: dict[str, Any]) -> None:
    with make_app(**{**GOVERNED, **settings}).test_client() as client:
        assert len(call(client, potassium_request(3.0))) == 1
        assert len(call(client, potassium_request(3.0))) == 1


def test_the_window_ends(make_app) -> None:
    app = make_app(**GOVERNED)
    with app.test_client() as client:
        assert len(call(client, potassium_request(3.0))) == 1
        state = app.extensions["cds_service"]
        state.issued.flush()
        with state.engine.begin() as conn:  # the card was shown two days ago
            conn.execute(issued_cards.update().values(issued_at=datetime.now(UTC) - timedelta(days=2)))
        assert len(call(client, potassium_request(3.0))) == 1


# --- feedback counting --------------------------------------------------------------------------------------------


def feedback(client: FlaskClient, *entries: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/cds-services/{PV}/feedback", json={"feedback": list(entries)})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def accepted(card: str, at: str) -> dict[str, Any]:
    return {"card": card, "outcome": "accepted", "outcomeTimestamp": at, "acceptedSuggestions": [{"id": "s"}]}


def overridden(card: str, at: str, code: str = "cds-not-applicable") -> dict[str, Any]:
    reason = {"system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes", "code": code}
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": at, "overrideReason": {"reason": reason}}


def test_the_latest_feedback_on_a_card_decides_how_it_counts(make_app) -> None:
    with make_app().test_client() as client:
        first, second = (call(client, critical_request())[0]["uuid"] for _ in range(2))
        feedback(client, accepted(first, "2026-11-01T10:00:00Z"), overridden(first, "2026-11-01T10:05:00Z"))
        # sent out of order: the acceptance is the later outcome
        feedback(client, accepted(second, "2026-11-01T11:00:00Z"))
        feedback(client, overridden(second, "2026-11-01T10:30:00Z", "action-completed"))
        unknown = str(uuid.uuid4())
        assert feedback(client, accepted(unknown, datetime.now(UTC).isoformat()))["stored"] == 1
        report = client.get("/analytics").get_json()
    rule = report["rules"][0]
    assert (rule["shown"], rule["accepted"], rule["overridden"], rule["noFeedback"]) == (2, 1, 1, 0)
    assert (rule["acceptanceRate"], rule["overrideRate"]) == (0.5, 0.5)
    assert [(r["code"], r["display"], r["count"]) for r in rule["overrideReasons"]] == [
        ("cds-not-applicable", NOT_APPLICABLE, 1)
    ]
    assert report["unattributedFeedback"] == {"accepted": 1, "overridden": 0}


# --- override reasons ---------------------------------------------------------------------------------------------


def test_cards_offer_override_reasons_written_for_clinicians(client: FlaskClient) -> None:
    reasons = {r["code"]: r for r in call(client, critical_request())[0]["overrideReasons"]}
    assert reasons["cds-not-applicable"] == {
        "code": "cds-not-applicable",
        "system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes",
        "display": NOT_APPLICABLE,
    }
    assert reasons["action-completed"]["display"] == "Already done"


def test_a_site_names_its_own_override_reasons(make_app) -> None:
    site = {"cds-not-applicable": {"system": "urn:oid:2.16.840.1.113883.3.1", "display": "Does not fit"}}
    with make_app(override_reasons=site).test_client() as client:
        reasons = {r["code"]: r for r in call(client, critical_request())[0]["overrideReasons"]}
    assert reasons["cds-not-applicable"] == {"code": "cds-not-applicable", **site["cds-not-applicable"]}
    assert reasons["action-completed"]["display"] == "Already done"


# --- firing-rate check --------------------------------------------------------------------------------------------


def test_a_jump_in_a_rule_s_firing_rate_is_flagged_on_the_page_data_and_the_gauge(make_app, tmp_path) -> None:
    app = make_app(**governed_site(tmp_path))
    seed_history(app.extensions["cds_service"].engine, EXPERIMENTAL, today_firings=12)  # 60 % of today's calls
    with app.test_client() as client:
        report = client.get("/analytics").get_json()
        gauge = client.get("/metrics").get_data(as_text=True)
    assert report["flaggedRules"] == [EXPERIMENTAL]
    rate = rule_report_from(report, EXPERIMENTAL)["firingRate"]
    assert rate["flagged"] and rate["rate"] == pytest.approx(0.6) and rate["baselineDays"] == BASELINE_DAYS
    assert rate["band"]["high"] < 0.2
    assert f'cds_rule_firing_rate_anomaly{{rule="{EXPERIMENTAL}"}} 1.0' in gauge
    assert f'cds_rule_firing_rate_anomaly{{rule="{RULE_ID}"}} 0.0' in gauge
    today = datetime.now(UTC).date().isoformat()
    assert report["days"][-1] == {"day": today, "hookCalls": MIN_CALLS, "shown": 0, "silent": 12, "cardsPerCall": 0.0}


def test_a_usual_day_is_not_flagged(make_app, tmp_path) -> None:
    app = make_app(**governed_site(tmp_path))
    seed_history(app.extensions["cds_service"].engine, EXPERIMENTAL, today_firings=2)  # 10 %
    with app.test_client() as client:
        assert client.get("/analytics").get_json()["flaggedRules"] == []
        assert f'cds_rule_firing_rate_anomaly{{rule="{EXPERIMENTAL}"}} 0.0' in client.get("/metrics").get_data(
            as_text=True
        )


def rule_report_from(report: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(rule for rule in report["rules"] if rule["ruleId"] == rule_id)


# --- settings that stop the start ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rule_deployment": {"no-such-rule": "active"}}, "rule_deployment.no-such-rule: unknown rule id"),
        ({"rule_deployment": {RULE_ID: "loud"}}, f"rule_deployment.{RULE_ID} = 'loud': input should be 'active'"),
        ({"repeat_after": "1 day"}, "repeat_after = '1 day': not an ISO 8601 duration"),
        ({"repeat_after": "P1X"}, "repeat_after = 'P1X': input should be a valid timedelta"),
        ({"rule_repeat_after": {"no-such-rule": "P1D"}}, "rule_repeat_after.no-such-rule: unknown rule id"),
        ({"override_reasons": {"made-up": {"system": "urn:x:y", "display": "x"}}},
         "override_reasons.made-up: unknown override reason code"),
        ({"override_reasons": {"cds-not-applicable": {"system": "no uri", "display": "x"}}},
         "override_reasons.cds-not-applicable.system = 'no uri': not an absolute URI"),
    ],
)
def test_bad_governance_settings_stop_the_start_in_one_line(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        create_app({"data_dir": str(tmp_path / "data"), **settings})
    text = str(error.value)
    assert text.startswith("configuration error: ") and message in text and "\n" not in text
    assert not (tmp_path / "data").exists()  # refused before the database is made


def test_patient_ids_are_never_stored(make_app) -> None:
    app = make_app(**GOVERNED)
    with app.test_client() as client:
        call(client, potassium_request(3.0))
    state = app.extensions["cds_service"]
    state.issued.flush()
    with state.engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(select(issued_cards)).mappings()]
    assert rows and PATIENT_ID not in json.dumps(rows, default=str)


def test_while_the_database_is_unreachable_cards_are_answered_and_this_process_still_knows_its_own(
    make_app, tmp_path: Path
) -> None:
    database = tmp_path / "governed.sqlite3"
    app = make_app(**GOVERNED, database_url=f"sqlite:///{database}", issued_cards_flush_seconds=3600)
    state = app.extensions["cds_service"]
    state.engine.dispose()
    saved = database.rename(tmp_path / "saved.sqlite3")
    database.mkdir()  # a directory where the database was: every connection fails
    with app.test_client() as client:
        assert len(call(client, potassium_request(3.0))) == 1
        assert call(client, potassium_request(3.0)) == []  # from this process's queue of issued cards
        assert len(call(client, potassium_request(3.0, user="Practitioner/colleague"))) == 1
    database.rmdir()
    saved.rename(database)
    state.issued.flush()


def test_a_card_being_written_still_counts_as_issued(make_app, tmp_path: Path) -> None:
    """The batch write takes the rows off the queue before it commits them: in between, the repeat check must
    still find them (a call landing there showed the card again)."""
    database = tmp_path / "governed.sqlite3"
    app = make_app(**GOVERNED, database_url=f"sqlite:///{database}", issued_cards_flush_seconds=3600)
    issued = app.extensions["cds_service"].issued
    with app.test_client() as client:
        assert len(call(client, potassium_request(3.0))) == 1
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the batch write waits for it (busy_timeout)
        writer = threading.Thread(target=issued.flush)
        writer.start()
        try:
            deadline = time.monotonic() + 5
            while issued.pending and time.monotonic() < deadline:
                time.sleep(0.005)
            assert issued.pending == 0 and writer.is_alive()  # taken off the queue, not committed
            assert call(client, potassium_request(3.0)) == []
        finally:
            blocker.rollback()
            blocker.close()
            writer.join()
        assert call(client, potassium_request(3.0)) == []  # and once committed


def test_a_draft_order_card_shown_on_order_select_is_not_repeated_on_order_sign(make_app) -> None:
    select = json.loads((Path(__file__).resolve().parents[1] / "fixtures/requests/order-select-statin-mild-ck.json")
                        .read_text("utf-8"))
    sign = copy.deepcopy(select)
    sign["hook"] = "order-sign"
    del sign["context"]["selections"]
    with make_app(**GOVERNED).test_client() as client:
        shown = call(client, select, SERVICE_IDS["order-select"])
        assert [c["indicator"] for c in shown] == ["info"]
        assert call(client, sign, SERVICE_IDS["order-sign"]) == []
