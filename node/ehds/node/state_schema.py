"""Tables of the node's own state database (SQLite), mirrored by the Alembic migrations in
``migrations/versions``; a test checks that the two agree.

Why the node keeps state at all: a `TaskAck` promises the coordinator that the task survives a
node restart, and a result must be re-sent until the coordinator's `ResultReceipt`, across
reconnects and restarts. Both promises need a durable record written before the promise is made.

Governance (protocol 1.3): the node's audit chain (``audit_log``, `ehds.audit`), the
assignments it has seen (replay protection, kept past retention until they expire), and the
release decisions its operators record with `ehds node review` (the agent applies them).

Federated analytics II: the differential-privacy budget spent, per task (``privacy_ledger``,
`ehds.node.privacy_ledger`), and the study workspaces handed out (``workspaces``,
`ehds.node.workspaces`), so that their tables can be dropped once idle.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ehds.audit import audit_table


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, stored naive (SQLite has no time zones) and read back aware."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the node's state holds aware UTC datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class TaskStatus(enum.StrEnum):
    """Where a task stands at this node.

    ``queued`` (stored and acked) -> ``running`` (on a worker) -> ``done`` (result released:
    in the outbox until receipted) or ``outcome`` (ended without a result; ``error_code`` says
    why). A result whose analysis the policy releases ``manual``ly is first ``held``: kept at
    the node, not sent, until an operator's decision makes it ``done`` (release) or
    ``outcome`` (reject, RELEASE_REJECTED). A node that stops or dies leaves ``queued`` and
    ``running`` tasks as they are: they run again when it starts.
    """

    QUEUED = "queued"
    RUNNING = "running"
    HELD = "held"
    DONE = "done"
    OUTCOME = "outcome"

    @property
    def ended(self) -> bool:
        return self in (TaskStatus.DONE, TaskStatus.OUTCOME)


class Decision(enum.StrEnum):
    RELEASE = "release"
    REJECT = "reject"


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class TaskRow(Base):
    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    study_id: Mapped[str] = mapped_column(sa.String(200))
    analysis_name: Mapped[str] = mapped_column(sa.String(200))
    analysis_version: Mapped[str] = mapped_column(sa.String(100))
    # Canonical JSON exactly as received: its digest matches the coordinator's audit log.
    parameters: Mapped[bytes] = mapped_column(sa.LargeBinary)
    deadline: Mapped[datetime] = mapped_column(UtcDateTime)
    min_cell_count: Mapped[int] = mapped_column(sa.Integer)
    permit: Mapped[str] = mapped_column(sa.String(200), default="")
    # The signed permit document (protocol 1.3), checked again just before the task runs;
    # NULL for tasks stored before 1.3 (refused: no permit).
    permit_document: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    # The researcher who submitted the study (protocol 1.2; "" from an older coordinator): the
    # differencing guard remembers releases per permit and researcher.
    requested_by: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    # ErrorCode value when status is ``outcome``.
    error_code: Mapped[int | None] = mapped_column(sa.Integer)
    message: Mapped[str | None] = mapped_column(sa.String(256))
    # Whether the outcome was handed to a live stream. An outcome that ended while the node was
    # disconnected is sent on the next connection, not only when the assignment comes again.
    outcome_reported: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # Version of the site policy that decided the task, for the audit trail.
    policy_version: Mapped[str | None] = mapped_column(sa.String(100))
    # Times a worker started the task: a task that kills the node every time it runs (memory,
    # a native crash) must not put it in a restart loop forever.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ResultRow(Base):
    """The outbox: a computed result kept until the coordinator's `ResultReceipt`."""

    __tablename__ = "results"

    task_id: Mapped[str] = mapped_column(
        sa.String(200), sa.ForeignKey("tasks.task_id"), primary_key=True
    )
    # Dropped (NULL) once receipted: the coordinator holds the copy of record.
    payload: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    content_type: Mapped[str] = mapped_column(sa.String(100))
    size: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    receipted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)


class SeenAssignmentRow(Base):
    """Every assignment accepted, by task id: a later one with another nonce is a replay.

    Kept until it expires even when retention deletes the task (a replayed assignment of a
    deleted task must not run it again)."""

    __tablename__ = "seen_assignments"

    task_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    nonce: Mapped[str] = mapped_column(sa.String(200))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ReleaseDecisionRow(Base):
    """An operator's decision on a held result (`ehds node review release|reject`).

    Written by the review command in its own short transaction, never by the agent; the agent
    applies it (``applied_at``), audits it and sends the result or RELEASE_REJECTED. One
    decision per task: the first recorded wins."""

    __tablename__ = "release_decisions"

    task_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    decision: Mapped[str] = mapped_column(sa.String(16))
    # "operator NAME": the person, as the audit entry names them.
    decided_by: Mapped[str] = mapped_column(sa.String(200))
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime)
    applied_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)


class PrivacyLedgerRow(Base):
    """One differential-privacy charge: the zCDP ``rho`` a task spent of its permit's and its
    researcher's budget (``epsilon`` at ``delta`` for people who read (epsilon, delta)).

    One row per task (a re-run after a restart is not charged twice). Never deleted by
    retention: the budget is spent for good, whatever happens to the task."""

    __tablename__ = "privacy_ledger"
    __table_args__ = (sa.Index("ix_privacy_ledger_permit_researcher", "permit", "researcher"),)

    task_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    permit: Mapped[str] = mapped_column(sa.String(200), index=True)
    researcher: Mapped[str] = mapped_column(sa.String(200))
    study_id: Mapped[str] = mapped_column(sa.String(200))
    # "name version"
    analysis: Mapped[str] = mapped_column(sa.String(300))
    rho: Mapped[float] = mapped_column(sa.Float)
    epsilon: Mapped[float] = mapped_column(sa.Float)
    delta: Mapped[float] = mapped_column(sa.Float)
    charged_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WorkspaceRow(Base):
    """A study's table in the engine's results place (``name``), handed out to an analysis of
    several rounds; dropped with its row once unused for the policy's workspace TTL."""

    __tablename__ = "workspaces"

    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    study_id: Mapped[str] = mapped_column(sa.String(200))
    purpose: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


metadata = Base.metadata
audit_log = audit_table(metadata)
"""The node's audit chain (`ehds.audit`): the agent is its only writer."""
