"""Rule governance: per-day analytics, silent firings and the repeat check (issue 19).

``issued_cards`` gains ``issued_on`` (the UTC day of ``issued_at``, filled in for existing rows), ``deployment``
(``active``: shown; ``silent``: recorded only), ``patient`` (the hashed patient id) and ``finding`` (the
fingerprint the repeat check looks up); ``hook_calls_daily`` counts hook calls per day and service.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_cards") as batch:
        batch.add_column(sa.Column("issued_on", sa.Date, nullable=True))
        batch.add_column(sa.Column("deployment", sa.String(8), nullable=False, server_default="active"))
        batch.add_column(sa.Column("patient", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("finding", sa.String(64), nullable=False, server_default=""))
        batch.create_index("ix_issued_cards_issued_on", ["issued_on"])
        batch.create_index("ix_issued_cards_finding", ["finding", "issued_at"])
    day = "(issued_at AT TIME ZONE 'UTC')::date" if op.get_bind().dialect.name == "postgresql" else "date(issued_at)"
    op.execute(f"UPDATE issued_cards SET issued_on = {day}")
    op.create_table(
        "hook_calls_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("service_id", sa.String(128), primary_key=True),
        sa.Column("calls", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hook_calls_daily")
    with op.batch_alter_table("issued_cards") as batch:
        batch.drop_index("ix_issued_cards_finding")
        batch.drop_index("ix_issued_cards_issued_on")
        for column in ("finding", "patient", "deployment", "issued_on"):
            batch.drop_column(column)
