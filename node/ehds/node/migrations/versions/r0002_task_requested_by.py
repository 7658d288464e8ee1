"""tasks.requested_by: the researcher who submitted the study (protocol 1.2)

Why: the differencing guard remembers what the node released per data permit and researcher, so
a task must keep who asked for it across a restart. Tasks stored before this migration came
from a 1.1 coordinator, which did not say: they get "" (the guard then keys on the permit).

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("requested_by", sa.String(length=200), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("requested_by")
