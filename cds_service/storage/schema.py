"""The database schema belongs to Alembic: every start upgrades the database to this release's revision.

The revisions live in the package (``migrations/``), so an installed service migrates from any working
directory with no ``alembic.ini``. A database made by the releases before Alembic (their tables, no
``alembic_version``) is adopted: stamped at the first revision, which creates the same tables, once they are
checked to match it. A database migrated by a newer release is refused with a one-line error.
"""
from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any

# Alembic logs at INFO when imported and at every run; what a start changes is logged here instead.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, Engine, MetaData, inspect, text  # noqa: E402

from ..config import ConfigError  # noqa: E402

MIGRATIONS = str(files(__package__) / "migrations")
FIRST_REVISION = "0001"  # its tables are what the releases before Alembic created
SCHEMA_LOCK_KEY = 0x636473  # PostgreSQL advisory lock held while migrating ("cds"), so instances take turns

log = logging.getLogger(__name__)


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, in code: the package's migrations, run on ``connection`` (see migrations/env.py)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to this release's newest revision, in one transaction and, on PostgreSQL, under an
    advisory lock: instances starting together on an empty database migrate it once, the others then find it
    current. Raises ConfigError when the database is newer than this release or holds tables it cannot adopt."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        config = alembic_config(connection)
        scripts = ScriptDirectory.from_config(config)
        current = MigrationContext.configure(connection).get_current_heads()
        unknown = set(current) - {script.revision for script in scripts.walk_revisions()}
        if unknown:
            raise ConfigError(
                f"the database schema is at revision {', '.join(sorted(unknown))}, which this release does not know "
                f"(its newest is {scripts.get_current_head()}): a newer release migrated it; run that one"
            )
        if not current and _adopt_pre_alembic_tables(connection, config, scripts):
            current = (FIRST_REVISION,)
        command.upgrade(config, "head")
        upgraded = MigrationContext.configure(connection).get_current_heads()
        if upgraded != current:
            log.info("database schema upgraded from %s to %s", ", ".join(current) or "nothing", ", ".join(upgraded))


def _adopt_pre_alembic_tables(connection: Connection, config: Config, scripts: ScriptDirectory) -> bool:
    """Stamp a database made before Alembic at the first revision, when its tables are exactly that revision's;
    False when it has none of them."""
    first: MetaData = scripts.get_revision(FIRST_REVISION).module.SCHEMA
    ours = set(first.tables)
    if not ours & set(inspect(connection).get_table_names()):
        return False  # an empty database (or only other applications' tables): the first revision creates ours
    only_ours = MigrationContext.configure(
        connection, opts={"include_name": lambda name, kind, _parent: kind != "table" or name in ours}
    )
    differences = compare_metadata(only_ours, first)
    if differences:
        raise ConfigError(
            f"the database has tables of this service but no alembic_version, and they differ from revision "
            f"{FIRST_REVISION} (it would {', '.join(_describe(d) for d in differences)}): bring them to that "
            f"revision by hand, then start again"
        )
    log.info("database tables made before Alembic adopted as revision %s", FIRST_REVISION)
    command.stamp(config, FIRST_REVISION)
    return True


def _describe(difference: Any) -> str:
    """One of compare_metadata's differences in a few words: ``add_column seen_jti.expires_at``."""
    if isinstance(difference, list):  # the changes to one column: [("modify_type", schema, table, column, ...)]
        _kind, _schema, table, column = difference[0][:4]
        return f"{'/'.join(change[0] for change in difference)} {table}.{column}"
    kind, subject = difference[0], difference[-1]
    table = getattr(subject, "table", None)
    return f"{kind} {table.name}.{subject.name}" if table is not None else f"{kind} {subject.name}"
