"""The shared database (SQLAlchemy Core): SQLite by default, PostgreSQL when ``database_url`` says so.

It holds what several workers and instances must agree on: clinician feedback, the cards issued (for
analytics and the repeat check), hook calls per day, and seen JWT ids (replay protection). Access tokens and
JWTs themselves are never stored. The tables below are the code's model of the schema; the database gets them
from the Alembic migrations (cds_service.storage.schema), which a test keeps equal.
"""
from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from .schema import upgrade_schema

metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", String(64), nullable=False),  # as sent (RFC 3339), for exact idempotency
    Column("outcome_at", DateTime(timezone=True), nullable=False),  # parsed, for period queries
    Column("accepted_suggestions", Text, nullable=False, default=""),  # comma-joined suggestion uuids
    Column("override_system", String(256), nullable=False, default=""),
    Column("override_code", String(128), nullable=False, default=""),
    Column("override_display", String(512), nullable=False, default=""),
    Column("user_comment", Text, nullable=False, default=""),
    Column("rule_id", String(128), nullable=False, default=""),  # from the card issued, when known
    Column("fingerprint", String(64), nullable=False),  # sha256 of the normalised entry
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("fingerprint", name="uq_feedback_fingerprint"),
)
Index("ix_feedback_outcome_at", feedback.c.outcome_at)

issued_cards = Table(
    "issued_cards",
    metadata,
    Column("card_uuid", String(64), primary_key=True),
    Column("service_id", String(128), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    # Since revision 0002 (empty or NULL in older rows): the UTC day of issued_at, for per-day analytics; whether
    # the card was shown or only recorded (a silent rule); the hashed patient id; and the finding's fingerprint
    # (cds_service.governance.finding_fingerprint), which the repeat check looks up.
    Column("issued_on", Date, nullable=True),
    Column("deployment", String(8), nullable=False, server_default="active"),
    Column("patient", String(16), nullable=False, server_default=""),
    Column("finding", String(64), nullable=False, server_default=""),
)
Index("ix_issued_cards_issued_at", issued_cards.c.issued_at)
Index("ix_issued_cards_issued_on", issued_cards.c.issued_on)
Index("ix_issued_cards_finding", issued_cards.c.finding, issued_cards.c.issued_at)

hook_calls_daily = Table(  # hook calls answered per UTC day and service: the denominator of firing rates
    "hook_calls_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("service_id", String(128), primary_key=True),
    Column("calls", Integer, nullable=False),
)

seen_jti = Table(
    "seen_jti",
    metadata,
    Column("issuer", String(512), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
Index("ix_seen_jti_expires_at", seen_jti.c.expires_at)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # several gunicorn workers write the same file
    cursor.execute("PRAGMA synchronous=FULL")  # a committed row survives a crash
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def open_database(url: str) -> Engine:
    """An engine on ``url`` whose schema is upgraded to this release's (cds_service.storage.schema); SQLite is put
    in WAL mode with full sync."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    upgrade_schema(engine)
    return engine


def insert_ignoring_duplicates(engine: Engine, table: Table, *unique_columns: str) -> Insert:
    """``INSERT`` into ``table`` that skips rows clashing with ``unique_columns`` (the primary key when none are
    named): ``ON CONFLICT DO NOTHING`` in both supported dialects."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(engine.dialect.name)
    if dialect is None:
        raise ValueError(f"unsupported database dialect {engine.dialect.name!r}: use SQLite or PostgreSQL")
    insert: Insert = dialect.insert(table).on_conflict_do_nothing(index_elements=list(unique_columns) or None)
    return insert


def add_to_counts(engine: Engine, table: Table, count_column: str) -> Insert:
    """``INSERT`` into ``table`` that adds ``count_column`` to the row with the same primary key when there is one
    (``ON CONFLICT DO UPDATE``), so several processes can add to one counter."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[engine.dialect.name]
    insert = dialect.insert(table)
    keys = [column.name for column in table.primary_key.columns]
    adding: Insert = insert.on_conflict_do_update(
        index_elements=keys, set_={count_column: table.c[count_column] + insert.excluded[count_column]}
    )
    return adding


def is_reachable(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
