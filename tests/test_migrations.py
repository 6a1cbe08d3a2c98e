"""The schema belongs to Alembic (cds_service.storage.schema): every start upgrades the database, databases of the
release before Alembic are adopted with their rows, and a database newer than the code is refused in one line.

The PostgreSQL cases run on a throwaway cluster (tests/support/infra.py) and skip, saying why, without its binaries.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, make_url, text
from support.infra import missing_binaries, postgres_cluster
from support.live import free_port

from cds_service.config import ConfigError
from cds_service.storage.database import metadata, open_database
from cds_service.storage.schema import MIGRATIONS, alembic_config

REPO = Path(__file__).resolve().parent.parent

# What the release before Alembic ran at its first start (metadata.create_all), frozen: SQLite and PostgreSQL
# differ only in the id column's and the timestamps' types.
PREVIOUS_RELEASE_DDL = """
CREATE TABLE feedback (
    id {serial} NOT NULL,
    service_id VARCHAR(128) NOT NULL,
    card_uuid VARCHAR(64) NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    outcome_timestamp VARCHAR(64) NOT NULL,
    outcome_at {timestamp} NOT NULL,
    accepted_suggestions TEXT NOT NULL,
    override_system VARCHAR(256) NOT NULL,
    override_code VARCHAR(128) NOT NULL,
    override_display VARCHAR(512) NOT NULL,
    user_comment TEXT NOT NULL,
    rule_id VARCHAR(128) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    received_at {timestamp} NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_feedback_fingerprint UNIQUE (fingerprint)
);
CREATE INDEX ix_feedback_outcome_at ON feedback (outcome_at);
CREATE TABLE issued_cards (
    card_uuid VARCHAR(64) NOT NULL,
    service_id VARCHAR(128) NOT NULL,
    rule_id VARCHAR(128) NOT NULL,
    indicator VARCHAR(16) NOT NULL,
    issued_at {timestamp} NOT NULL,
    PRIMARY KEY (card_uuid)
);
CREATE INDEX ix_issued_cards_issued_at ON issued_cards (issued_at);
CREATE TABLE seen_jti (
    issuer VARCHAR(512) NOT NULL,
    jti VARCHAR(256) NOT NULL,
    expires_at {timestamp} NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX ix_seen_jti_expires_at ON seen_jti (expires_at);
"""
TYPES = {"sqlite": {"serial": "INTEGER", "timestamp": "DATETIME"},
         "postgresql": {"serial": "SERIAL", "timestamp": "TIMESTAMP WITH TIME ZONE"}}

# One row in each table, as the previous release wrote them.
AT = datetime(2026, 10, 30, 9, 15, tzinfo=UTC)
ROWS = {
    "feedback": {
        "service_id": "muscle-cramps-patient-view", "card_uuid": "card-1", "outcome": "overridden",
        "outcome_timestamp": "2026-10-30T09:15:00Z", "outcome_at": AT, "accepted_suggestions": "",
        "override_system": "http://example.org/reasons", "override_code": "not-relevant",
        "override_display": "Not relevant", "user_comment": "seen", "rule_id": "diuretic-hypokalaemia",
        "fingerprint": "f" * 64, "received_at": AT,
    },
    "issued_cards": {"card_uuid": "card-1", "service_id": "muscle-cramps-patient-view",
                     "rule_id": "diuretic-hypokalaemia", "indicator": "warning", "issued_at": AT},
    "seen_jti": {"issuer": "https://ehr.example.org", "jti": "jti-1", "expires_at": AT},
}


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL cluster's first database (others are made beside it)."""
    reason = missing_binaries(nginx=False)
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as cluster:
        yield cluster.url


def new_postgres_database(cluster_url: str) -> str:
    """A new, empty database in the cluster; its URL."""
    name = f"db_{uuid.uuid4().hex[:12]}"
    admin = create_engine(cluster_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(cluster_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each supported kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite3'}"
    return new_postgres_database(request.getfixturevalue("postgres"))


def head_revision() -> str:
    return ScriptDirectory(MIGRATIONS).get_current_head()


def stored_revision(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def all_rows(engine: Engine) -> dict[str, list[dict]]:
    with engine.connect() as conn:
        return {table: [dict(row) for row in conn.execute(text(f"SELECT * FROM {table}")).mappings()]
                for table in ROWS}


def make_previous_release_database(url: str) -> Engine:
    """The database the release before Alembic left: its tables and a row in each, no alembic_version."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in PREVIOUS_RELEASE_DDL.format(**TYPES[engine.dialect.name]).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        for table, row in ROWS.items():
            conn.execute(text(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})"),
                         row)
    return engine


def test_the_migrations_make_exactly_the_model(database_url: str) -> None:
    """Autogenerate finds nothing to do on an upgraded database: the Table objects in storage/database.py and the
    revisions cannot drift apart."""
    engine = open_database(database_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert stored_revision(engine) == [head_revision()]
    engine.dispose()


def test_the_previous_release_s_database_is_adopted_with_its_rows(database_url: str, make_app) -> None:
    previous = make_previous_release_database(database_url)
    before = all_rows(previous)
    assert all(len(rows) == 1 for rows in before.values())

    make_app(database_url=database_url)  # the service's start

    after = all_rows(previous)
    assert {table: [{column: row[column] for column in before[table][0]} for row in rows]
            for table, rows in after.items()} == before
    assert str(after["issued_cards"][0]["issued_on"]) == "2026-10-30"  # revision 0002 fills in the day
    assert stored_revision(previous) == [head_revision()]
    with previous.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    previous.dispose()


def test_tables_unlike_the_first_revision_are_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE seen_jti (issuer VARCHAR(512) NOT NULL, jti VARCHAR(256) NOT NULL, "
                             "PRIMARY KEY (issuer, jti))")
    with pytest.raises(ConfigError) as refused:
        open_database(url)
    message = str(refused.value)
    assert "no alembic_version, and they differ from revision 0001" in message
    assert "add_column seen_jti.expires_at" in message and "add_table feedback" in message
    assert set(inspect(engine).get_table_names()) == {"seen_jti"}  # neither stamped nor half-migrated
    engine.dispose()


def test_a_database_newer_than_the_release_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = open_database(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    engine.dispose()
    env = {**os.environ, "CDS_DATABASE_URL": url, "CDS_DATA_DIR": str(tmp_path / "data"),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    done = subprocess.run([sys.executable, "-m", "cds_service.server.cli", "serve", "--port", str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"cds-service: the database schema is at revision ffff, which this release does not know (its newest is "
        f"{head_revision()}): a newer release migrated it; run that one"
    ]


def test_every_revision_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = open_database(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert stored_revision(engine) == []
    engine.dispose()
    assert stored_revision(open_database(url)) == [head_revision()]


@pytest.mark.slow
def test_four_instances_upgrade_one_new_postgres_database_together(postgres: str) -> None:
    """Four processes start their upgrade at the same moment on an empty database: the advisory lock makes them
    take turns, so each one succeeds and the schema is made once."""
    url = new_postgres_database(postgres)
    script = (
        "import sys, time\n"
        "from cds_service.storage.database import open_database\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "open_database(sys.argv[1])\n"
    )
    start_at = str(time.time() + 3)  # after every interpreter has imported the package
    processes = [subprocess.Popen([sys.executable, "-c", script, url, start_at], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], errors
    engine = create_engine(url)
    assert stored_revision(engine) == [head_revision()]
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_the_documented_authoring_commands_run_from_a_checkout(tmp_path: Path) -> None:
    """README, "Changing the database schema": ``alembic`` reads [tool.alembic] from pyproject.toml, no ini file."""
    url = f"url=sqlite:///{tmp_path / 'scratch.sqlite3'}"
    for args in (["upgrade", "head"], ["check"]):
        done = subprocess.run([sys.executable, "-m", "alembic", "-x", url, *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout
