"""Tables of the coordinator's state database (SQLite by default, PostgreSQL in production).

Why these shapes:

* Enum columns hold the enum's NAME ("COMPLETED", "POLICY_REFUSED"), not its number: an operator
  reading the database, or a fault test counting rows, should not need the proto file.
* Timestamps are stored as UTC (`UtcDateTime`) and always come back as aware UTC datetimes, on
  SQLite (which has no time zones) as on PostgreSQL.
* A task is final when `ended_at` is set. `NodeTaskState.is_final` alone cannot say it: a task
  NOT_DISPATCHED because the node does not offer the analysis is final, one NOT_DISPATCHED
  because the node is away is not.
* `results` is keyed by `task_id` (one task per study, node and round), so a result received
  twice is stored once whatever the node does.
* An iterative analysis (`ehds.analyses.iteration`) runs in rounds, each a task per node: the
  study keeps its current round, that round's parameters and the analysis' state between
  rounds, so that a restart resumes an iteration from the database like any other study.
* `studies.seq` orders studies for paging (newest first) independently of clock resolution.
* The audit trail is the hash chain of `ehds.audit` (table ``audit_log``): every change appends
  its entry in the same transaction as the change (see `transitions.py`).
* A task keeps what its TaskAssignment was signed with (nonce, the coordinator's audit entry,
  the signature), so that every re-send is byte-identical to the first: a node tells a
  re-delivery from a replay by the nonce.
* Who may see a study follows from its permit: `permit_holders` lists the holders of every
  registered permit, one row each, so that "the studies whose permit I hold" is a join.

Alembic migrations (`ehds/coordinator/migrations`) must match these models; a test runs
`alembic check` against both database engines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ehds.audit import audit_table

NAME_LENGTH = 63
"""A participant name (`ehds.pki.identity.NAME_PATTERN`)."""

PERMIT_ID_LENGTH = 100
"""A permit id (`ehds.permits` ID_PATTERN)."""

STUDY_ID_LENGTH = 32
ROUND_SUFFIX_LENGTH = 8
""".r<round>" of a task of round >= 1 (`task_id`), with room to spare."""
TASK_ID_LENGTH = STUDY_ID_LENGTH + 1 + NAME_LENGTH + ROUND_SUFFIX_LENGTH
ENUM_NAME_LENGTH = 40

