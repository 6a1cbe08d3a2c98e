"""Replay protection: each (issuer, jti) is accepted once while its token can still be valid.

The ``seen_jti`` table's primary key makes the check atomic across threads, workers and instances sharing the
database (SQLite or PostgreSQL): the first INSERT wins, any other fails on the key. Rows are kept until the
token's expiry (plus leeway) and purged opportunistically; only the issuer, the jti and the expiry are stored.
"""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from ..storage.database import seen_jti

PURGE_INTERVAL_SECONDS = 60.0


class ReplayGuard:
    def __init__(self, engine: Engine, purge_interval_seconds: float = PURGE_INTERVAL_SECONDS):
        self._engine = engine
        self._purge_interval = purge_interval_seconds
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0  # monotonic time; 0 purges on first use

    def first_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record the jti; True the first time, False if it was already seen and has not expired."""
        now = datetime.now(UTC)
        self._purge_if_due(now)
        if self._insert(issuer, jti, expires_at):
            return True
        # The row may belong to an expired token that reused the jti: free it and try once more.
        with self._engine.begin() as conn:
            freed = conn.execute(
                delete(seen_jti).where(
                    seen_jti.c.issuer == issuer, seen_jti.c.jti == jti, seen_jti.c.expires_at < now
                )
            ).rowcount
        return bool(freed) and self._insert(issuer, jti, expires_at)

    def _insert(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(seen_jti).values(issuer=issuer, jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def _purge_if_due(self, now: datetime) -> None:
        if not self._purge_lock.acquire(blocking=False):
            return  # another thread is purging
        try:
            if time.monotonic() < self._next_purge:
                return
            self._next_purge = time.monotonic() + self._purge_interval
            with self._engine.begin() as conn:
                conn.execute(delete(seen_jti).where(seen_jti.c.expires_at < now))
        finally:
            self._purge_lock.release()
