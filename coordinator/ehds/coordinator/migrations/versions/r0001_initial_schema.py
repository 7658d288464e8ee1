"""Initial schema: nodes, studies, tasks, results, study_results, audit_events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    # ehds.coordinator.state.models.UtcDateTime stores through this type: migrations do not
    # import the models, which change after a migration is written.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
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

    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("last_seen_at", _utc(), nullable=True),
        sa.Column("protocol_major", sa.Integer(), nullable=True),
        sa.Column("protocol_minor", sa.Integer(), nullable=True),
        sa.Column("profile", sa.Text(), nullable=True),
        sa.Column("certificate_serial", sa.String(length=64), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.Column("revoked_by", sa.String(length=63), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )

    op.create_table(
        "studies",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("analysis_name", sa.String(length=200), nullable=False),
        sa.Column("analysis_version", sa.String(length=100), nullable=False),
        sa.Column("parameters", sa.LargeBinary(), nullable=False),
        sa.Column("min_nodes", sa.Integer(), nullable=False),
        sa.Column("deadline_seconds", sa.Integer(), nullable=False),
        sa.Column("target_nodes", sa.Text(), nullable=False),
        sa.Column("data_permit_id", sa.Text(), nullable=False),
        sa.Column("min_cell_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        sa.Column("submitted_by", sa.String(length=63), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("deadline_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_studies")),
        sa.UniqueConstraint("id", name=op.f("uq_studies_id")),
        sa.UniqueConstraint(
            "submitted_by", "request_id", name=op.f("uq_studies_submitted_by_request_id")
        ),
    )
    op.create_index(op.f("ix_studies_state"), "studies", ["state"])
    op.create_index(op.f("ix_studies_submitted_by_seq"), "studies", ["submitted_by", "seq"])

    op.create_table(
        "study_results",
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("content_type", sa.String(length=200), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_results_study_id_studies")
        ),
        sa.PrimaryKeyConstraint("study_id", name=op.f("pk_study_results")),
    )

    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(length=96), nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("node_name", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("error_code", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("vocabulary_version", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=40), nullable=False),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("dispatched_at", _utc(), nullable=True),
        sa.Column("received_at", _utc(), nullable=True),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("cancel_pending", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name=op.f("fk_tasks_node_name_nodes")
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_tasks_study_id_studies")
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("study_id", "node_name", name=op.f("uq_tasks_study_id_node_name")),
    )
    op.create_index(op.f("ix_tasks_node_name_ended_at"), "tasks", ["node_name", "ended_at"])
    op.create_index(op.f("ix_tasks_study_id_ended_at"), "tasks", ["study_id", "ended_at"])

    op.create_table(
        "results",
        sa.Column("task_id", sa.String(length=96), nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("node_name", sa.String(length=63), nullable=False),
        sa.Column("content_type", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_results_study_id_studies")
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_results_task_id_tasks")
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_results")),
    )
    op.create_index(op.f("ix_results_study_id"), "results", ["study_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_results_study_id"), table_name="results")
    op.drop_table("results")
    op.drop_index(op.f("ix_tasks_study_id_ended_at"), table_name="tasks")
    op.drop_index(op.f("ix_tasks_node_name_ended_at"), table_name="tasks")
    op.drop_table("tasks")
    op.drop_table("study_results")
    op.drop_index(op.f("ix_studies_submitted_by_seq"), table_name="studies")
    op.drop_index(op.f("ix_studies_state"), table_name="studies")
    op.drop_table("studies")
    op.drop_table("nodes")
    op.drop_index(op.f("ix_audit_events_study_id"), table_name="audit_events")
    op.drop_table("audit_events")