# Deterministic constraint names, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in, an aware UTC datetime out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: the coordinator stores aware UTC datetimes only")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store the UTC wall time, re-attach UTC when reading.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class NodeRow(Base):
    """A node the coordinator has seen at least once (its certificate's name)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Flushed from memory periodically and on disconnect, not on every heartbeat.
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    protocol_major: Mapped[int | None] = mapped_column(Integer)
    protocol_minor: Mapped[int | None] = mapped_column(Integer)
    # Canonical JSON of the NodeProfile from the node's last Hello.
    profile: Mapped[str | None] = mapped_column(Text)
    # Serial (hex) of the certificate the node last connected with: a node whose certificate
    # the CRL revokes is no target for new studies until it connects with a valid one.
    certificate_serial: Mapped[str | None] = mapped_column(String(64))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    # The head of the node's audit chain last recorded in ours ("node.audit_head" entry).
    audit_head_seq: Mapped[int | None] = mapped_column(BigInteger)
    audit_head_hash: Mapped[str | None] = mapped_column(String(64))


class StudyRow(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("submitted_by", "request_id"),
        Index(None, "submitted_by", "seq"),
        Index(None, "data_permit_id", "seq"),
        Index(None, "state"),
        Index(None, "ended_at"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(STUDY_ID_LENGTH), unique=True)
    title: Mapped[str] = mapped_column(Text)
    analysis_name: Mapped[str] = mapped_column(String(200))
    analysis_version: Mapped[str] = mapped_column(String(100))
    # Canonical JSON (Analysis.encode_parameters): the bytes every node receives.
    parameters: Mapped[bytes] = mapped_column(LargeBinary)
    min_nodes: Mapped[int] = mapped_column(Integer)
    deadline_seconds: Mapped[int] = mapped_column(Integer)
    # JSON list of the names the researcher asked for; [] = every node (see tasks for the set).
    target_nodes: Mapped[str] = mapped_column(Text)
    data_permit_id: Mapped[str] = mapped_column(Text)
    min_cell_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(ENUM_NAME_LENGTH))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    submitted_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    request_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Absolute: created_at + deadline_seconds. Re-armed as a timer after a restart.
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set when retention deleted the study's results, result document and parameters.
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Iterative analyses: the current round (0 for every other study), its parameters (round 0
    # uses `parameters`; canonical JSON, `ehds.analyses.iteration.round_parameters`) and the
    # analysis' state after the previous round (canonical JSON; None after round 0).
    round: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    round_parameters: Mapped[bytes | None] = mapped_column(LargeBinary)
    round_state: Mapped[str | None] = mapped_column(Text)


class TaskRow(Base):
    """The study's task at one node (in one round of an iterative analysis)."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("study_id", "node_name", "round"),
        Index(None, "node_name", "ended_at"),
        Index(None, "study_id", "ended_at"),
    )

    # f"{study_id}.{node_name}" (round 0), f"{study_id}.{node_name}.r{round}" (round >= 1):
    # unique per (study, node, round), readable in logs at both ends (`task_id`).
    task_id: Mapped[str] = mapped_column(String(TASK_ID_LENGTH), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"))
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"))
    round: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    state: Mapped[str] = mapped_column(String(ENUM_NAME_LENGTH))
    error_code: Mapped[str] = mapped_column(String(ENUM_NAME_LENGTH), default="UNSPECIFIED")
    reason: Mapped[str] = mapped_column(Text, default="")
    # The node's vocabulary release when the task was dispatched to it.
    vocabulary_version: Mapped[str] = mapped_column(String(200), default="")
    stage: Mapped[str] = mapped_column(String(ENUM_NAME_LENGTH), default="UNSPECIFIED")
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    received_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Ended (cancelled, timed out) while the node was away: send it CancelTask when it is back.
    cancel_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # The signed TaskAssignment, fixed when it is first sent (None before): random nonce, the
    # coordinator's audit entry that dispatched it, and the signature (base64).
    nonce: Mapped[str | None] = mapped_column(String(64))
    audit_seq: Mapped[int | None] = mapped_column(BigInteger)
    audit_hash: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(Text)


def task_id(study_id: str, node_name: str, round_number: int = 0) -> str:
    """The id of a study's task at a node: round 0 keeps the id of a study of one round."""
    base = f"{study_id}.{node_name}"
    return base if round_number == 0 else f"{base}.r{round_number}"


class ResultRow(Base):
    """One node's released result for one task: at most one per task (a repeat replaces it)."""

    __tablename__ = "results"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    node_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    content_type: Mapped[str] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class StudyResultRow(Base):
    """The result document of a COMPLETED study (canonical JSON, see the federation contract)."""

    __tablename__ = "study_results"

    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(200))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PermitRow(Base):
    """A data permit registered at this coordinator: the signed document exactly as issued,
    and its content for queries. A permit id names one document forever (a different document
    under a registered id is refused), so studies can refer to the permit by id."""

    __tablename__ = "permits"

    id: Mapped[str] = mapped_column(String(PERMIT_ID_LENGTH), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(NAME_LENGTH))
    document: Mapped[bytes] = mapped_column(LargeBinary)
    # SHA-256 (hex) of the document bytes.
    digest: Mapped[str] = mapped_column(String(64))
    # JSON lists (the order of the document).
    holders: Mapped[str] = mapped_column(Text)
    nodes: Mapped[str] = mapped_column(Text)
    analyses: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime)
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # "ROLE NAME" of who registered it.
    registered_by: Mapped[str] = mapped_column(String(200))
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PermitHolderRow(Base):
    """One holder of one permit: "which permits does alice hold" without parsing JSON."""

    __tablename__ = "permit_holders"
    __table_args__ = (Index(None, "holder"),)

    permit_id: Mapped[str] = mapped_column(ForeignKey("permits.id"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)


AUDIT_LOG = audit_table(Base.metadata)
"""The coordinator's audit chain (`ehds.audit`): one row per signed entry."""
