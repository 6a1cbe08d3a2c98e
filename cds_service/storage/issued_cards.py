"""Which rule issued each card: written to the database in batches by a background thread, off the hook's path.

The analytics join clinicians' feedback to these rows by card uuid when they are read, so a row written a
moment after its card was sent counts the same. Writing it inside the hook call cost a transaction and, with
SQLite's full sync, a disk flush on every call (about a tenth of a 200-lab call's time, bench/README.md); a
batch costs one per ``issued_cards_flush_seconds``.

A writer thread per process waits for the first row queued after a write, then one interval, and writes
everything queued by then in one transaction. Rows are also written when a reader in this process needs them
(``flush``: the feedback and analytics endpoints) and when the process exits normally. A process that is killed
outright loses at most one interval of these rows; the cards themselves and the feedback are unaffected. While the
database is unreachable the rows wait, up to ``MAX_PENDING``, and are retried with the next batch. Hook calls are
counted per day and service the same way (``hook_calls_daily``, the denominator of firing rates).

The repeat check (``seen``) reads the database and this process's queue (with the batch being written, until it
is committed), so a card is known at once to the process that issued it and, to the other workers and instances,
once its batch is written: within ``issued_cards_flush_seconds``. Two calls for the same finding on two processes
inside that interval can both show the card. While the database cannot be read, only this process's queue is known
(the card shows), and after a failed read the database is left alone for ``RETRY_SECONDS``, so an unreachable
database slows at most one hook call per process in that time.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..rules.model import INDICATOR_RANK
from .database import add_to_counts, hook_calls_daily, insert_ignoring_duplicates, issued_cards

log = logging.getLogger("cds_service.storage.issued_cards")

MAX_PENDING = 100_000  # rows held while the database is unreachable (a few MB); older ones are dropped beyond it
RETRY_SECONDS = 5.0  # after a failed write


class IssuedRow(NamedTuple):
    """One card issued: shown (``active``) or only recorded (``silent``), with its finding's fingerprint."""

    card_uuid: str
    rule_id: str
    indicator: str
    deployment: str = "active"
    finding: str = ""


