"""The schema the releases before Alembic made with ``create_all``: feedback, issued_cards, seen_jti.

Its tables are a frozen copy of the model as it was then (``SCHEMA``), created the way those releases did, so a
database they made is exactly what this revision makes: cds_service.storage.schema compares one with ``SCHEMA``
before adopting it (stamping it at this revision). Never edit this file; change the schema in a new revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
from sqlalchemy import Column, DateTime, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = MetaData()

Table(
    "feedback",
    SCHEMA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("outcome_at", DateTime(timezone=True), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),
    Column("override_system", String(256), nullable=False),
    Column("override_code", String(128), nullable=False),
    Column("override_display", String(512), nullable=False),
    Column("user_comment", Text, nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("fingerprint", name="uq_feedback_fingerprint"),
    Index("ix_feedback_outcome_at", "outcome_at"),
)

Table(
    "issued_cards",
    SCHEMA,
    Column("card_uuid", String(64), primary_key=True),
    Column("service_id", String(128), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Index("ix_issued_cards_issued_at", "issued_at"),
)

Table(
    "seen_jti",
    SCHEMA,
    Column("issuer", String(512), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_seen_jti_expires_at", "expires_at"),
)


def upgrade() -> None:
    SCHEMA.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    SCHEMA.drop_all(op.get_bind(), checkfirst=False)
