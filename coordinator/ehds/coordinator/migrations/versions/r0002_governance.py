"""Governance: the audit chain replaces audit_events; data permits; signed assignments; node
audit anchors; retention; DONE becomes RELEASED.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The rows of audit_events are not carried over: they were unsigned and unchained, and a chain
cannot be signed here (a migration has no key). The coordinator's chain starts at this
version; export audit_events first if its history matters (`SELECT * FROM audit_events`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    # ehds.coordinator.state.models.UtcDateTime stores through this type (see r0001).
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    # ehds.audit.audit_table, as declared when this migration was written.
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"])

    op.drop_index(op.f("ix_audit_events_study_id"), table_name="audit_events")
    op.drop_table("audit_events")

    op.create_table(
        "permits",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("issuer", sa.String(length=63), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("holders", sa.Text(), nullable=False),
        sa.Column("nodes", sa.Text(), nullable=False),
        sa.Column("analyses", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("valid_from", _utc(), nullable=False),
        sa.Column("valid_until", _utc(), nullable=False),
        sa.Column("issued_at", _utc(), nullable=False),
        sa.Column("registered_by", sa.String(length=200), nullable=False),
        sa.Column("registered_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permits")),
    )
    op.create_table(
        "permit_holders",
        sa.Column("permit_id", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=63), nullable=False),
        sa.ForeignKeyConstraint(
            ["permit_id"], ["permits.id"], name=op.f("fk_permit_holders_permit_id_permits")
        ),
        sa.PrimaryKeyConstraint("permit_id", "holder", name=op.f("pk_permit_holders")),
    )
    op.create_index(op.f("ix_permit_holders_holder"), "permit_holders", ["holder"])

    op.add_column("nodes", sa.Column("audit_head_seq", sa.BigInteger(), nullable=True))
    op.add_column("nodes", sa.Column("audit_head_hash", sa.String(length=64), nullable=True))

    op.add_column("studies", sa.Column("purged_at", _utc(), nullable=True))
    op.create_index(op.f("ix_studies_data_permit_id_seq"), "studies", ["data_permit_id", "seq"])
    op.create_index(op.f("ix_studies_ended_at"), "studies", ["ended_at"])

    op.add_column("tasks", sa.Column("nonce", sa.String(length=64), nullable=True))
    op.add_column("tasks", sa.Column("audit_seq", sa.BigInteger(), nullable=True))
    op.add_column("tasks", sa.Column("audit_hash", sa.String(length=64), nullable=True))
    op.add_column("tasks", sa.Column("signature", sa.Text(), nullable=True))
    # Protocol 1.3 renamed the state (same wire number).
    op.execute("UPDATE tasks SET state = 'RELEASED' WHERE state = 'DONE'")


def downgrade() -> None:
    op.execute("UPDATE tasks SET state = 'DONE' WHERE state = 'RELEASED'")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("signature")
        batch.drop_column("audit_hash")
        batch.drop_column("audit_seq")
        batch.drop_column("nonce")
    op.drop_index(op.f("ix_studies_ended_at"), table_name="studies")
    op.drop_index(op.f("ix_studies_data_permit_id_seq"), table_name="studies")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("purged_at")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("audit_head_hash")
        batch.drop_column("audit_head_seq")
    op.drop_index(op.f("ix_permit_holders_holder"), table_name="permit_holders")
    op.drop_table("permit_holders")
    op.drop_table("permits")
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", _utc(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=True),
        sa.Column("node", sa.String(length=63), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_study_id"), "audit_events", ["study_id"])
    op.drop_index("ix_audit_log_time", table_name="audit_log")
    op.drop_table("audit_log")
