"""Which rule issued each card: written to the database in batches by a background thread, off the hook's path.

The analytics join clinicians' feedback to these rows by card uuid when they are read, so a row written a
moment after its card was sent counts the same. Writing it inside the hook call cost a transaction and, with
SQLite's full sync, a disk flush on every call (about a tenth of a 200-lab call's time, bench/README.md); a
batch costs one per ``issued_cards_flush_seconds``.

The first row queued after a write starts a timer; when it ends, everything queued by then is written in one
transaction. Rows are also written when a reader in this process needs them (``flush``: the feedback and
analytics endpoints) and when the process exits normally. A process that is killed outright loses at most one
interval of these rows; the cards themselves and the feedback are unaffected. While the database is unreachable
the rows wait, up to ``MAX_PENDING``, and are retried with the next batch.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .database import insert_ignoring_duplicates, issued_cards

log = logging.getLogger("cds_service.storage.issued_cards")

MAX_PENDING = 100_000  # rows held while the database is unreachable (a few MB); older ones are dropped beyond it
RETRY_SECONDS = 5.0  # after a failed write


class IssuedCardLog:
    """The queue of issued-card rows of one process, and the timer that writes them."""

    def __init__(self, engine: Engine, interval_seconds: float) -> None:
        self._engine = engine
        self._insert = insert_ignoring_duplicates(engine, issued_cards)
        self._interval = interval_seconds
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING)
        self._write_lock = threading.Lock()
        self._timer_lock = threading.Lock()
        self._timer_pid: int | None = None  # the process with a write scheduled (gunicorn forks workers)
        self._exit_hook_pid: int | None = None
        self._dropped = 0  # rows pushed out of a full queue since the last report (reported with each write attempt)

    def add(self, service_id: str, cards: Iterable[tuple[str, str, str]], at: datetime) -> None:
        """Queue one row per card (card uuid, rule id, indicator) issued by ``service_id`` at ``at``."""
        rows = [
            {"card_uuid": uuid, "service_id": service_id, "rule_id": rule, "indicator": ind, "issued_at": at}
            for uuid, rule, ind in cards
        ]
        if not rows:
            return
        self._dropped += max(len(self._pending) + len(rows) - MAX_PENDING, 0)
        self._pending.extend(rows)
        if self._timer_pid != os.getpid():
            self._schedule()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write every queued row now, in one transaction; on a database error the rows stay queued and it raises."""
        with self._write_lock:
            batch = [self._pending.popleft() for _ in range(len(self._pending))]
            if self._dropped:
                log.error("%d issued-card rows were dropped from a full queue (database unreachable)", self._dropped)
                self._dropped = 0
            if not batch:
                return
            try:
                with self._engine.begin() as conn:
                    conn.execute(self._insert, batch)
            except SQLAlchemyError as exc:
                self._pending.extendleft(reversed(batch))
                log.warning("issued cards not written yet (%d queued): %s", len(self._pending), type(exc).__name__)
                raise

    def close(self) -> None:
        """Write what is queued (at process exit); the rows left unwritten are logged."""
        try:
            self.flush()
        except SQLAlchemyError:
            log.error("%d issued-card rows could not be written before exit", len(self._pending))

    def _schedule(self, delay: float | None = None) -> None:
        with self._timer_lock:
            pid = os.getpid()
            if self._timer_pid == pid:
                return
            self._timer_pid = pid
            if self._exit_hook_pid != pid:
                self._exit_hook_pid = pid
                atexit.register(self.close)
        timer = threading.Timer(self._interval if delay is None else delay, self._timed_write)
        timer.daemon = True
        timer.start()

    def _timed_write(self) -> None:
        with self._timer_lock:
            self._timer_pid = None  # rows queued from now on schedule the next write
        try:
            self.flush()
        except SQLAlchemyError:
            if self._pending:
                self._schedule(max(RETRY_SECONDS, self._interval))
