"""Feedback: validated, stored durably through SQLAlchemy, idempotent for identical repeats."""
from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select
from support.hookcalls import SERVICE_IDS, assert_operation_outcome

from cds_service.storage.database import feedback as feedback_table

PV = SERVICE_IDS["patient-view"]
URL = f"/cds-services/{PV}/feedback"
OVERRIDE_SYSTEM = "https://example.org/override-reasons"


def accepted(card: str | None = None) -> dict:
    return {"card": card or str(uuid.uuid4()), "outcome": "accepted",
            "acceptedSuggestions": [{"id": str(uuid.uuid4())}], "outcomeTimestamp": "2026-11-01T10:00:00.123Z"}


def overridden(card: str | None = None, **reason) -> dict:
    entry = {"card": card or str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:01:00Z"}
    if reason:
        entry["overrideReason"] = reason
    return entry


def post(client, body):
    return client.post(URL, data=json.dumps(body), content_type="application/json")


def rows(app):
    with app.extensions["cds_service"].engine.connect() as conn:
        return conn.execute(select(feedback_table)).mappings().all()


def test_feedback_is_stored(app, client):
    entry = overridden(reason={"code": "not-relevant", "system": OVERRIDE_SYSTEM}, userComment="known, treated")
    response = post(client, {"feedback": [accepted(), entry]})
    assert response.status_code == 200
    assert response.get_json() == {"received": 2, "stored": 2, "duplicates": 0}
    stored = {r["outcome"]: r for r in rows(app)}
    assert stored["overridden"]["override_code"] == "not-relevant"
    assert stored["overridden"]["user_comment"] == "known, treated"
    assert stored["accepted"]["accepted_suggestions"]


def test_identical_repeat_is_stored_once(app, client):
    body = {"feedback": [accepted()]}
    assert post(client, body).get_json()["stored"] == 1
    assert post(client, body).get_json() == {"received": 1, "stored": 0, "duplicates": 1}
    assert len(rows(app)) == 1


def test_feedback_survives_a_restart(make_app, tmp_path):
    first = make_app()
    post(first.test_client(), {"feedback": [accepted("c-1")]})
    first.extensions["cds_service"].engine.dispose()
    second = make_app()
    assert [r["card_uuid"] for r in rows(second)] == ["c-1"]


def test_feedback_names_the_rule_that_issued_the_card(app, client):
    from datetime import UTC, datetime

    app.extensions["cds_service"].issued.add(PV, [("card-9", "some-rule", "warning")], datetime.now(UTC))
    post(client, {"feedback": [overridden("card-9")]})  # before the issued-card batch is due: flushed first
    assert rows(app)[0]["rule_id"] == "some-rule"


INVALID = [
    ("no feedback array", {}),
    ("empty feedback", {"feedback": []}),
    ("accepted without suggestions", {"feedback": [{**accepted(), "acceptedSuggestions": None}]}),
    ("unknown outcome", {"feedback": [{**accepted(), "outcome": "ignored"}]}),
    ("no timestamp", {"feedback": [{k: v for k, v in accepted().items() if k != "outcomeTimestamp"}]}),
    ("bad timestamp", {"feedback": [{**accepted(), "outcomeTimestamp": "yesterday"}]}),
    ("reason without code", {"feedback": [overridden(reason={"system": OVERRIDE_SYSTEM})]}),
    ("empty override reason", {"feedback": [{**overridden(), "overrideReason": {}}]}),
    ("card not a string", {"feedback": [{**accepted(), "card": 5}]}),
]


@pytest.mark.parametrize(("name", "body"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_feedback_is_400(app, client, name, body):
    body = json.loads(json.dumps(body))
    for entry in body.get("feedback", []):
        if entry.get("acceptedSuggestions", 0) is None:
            del entry["acceptedSuggestions"]
    response = post(client, body)
    assert response.status_code == 400
    assert_operation_outcome(response.get_json(), "CDS-0015")
    assert rows(app) == []


def test_feedback_for_an_unknown_service_is_404(client):
    response = client.post("/cds-services/nope/feedback", data=json.dumps({"feedback": [accepted()]}),
                           content_type="application/json")
    assert response.status_code == 404
    assert_operation_outcome(response.get_json(), "CDS-0007")


def test_sandbox_shaped_dismissal_is_accepted(app, client):
    """The sandbox sends overrideReason.reason with code and system only, and a millisecond timestamp."""
    entry = overridden(reason={"code": "x", "system": OVERRIDE_SYSTEM})
    entry["overrideReason"] = {"reason": {"code": "x", "system": OVERRIDE_SYSTEM}}
    assert post(client, {"feedback": [entry]}).status_code == 200