class IssuedCardLog:
    """The queue of issued-card rows of one process, and the thread that writes them."""

    def __init__(self, engine: Engine, interval_seconds: float) -> None:
        self._engine = engine
        self._insert = insert_ignoring_duplicates(engine, issued_cards)
        self._add_calls = add_to_counts(engine, hook_calls_daily, "calls")
        self._interval = interval_seconds
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING)
        self._writing: list[dict[str, Any]] = []  # the batch taken off the queue and not yet committed
        self._handoff = threading.Lock()  # moving rows between the two, and the repeat check's look at them
        self._write_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._writer_pid: int | None = None  # the process whose writer thread runs (gunicorn forks workers)
        self._queued = threading.Event()  # set when rows or calls wait for the writer
        self._dropped = 0  # rows pushed out of a full queue since the last report (reported with each write attempt)
        self._calls: Counter[tuple[date, str]] = Counter()  # hook calls not written yet, by day and service
        self._calls_lock = threading.Lock()
        self._read_failed_at: float | None = None  # time.monotonic() of the last failed repeat-check read
        self._read = FindingsRead(engine)

    def add(self, service_id: str, cards: Iterable[tuple[str, ...]], at: datetime, patient: str = "") -> None:
        """Count one hook call of ``service_id`` at ``at`` (UTC) and queue one row per card it issued (an
        ``IssuedRow``, or its first fields); ``patient`` is the hashed patient id."""
        day = at.astimezone(UTC).date()
        call = {"service_id": service_id, "issued_at": at, "issued_on": day, "patient": patient}
        rows = [{**call, **IssuedRow(*card)._asdict()} for card in cards]
        with self._calls_lock:
            self._calls[(day, service_id)] += 1
        self._dropped += max(len(self._pending) + len(rows) - MAX_PENDING, 0)
        self._pending.extend(rows)
        if self._writer_pid != os.getpid():
            self._start_writer()
        self._queued.set()

    def seen(self, since: Mapping[str, datetime]) -> dict[str, str]:
        """For each finding fingerprint, the most severe indicator it was issued with since its time in ``since``:
        from this process's queue and the database (only the queue while the database cannot be read)."""
        found: dict[str, str] = {}

        def note(finding: str, issued_at: datetime, indicator: str) -> None:
            earlier = found.get(finding)
            if issued_at >= since[finding] and (earlier is None or INDICATOR_RANK[indicator] < INDICATOR_RANK[earlier]):
                found[finding] = indicator

        with self._handoff:
            unwritten = [*self._pending, *self._writing]
        for row in unwritten:
            if row["finding"] in since:
                note(row["finding"], row["issued_at"], row["indicator"])
        failed = self._read_failed_at
        if failed is not None and time.monotonic() - failed < RETRY_SECONDS:
            return found
        try:
            for finding, issued_at, indicator in self._read(since):
                note(finding, issued_at, indicator)
            self._read_failed_at = None
        except (SQLAlchemyError, self._read.errors) as exc:
            self._read_failed_at = time.monotonic()
            log.warning("repeat check without the database (cards may repeat): %s", type(exc).__name__)
        return found

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write every queued row now, in one transaction; on a database error the rows stay queued and it raises."""
        with self._write_lock:
            with self._handoff:
                batch = self._writing = [self._pending.popleft() for _ in range(len(self._pending))]
            with self._calls_lock:
                calls, self._calls = self._calls, Counter()
            if self._dropped:
                log.error("%d issued-card rows were dropped from a full queue (database unreachable)", self._dropped)
                self._dropped = 0
            if not batch and not calls:
                return
            try:
                with self._engine.begin() as conn:
                    if batch:
                        conn.execute(self._insert, batch)
                    if calls:
                        counts = [{"day": d, "service_id": service, "calls": n} for (d, service), n in calls.items()]
                        conn.execute(self._add_calls, counts)
            except Exception as exc:  # a database error above all; whatever it is, the rows stay queued
                with self._handoff:
                    self._pending.extendleft(reversed(batch))
                    self._writing = []
                with self._calls_lock:
                    self._calls.update(calls)
                log.warning("issued cards not written yet (%d queued): %s", len(self._pending), type(exc).__name__)
                raise
            with self._handoff:
                self._writing = []  # committed: the database has them now

    def close(self) -> None:
        """Write what is queued (at process exit); the rows left unwritten are logged."""
        try:
            self.flush()
        except SQLAlchemyError:
            log.error("%d issued-card rows could not be written before exit", len(self._pending))

    def _start_writer(self) -> None:
        """This process's writer thread (one per process: threads do not survive gunicorn's fork), and the exit
        hook that writes what is left."""
        with self._writer_lock:
            pid = os.getpid()
            if self._writer_pid == pid:
                return
            self._queued = threading.Event()
            threading.Thread(target=self._write_batches, name="issued-cards", daemon=True).start()
            atexit.register(self.close)
            self._writer_pid = pid

    def _write_batches(self) -> None:
        """Once rows are queued, wait an interval and write everything queued by then; after a failed write, wait
        ``RETRY_SECONDS`` (or the interval, if longer) and try again. A long-lived thread rather than a timer per
        batch: starting a thread made the hook call that queued the first row wait for it to start."""
        delay = self._interval
        while True:
            self._queued.wait()
            time.sleep(delay)
            self._queued.clear()  # rows queued from now on are waited for anew (or written by this flush)
            try:
                self.flush()
                delay = self._interval
            except Exception:  # logged by flush; the thread must outlive any one failed write
                delay = max(RETRY_SECONDS, self._interval)
                self._queued.set()


class FindingsRead:
    """The repeat check's query on the database driver's own connection (taken from the engine's pool).

    It runs in every hook call with cards, and there SQLAlchemy Core's execution (its ``Connection``, execution
    context and result object) cost several times the indexed query itself (bench/README.md, tenth round). The SQL
    is the one ``select(finding, issued_at, indicator).where(finding IN ..., issued_at >= ...)`` would send, in the
    driver's placeholder style; the column's own type, as SQLAlchemy adapts it to the dialect, still converts the
    times both ways, so they compare and come back exactly as through Core.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        dialect = engine.dialect
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"  # sqlite3 / psycopg (both positional)
        issued_at = issued_cards.c.issued_at.type.dialect_impl(dialect)
        self._bind_time: Callable[[Any], Any] = issued_at.bind_processor(dialect) or _unchanged
        self._result_time: Callable[[Any], Any] = issued_at.result_processor(dialect, None) or _unchanged
        self.errors: type[Exception] = dialect.loaded_dbapi.Error  # what the driver raises

    def __call__(self, since: Mapping[str, datetime]) -> list[tuple[str, datetime, str]]:
        """(finding, issued_at, indicator) of each row of a finding in ``since`` issued at or after the earliest
        time in it (the caller compares each row with its own finding's time)."""
        marks = ", ".join(self._mark for _ in since)
        sql = (
            "SELECT finding, issued_at, indicator FROM issued_cards "
            f"WHERE finding IN ({marks}) AND issued_at >= {self._mark}"
        )
        with self._engine.raw_connection() as conn:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, (*since, self._bind_time(min(since.values()))))
                rows = cursor.fetchall()
            finally:
                cursor.close()
        return [(finding, _aware(self._result_time(at)), indicator) for finding, at, indicator in rows]


def _unchanged(value: Any) -> Any:
    return value


def _aware(moment: datetime) -> datetime:
    """SQLite gives back the UTC times it was given without their zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
