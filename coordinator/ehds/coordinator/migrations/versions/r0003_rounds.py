"""Iterative analyses: a task per node and round; the study's current round, its parameters and
the analysis' state between rounds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

Every existing task and study is round 0 (the only round a study had before). Task ids of round
r >= 1 are ``{study}.{node}.r{r}``: the id columns widen from 96 to 104 characters.

SQLite rebuilds ``tasks`` to change it (batch mode), and the coordinator's connections enforce
foreign keys, which a migration's transaction cannot turn off: dropping the old ``tasks`` would
fail while ``results`` rows refer to it. The results are set aside for the rebuild and put back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_TASK_ID = 96
NEW_TASK_ID = 104
RESULT_COLUMNS = "task_id, study_id, node_name, content_type, payload, sha256, size, received_at"


@contextmanager
def _results_set_aside() -> Iterator[None]:
    """On SQLite, empty ``results`` while ``tasks`` is rebuilt (see the module docstring)."""
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    op.execute(f"CREATE TABLE _r0003_results AS SELECT {RESULT_COLUMNS} FROM results")
    op.execute("DELETE FROM results")
    yield
    op.execute(
        f"INSERT INTO results ({RESULT_COLUMNS}) SELECT {RESULT_COLUMNS} FROM _r0003_results"
    )
    op.execute("DROP TABLE _r0003_results")


def _task_id_length(batch: BatchOperations, old: int, new: int) -> None:
    batch.alter_column(
        "task_id",
        existing_type=sa.String(length=old),
        type_=sa.String(length=new),
        existing_nullable=False,
    )


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("round", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("round_parameters", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("round_state", sa.Text(), nullable=True))
    with _results_set_aside():
        with op.batch_alter_table("tasks") as batch:
            batch.add_column(sa.Column("round", sa.Integer(), server_default="0", nullable=False))
            batch.drop_constraint("uq_tasks_study_id_node_name", type_="unique")
            batch.create_unique_constraint(
                "uq_tasks_study_id_node_name_round", ["study_id", "node_name", "round"]
            )
            _task_id_length(batch, OLD_TASK_ID, NEW_TASK_ID)
        with op.batch_alter_table("results") as batch:
            _task_id_length(batch, OLD_TASK_ID, NEW_TASK_ID)


def downgrade() -> None:
    # Only the round-0 tasks fit the old shape: later rounds' results and tasks go.
    op.execute("DELETE FROM results WHERE task_id IN (SELECT task_id FROM tasks WHERE round > 0)")
    op.execute("DELETE FROM tasks WHERE round > 0")
    with _results_set_aside():
        with op.batch_alter_table("results") as batch:
            _task_id_length(batch, NEW_TASK_ID, OLD_TASK_ID)
        with op.batch_alter_table("tasks") as batch:
            _task_id_length(batch, NEW_TASK_ID, OLD_TASK_ID)
            batch.drop_constraint("uq_tasks_study_id_node_name_round", type_="unique")
            batch.create_unique_constraint("uq_tasks_study_id_node_name", ["study_id", "node_name"])
            batch.drop_column("round")
    # Not rebuilt (tasks, results and study_results refer to it): SQLite >= 3.35 drops these
    # columns in place.
    with op.batch_alter_table("studies", recreate="never") as batch:
        batch.drop_column("round_state")
        batch.drop_column("round_parameters")
        batch.drop_column("round")
