"""Which rule issued each card: queued by the hook call, written in batches off its path
(cds_service.storage.issued_cards)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from cds_service.storage import issued_cards as issued_cards_module
from cds_service.storage.database import issued_cards, open_database
from cds_service.viewer.examples import shipped_examples

SERVICE = "muscle-cramps-patient-view"


def _stored(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(issued_cards.c.card_uuid, issued_cards.c.rule_id)).all())


def _issue_cards(app) -> list[str]:
    response = app.test_client().post(f"/cds-services/{SERVICE}", json=shipped_examples()["statin-ck-critical"].request)
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = [card["uuid"] for card in response.get_json()["cards"]]
    assert cards, "the fixture is expected to fire"
    return cards


def test_issued_cards_are_written_when_the_interval_ends_without_any_reader(make_app):
    app = make_app(issued_cards_flush_seconds=0.05)
    parts = app.extensions["cds_service"]
    cards = _issue_cards(app)
    deadline = time.monotonic() + 5
    # Until the rows are committed: the queue empties when the write starts, before its commit.
    while not set(cards) <= set(_stored(parts.engine)) and time.monotonic() < deadline:
        time.sleep(0.02)
    stored = _stored(parts.engine)
    assert set(cards) <= set(stored)
    assert all(stored[card] for card in cards)  # each row names its rule


def _wait_stored(engine, cards: list[str]) -> None:
    deadline = time.monotonic() + 5
    while not set(cards) <= set(_stored(engine)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(cards) <= set(_stored(engine))


def test_one_writer_thread_per_process_writes_batch_after_batch(make_app):
    app = make_app(issued_cards_flush_seconds=0.05)
    parts = app.extensions["cds_service"]

    def writers() -> int:
        return sum(thread.name == "issued-cards" for thread in threading.enumerate())

    before = writers()
    _wait_stored(parts.engine, _issue_cards(app))
    assert writers() == before + 1
    _wait_stored(parts.engine, _issue_cards(app))  # the next batch, by the same thread
    assert writers() == before + 1


def test_the_writer_retries_a_failed_write_until_the_database_is_back(make_app, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(issued_cards_module, "RETRY_SECONDS", 0.1)
    database = tmp_path / "issued.sqlite3"
    app = make_app(database_url=f"sqlite:///{database}", issued_cards_flush_seconds=0.05)
    parts = app.extensions["cds_service"]
    parts.engine.dispose()
    saved = database.rename(tmp_path / "saved.sqlite3")
    database.mkdir()  # a directory where the database was: every connection fails
    cards = _issue_cards(app)
    time.sleep(0.4)
    assert "issued cards not written yet" in caplog.text  # the writer's first attempts failed
    database.rmdir()
    saved.rename(database)
    _wait_stored(parts.engine, cards)


def test_the_hook_call_does_not_write_and_readers_see_the_cards_at_once(make_app):
    app = make_app(issued_cards_flush_seconds=3600)  # the timer never runs during this test
    parts = app.extensions["cds_service"]
    cards = _issue_cards(app)
    assert parts.issued.pending == len(cards)
    assert not set(cards) & set(_stored(parts.engine))
    period = "since=2000-01-01T00:00:00Z&until=2100-01-01T00:00:00Z"
    report = app.test_client().get(f"/analytics?{period}").get_json()  # a reader flushes first
    assert sum(rule["shown"] for rule in report["rules"]) == len(cards)
    assert parts.issued.pending == 0


def test_cards_are_answered_while_the_database_is_unreachable_and_recorded_once_it_is_back(make_app, tmp_path):
    database = tmp_path / "issued.sqlite3"
    app = make_app(database_url=f"sqlite:///{database}", issued_cards_flush_seconds=3600)
    parts = app.extensions["cds_service"]
    parts.engine.dispose()  # the last connection closes: the WAL is checkpointed into the file
    saved = database.rename(tmp_path / "saved.sqlite3")
    database.mkdir()  # a directory where the database was: every connection fails
    cards = _issue_cards(app)
    with pytest.raises(OperationalError):
        parts.issued.flush()
    assert parts.issued.pending == len(cards)
    database.rmdir()
    saved.rename(database)
    parts.issued.flush()
    assert set(cards) <= set(_stored(parts.engine))


def test_a_repeated_row_is_stored_once(make_app):
    parts = make_app().extensions["cds_service"]
    card = str(uuid.uuid4())
    for _ in range(2):
        parts.issued.add(SERVICE, [(card, "rule-a", "info")], datetime.now(UTC))
        parts.issued.flush()
    assert _stored(parts.engine) == {card: "rule-a"}


def test_queued_rows_are_written_when_the_process_exits(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'exit.sqlite3'}"
    script = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from cds_service.storage.issued_cards import IssuedCardLog\n"
        "from cds_service.storage.database import open_database\n"
        "log = IssuedCardLog(open_database(sys.argv[1]), 3600)\n"
        "log.add('muscle-cramps-patient-view', [('card-1', 'rule-a', 'warning'), ('card-2', 'rule-b', 'info')],"
        " datetime.now(UTC))\n"
    )
    subprocess.run([sys.executable, "-c", script, url], check=True, timeout=60)
    assert _stored(open_database(url)) == {"card-1": "rule-a", "card-2": "rule-b"}


def test_a_full_queue_drops_the_oldest_rows_and_says_how_many(monkeypatch, tmp_path, caplog):
    from sqlalchemy import create_engine

    from cds_service.storage import issued_cards as issued

    monkeypatch.setattr(issued, "MAX_PENDING", 3)
    unreachable = create_engine(f"sqlite:///{tmp_path / 'missing-folder' / 'x.sqlite3'}")
    log = issued.IssuedCardLog(unreachable, 3600)
    log.add(SERVICE, [(f"card-{n}", "rule-a", "info") for n in range(5)], datetime.now(UTC))
    assert log.pending == 3
    with caplog.at_level("WARNING", logger="cds_service.storage.issued_cards"), pytest.raises(OperationalError):
        log.flush()
    assert "2 issued-card rows were dropped" in caplog.text
    assert log.pending == 3  # kept for the next attempt
    (tmp_path / "missing-folder").mkdir()
    open_database(str(unreachable.url)).dispose()  # the folder exists now: the schema is made
    log.flush()
    assert sorted(_stored(unreachable)) == ["card-2", "card-3", "card-4"]  # the newest three
