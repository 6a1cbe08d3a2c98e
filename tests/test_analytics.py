"""Feedback analytics: the per-rule report over the real store, and ``GET /analytics`` over the real app."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from support.hookcalls import SERVICE_IDS, assert_operation_outcome
from support.tokens import claims, jwks, make_key, sign
from support.viewer_requests import RULE_ID, critical_request

from cds_service.storage.analytics import Period, feedback_report
from cds_service.storage.database import open_database
from cds_service.storage.feedback import FeedbackStore
from cds_service.storage.issued_cards import IssuedCardLog

SERVICE = SERVICE_IDS["patient-view"]
REASONS = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
START = datetime(2026, 10, 1, tzinfo=UTC)
PERIOD = Period(START, START + timedelta(days=30))
COMPLETED = "Recommended action was already completed"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_database(f"sqlite:///{tmp_path / 'analytics.sqlite3'}")
    yield engine
    engine.dispose()


def issue(store: FeedbackStore, rule: str, indicator: str, at: datetime) -> str:
    card = str(uuid.uuid4())
    store.issued.add(SERVICE, [(card, rule, indicator)], at)
    store.issued.flush()
    return card


def overridden(card: str, at: str, code: str | None = None, comment: str | None = None, display: str = "") -> dict:
    entry: dict[str, Any] = {"card": card, "outcome": "overridden", "outcomeTimestamp": at}
    reason: dict[str, Any] = {}
    if code:
        reason["reason"] = {"system": REASONS, "code": code, **({"display": display} if display else {})}
    if comment:
        reason["userComment"] = comment
    if reason:
        entry["overrideReason"] = reason
    return entry


def accepted(card: str, at: str) -> dict:
    return {"card": card, "outcome": "accepted", "outcomeTimestamp": at, "acceptedSuggestions": [{"id": "s-1"}]}


def test_report_counts_distinct_cards_per_rule_with_their_reasons(engine: Engine) -> None:
    store = FeedbackStore(engine, IssuedCardLog(engine, 60))
    a1, a2 = (issue(store, "rule-a", "critical", START + timedelta(days=n)) for n in (1, 2))
    a3, a4 = (issue(store, "rule-a", "warning", START + timedelta(days=n)) for n in (3, 4))
    issue(store, "rule-b", "info", START + timedelta(days=5))
    before = issue(store, "rule-a", "critical", START - timedelta(days=1))
    store.record_feedback(SERVICE, [
        overridden(a1, "2026-10-02T11:00:00Z", "action-completed", "K given", display=COMPLETED),  # the latest
        overridden(a1, "2026-10-02T10:00:00Z", "action-completed"),  # the same card and reason, earlier
        overridden(a2, "2026-10-03T10:00:00Z", "cds-not-applicable"),
        overridden(a3, "2026-10-04T10:00:00Z", comment="not now"),
        accepted(a4, "2026-11-20T10:00:00Z"),  # after the period: follows the card shown in it
        overridden(before, "2026-10-02T10:00:00Z", "cds-not-applicable"),  # card shown before the period
        overridden(str(uuid.uuid4()), "2026-10-10T10:00:00Z"),  # a card this service never issued
        accepted(str(uuid.uuid4()), "2026-12-10T10:00:00Z"),  # never issued, and outside the period
    ])

    report = feedback_report(engine, PERIOD).as_json()

    assert report["period"] == {"since": "2026-10-01T00:00:00Z", "until": "2026-10-31T00:00:00Z"}
    assert report["totals"] == {"shown": 5, "silent": 0, "accepted": 1, "overridden": 3, "hookCalls": 5}
    assert [rule["ruleId"] for rule in report["rules"]] == ["rule-a", "rule-b"]
    rule_a, rule_b = report["rules"]
    assert [(day["day"], day["shown"]) for day in rule_a.pop("days")] == [
        ("2026-10-02", 1), ("2026-10-03", 1), ("2026-10-04", 1), ("2026-10-05", 1)
    ]
    assert rule_a.pop("firingRate")["flagged"] is False  # no hook calls on the period's last day
    assert rule_a == {
        "ruleId": "rule-a",
        "deployment": "",  # no longer in (here: never in) the rule set
        "shown": 4,
        "silent": 0,
        "shownByIndicator": {"critical": 2, "warning": 2, "info": 0},
        "accepted": 1,
        "overridden": 3,
        "noFeedback": 0,
        "acceptanceRate": 0.25,
        "overrideRate": 0.75,
        "overrideReasons": [
            {"system": REASONS, "code": "action-completed", "display": COMPLETED, "count": 1},
            {"system": REASONS, "code": "cds-not-applicable", "display": "", "count": 1},
        ],
        "overriddenWithoutReason": 1,
        "overriddenWithComment": 2,
    }
    assert rule_b["shown"] == 1 and rule_b["noFeedback"] == 1 and rule_b["overrideReasons"] == []
    assert report["unattributedFeedback"] == {"accepted": 0, "overridden": 1}


def test_period_is_half_open(engine: Engine) -> None:
    store = FeedbackStore(engine, IssuedCardLog(engine, 60))
    issue(store, "rule-a", "info", PERIOD.since)
    issue(store, "rule-a", "info", PERIOD.until)
    issue(store, "rule-a", "info", PERIOD.until - timedelta(microseconds=1))
    assert feedback_report(engine, PERIOD).rules[0].shown == 2


def test_bounds_in_other_time_zones_mean_the_same_instants(engine: Engine) -> None:
    store = FeedbackStore(engine, IssuedCardLog(engine, 60))
    issue(store, "rule-a", "info", datetime(2026, 10, 1, 5, tzinfo=UTC))
    plus_ten = timezone(timedelta(hours=10))
    assert feedback_report(engine, Period(datetime(2026, 10, 1, 15, tzinfo=plus_ten),
                                          datetime(2026, 10, 2, tzinfo=plus_ten))).rules[0].shown == 1
    assert feedback_report(engine, Period(datetime(2026, 10, 1, 16, tzinfo=plus_ten),
                                          datetime(2026, 10, 2, tzinfo=plus_ten))).rules == []


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (datetime(2026, 10, 1), datetime(2026, 11, 1, tzinfo=UTC), "time zone"),
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC), "later than since"),
    ],
)
def test_period_must_be_a_real_interval(since: datetime, until: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Period(since, until)


# --- GET /analytics -----------------------------------------------------------------------------------------


def test_endpoint_reports_a_hook_call_and_its_feedback(client) -> None:
    cards = client.post(f"/cds-services/{SERVICE}", json=critical_request()).get_json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical"]
    reason = cards[0]["overrideReasons"][0]
    stored = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [{
        "card": cards[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:00:00Z",
        "overrideReason": {"reason": {"system": reason["system"], "code": reason["code"]}},
    }]})
    assert stored.status_code == 200

    response = client.get("/analytics")  # the default period: the last 30 days up to now

    assert response.status_code == 200
    body = response.get_json()
    rule = next(r for r in body["rules"] if r["ruleId"] == RULE_ID)
    assert (rule["shown"], rule["overridden"], rule["accepted"]) == (1, 1, 0)
    assert rule["shownByIndicator"]["critical"] == 1
    # The feedback carried code and system only, as the sandbox sends it: the display comes from the rule set.
    assert [(r["code"], r["display"], r["count"]) for r in rule["overrideReasons"]] == [
        (reason["code"], reason["display"], 1)
    ]
    now = datetime.now(UTC)
    since = datetime.fromisoformat(body["period"]["since"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(body["period"]["until"].replace("Z", "+00:00"))
    assert until - since == timedelta(days=30) and abs((now - until).total_seconds()) < 60


def test_endpoint_takes_dates_and_date_times(client) -> None:
    client.post(f"/cds-services/{SERVICE}", json=critical_request())
    today = datetime.now(UTC).date()
    tomorrow = today + timedelta(days=1)
    body = client.get(f"/analytics?since={today.isoformat()}&until={tomorrow.isoformat()}").get_json()
    assert body["period"] == {"since": f"{today}T00:00:00Z", "until": f"{tomorrow}T00:00:00Z"}
    assert body["totals"]["shown"] == 1
    earlier = client.get("/analytics?since=2020-01-01T00:00:00%2B02:00&until=2020-02-01T00:00:00").get_json()
    assert earlier["period"] == {"since": "2019-12-31T22:00:00Z", "until": "2020-02-01T00:00:00Z"}
    assert earlier["rules"] == [] and earlier["totals"]["shown"] == 0


@pytest.mark.parametrize(
    "query",
    ["since=yesterday", "until=2026-13-01", "since=2026-11-02&until=2026-11-01", "since=2026-11-01&until=2026-11-01"],
)
def test_endpoint_refuses_a_bad_period(client, query: str) -> None:
    response = client.get(f"/analytics?{query}")
    assert response.status_code == 400
    assert_operation_outcome(response.get_json(), "CDS-0022")


def test_endpoint_is_authenticated_when_auth_is_on(make_app) -> None:
    key = make_key("ES384")
    issuer = "https://ehr.example.org"
    app = make_app(trusted_issuers=[{"iss": issuer, "jwks": jwks(key)}])
    with app.test_client() as client:
        assert client.get("/analytics").status_code == 401
        wrong = sign(key, claims(issuer, "http://localhost/cds-services"))
        assert client.get("/analytics", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        token = sign(key, claims(issuer, "http://localhost/analytics"))
        response = client.get("/analytics", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        totals = response.get_json()["totals"]
        assert totals == {"shown": 0, "silent": 0, "accepted": 0, "overridden": 0, "hookCalls": 0}
