"""privacy_ledger and workspaces (federated analytics II)

Why: a node that releases differentially private results must remember the budget spent, per
data permit and researcher, across restarts and for good (``privacy_ledger``: one row per task,
so a re-run is not charged twice); and a node that keeps a study's row-level working tables
between rounds (a GLM's design matrix) must remember which it handed out, to drop them once
idle (``workspaces``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "privacy_ledger",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("permit", sa.String(length=200), nullable=False),
        sa.Column("researcher", sa.String(length=200), nullable=False),
        sa.Column("study_id", sa.String(length=200), nullable=False),
        sa.Column("analysis", sa.String(length=300), nullable=False),
        sa.Column("rho", sa.Float(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("charged_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_privacy_ledger")),
    )
    with op.batch_alter_table("privacy_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_privacy_ledger_permit"), ["permit"], unique=False)
        batch_op.create_index(
            "ix_privacy_ledger_permit_researcher", ["permit", "researcher"], unique=False
        )

    op.create_table(
        "workspaces",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("study_id", sa.String(length=200), nullable=False),
        sa.Column("purpose", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workspaces")),
    )
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_workspaces_last_used_at"), ["last_used_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workspaces_last_used_at"))
    op.drop_table("workspaces")
    with op.batch_alter_table("privacy_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_privacy_ledger_permit_researcher")
        batch_op.drop_index(batch_op.f("ix_privacy_ledger_permit"))
    op.drop_table("privacy_ledger")
