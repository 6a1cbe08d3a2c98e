"""Alembic's environment: how a migration run reaches the database.

The service hands Alembic an open connection (cds_service.storage.schema does, under its lock); the ``alembic``
command, run from a checkout to author a revision, names a database with ``-x url=...`` instead.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from cds_service.storage.database import metadata


def migrate(connection: Connection) -> None:
    # Batch operations let a revision alter columns on SQLite too (a table copy there, plain ALTER elsewhere).
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    handed = context.config.attributes.get("connection")
    if handed is not None:
        migrate(handed)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("name the database: alembic -x url=sqlite:///scratch.sqlite3 ...")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) runs are not supported: the first revision creates its tables from a model")
run()
