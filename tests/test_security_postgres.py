"""The jti replay store on a real PostgreSQL server (a throwaway cluster on 127.0.0.1, started by the test).

Skipped when the PostgreSQL server binaries are not installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from support.live import free_port

from cds_service.security.replay import ReplayGuard
from cds_service.storage.database import open_database, seen_jti

pytestmark = pytest.mark.slow


def _as_postgres_user(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: switch to the postgres account when the tests run as root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[Engine]:
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    home = tempfile.mkdtemp(prefix="cds-pg-")
    if os.geteuid() == 0:
        shutil.chown(home, user="postgres")
    data, port = os.path.join(home, "data"), free_port()

    def run(*command: str) -> None:
        subprocess.run(_as_postgres_user(*command), check=True, capture_output=True, timeout=60)

    try:
        run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        run("pg_ctl", "-D", data, "-o", options, "-l", os.path.join(home, "log"), "-w", "start")
        engine = open_database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
        yield engine
        engine.dispose()
    finally:
        subprocess.run(_as_postgres_user("pg_ctl", "-D", data, "-m", "immediate", "stop"), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def in_minutes(minutes: int) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_a_jti_is_accepted_once(pg_engine: Engine) -> None:
    guard = ReplayGuard(pg_engine)
    assert guard.first_use("https://ehr.example.org", "jti-1", in_minutes(5))
    assert not guard.first_use("https://ehr.example.org", "jti-1", in_minutes(5))
    assert guard.first_use("https://other.example.org", "jti-1", in_minutes(5))  # jtis are per issuer


def test_concurrent_guards_accept_one_use(pg_engine: Engine) -> None:
    """Four instances (own engines and pools), sixteen threads, one jti: exactly one use is accepted."""
    engines = [open_database(str(pg_engine.url)) for _ in range(4)]
    guards = [ReplayGuard(engine) for engine in engines]
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def attempt(guard: ReplayGuard) -> None:
        barrier.wait()
        results.append(guard.first_use("https://ehr.example.org", "contended", in_minutes(5)))

    threads = [threading.Thread(target=attempt, args=(guards[i % 4],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert sorted(results) == [False] * 15 + [True]


def test_expired_rows_are_purged(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(seen_jti.insert().values(issuer="https://ehr.example.org", jti="old", expires_at=in_minutes(-5)))
    assert ReplayGuard(pg_engine).first_use("https://ehr.example.org", "new", in_minutes(5))
    with pg_engine.connect() as conn:
        left = conn.execute(select(func.count()).select_from(seen_jti).where(seen_jti.c.jti == "old")).scalar()
    assert left == 0


def test_the_jti_of_an_expired_token_can_be_used_again(pg_engine: Engine) -> None:
    guard = ReplayGuard(pg_engine, purge_interval_seconds=3600)
    assert guard.first_use("https://ehr.example.org", "warm-up", in_minutes(5))  # this guard's purge is done
    with pg_engine.begin() as conn:
        row = {"issuer": "https://ehr.example.org", "jti": "reused", "expires_at": in_minutes(-5)}
        conn.execute(seen_jti.insert().values(**row))
    assert guard.first_use("https://ehr.example.org", "reused", in_minutes(5))
    assert not guard.first_use("https://ehr.example.org", "reused", in_minutes(5))
