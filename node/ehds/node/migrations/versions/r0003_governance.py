"""governance (protocol 1.3): audit chain, seen assignments, release decisions, permits

Why: the node keeps a tamper-evident audit chain of what it received, decided and released
(``audit_log``, the table of `ehds.audit`); remembers every assignment it accepted to refuse a
replay (``seen_assignments``); records its operators' release decisions on held results
(``release_decisions``); and stores each task's signed permit document to check it again just
before the task runs (``tasks.permit_document``; NULL for older tasks, which are then refused
for lack of a permit).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
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
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_time", ["time"], unique=False)

    op.create_table(
        "seen_assignments",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("nonce", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_seen_assignments")),
    )
    with op.batch_alter_table("seen_assignments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_seen_assignments_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "release_decisions",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.Column("applied_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_release_decisions")),
    )
    with op.batch_alter_table("release_decisions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_decisions_applied_at"), ["applied_at"], unique=False
        )

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("permit_document", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("permit_document")
    with op.batch_alter_table("release_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_decisions_applied_at"))
    op.drop_table("release_decisions")
    with op.batch_alter_table("seen_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_seen_assignments_expires_at"))
    op.drop_table("seen_assignments")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_time")
    op.drop_table("audit_log")
