"""The node's own small state database: tasks it has acked, results not yet receipted, and
its audit chain.

SQLite through SQLAlchemy 2, its schema created and upgraded by the Alembic migrations shipped
in ``migrations/`` (run at every start, so a node upgraded in place migrates itself).

Durability is the point: the agent acks a task only after `admit_assignment` has committed,
and a result goes to the outbox (`end_with_result`) before its first chunk is sent. SQLite runs
in WAL mode with ``synchronous=FULL``: a committed transaction survives a crash of the process
and of the machine.

Audit: every change that governance cares about appends its entry to the node's chain
(`ehds.audit`) in the same transaction, so the chain never claims a change that did not
happen and no change goes unrecorded. Such transactions are serialised by a lock of this
object (one writer of the chain; a second would lose on the chain's primary key), which also
keeps the current head in memory for the messages that carry it.

One process per state file: a second node process on the same file would run every task twice,
so `NodeState.open` takes an exclusive lock (released by the OS when the process dies, SIGKILL
included). `ehds node review` writes only ``release_decisions``, without the lock.

Every method is a short transaction of its own and safe to call from any thread: the agent's
event loop and the task workers share one object.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from ehds.audit import AuditLog, AuditRef
from ehds.federation.model import AnalysisRef, ErrorCode, TaskAssignment
from ehds.node.assignment_check import AssignmentRejection, expires_at
from ehds.node.audit_trail import (
    AuditNote,
    assignment_received,
    assignment_rejected,
    assignment_repeated,
    policy_recorded,
    result_decided,
    result_receipted,
    result_sent,
    retention_deleted,
    task_started,
)
from ehds.node.errors import OUTCOME_MESSAGES, NodeStateError
from ehds.node.state_db import FileLock, alembic_config, sqlite_engine
from ehds.node.state_schema import (
    Decision,
    ReleaseDecisionRow,
    ResultRow,
    SeenAssignmentRow,
    TaskRow,
    TaskStatus,
    audit_log,
)

__all__ = [
    "Admission",
    "AdmittedAssignment",
    "AppliedDecision",
    "AuditRecorder",
    "NodeState",
    "StoredResult",
    "StoredTask",
    "alembic_config",
]

RETENTION_BATCH: Final = 200
"""Tasks deleted per transaction by a retention sweep (short transactions beside the agent)."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredTask:
    task_id: str
    study_id: str
    analysis: AnalysisRef
    parameters: bytes
    deadline: datetime
    min_cell_count: int
    permit: str
    requested_by: str
    status: TaskStatus
    error_code: ErrorCode | None
    # The outcome's text as sent (a disclosure refusal names its rule): sent again as is.
    message: str | None
    outcome_reported: bool
    attempts: int
    received_at: datetime
    # The signed permit document; None for a task stored before protocol 1.3.
    permit_document: bytes | None = None
    ended_at: datetime | None = None

    @classmethod
    def of(cls, row: TaskRow) -> StoredTask:
        return cls(
            task_id=row.task_id,
            study_id=row.study_id,
            analysis=AnalysisRef(row.analysis_name, row.analysis_version),
            parameters=row.parameters,
            deadline=row.deadline,
            min_cell_count=row.min_cell_count,
            permit=row.permit,
            requested_by=row.requested_by,
            status=TaskStatus(row.status),
            error_code=None if row.error_code is None else ErrorCode(row.error_code),
            message=row.message,
            outcome_reported=row.outcome_reported,
            attempts=row.attempts,
            received_at=row.received_at,
            permit_document=row.permit_document,
            ended_at=row.ended_at,
        )


@dataclass(frozen=True)
class StoredResult:
    task_id: str
    payload: bytes
    sha256: bytes
    content_type: str


class Admission(enum.Enum):
    NEW = "new"
    REPEATED = "repeated"
    REJECTED = "rejected"


@dataclass(frozen=True)
class AdmittedAssignment:
    """What `admit_assignment` decided: a new task, a re-delivery of a known one (``task``
    None when retention deleted it), or a rejection (``rejection`` says why)."""

    admission: Admission
    task: StoredTask | None
    rejection: AssignmentRejection | None = None


@dataclass(frozen=True)
class AppliedDecision:
    """An operator's decision the agent applied; ``task`` None if the task was not held."""

    task_id: str
    decision: Decision
    decided_by: str
    task: StoredTask | None


class AuditRecorder:
    """Appends notes to the chain inside one transaction (``session``); remembers the last
    ref."""

    def __init__(self, log: AuditLog, session: Session) -> None:
        self._log = log
        self.session = session
        self.head: AuditRef | None = None

    def append(self, note: AuditNote) -> AuditRef:
        self.head = self._log.append(
            self.session,
            actor=note.actor or self._log.chain,
            action=note.action,
            subject=note.subject,
            detail=note.detail,
            digest=note.digest,
            anchor=note.anchor,
        )
        return self.head


class NodeState:
    """Open with `NodeState.open(path)`; `close()` when done (or use it as a context manager).

    Methods that audit need the chain's writer: `attach_audit` (the agent does it)."""

    def __init__(self, path: Path, engine: sa.Engine, lock: FileLock) -> None:
        self.path = path
        self._engine = engine
        self._lock = lock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._closed = threading.Event()
        self._audit: AuditLog | None = None
        self._audit_lock = threading.Lock()
        self._head: AuditRef | None = None

    @classmethod
    def open(cls, path: Path) -> NodeState:
        """Lock the file, create or migrate its schema to the newest version, and open it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeStateError(
                f"cannot create the folder of the state database {path}: {exc.strerror}"
            ) from None
        lock = FileLock(path)
        lock.acquire(path)
        engine = sqlite_engine(path)
        try:
            with engine.begin() as connection:
                command.upgrade(alembic_config(connection), "head")
        except (sa.exc.DBAPIError, OSError) as exc:
            engine.dispose()
            lock.release()
            raise NodeStateError(
                f"state database {path} cannot be opened or migrated ({type(exc).__name__}); "
                "move it aside to start with an empty state"
            ) from None
        except BaseException:
            engine.dispose()
            lock.release()
            raise
        return cls(path, engine, lock)

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._engine.dispose()
        self._lock.release()

    def __enter__(self) -> NodeState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        if self._closed.is_set():
            raise NodeStateError(f"state database {self.path} is closed")
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _audited(self) -> Iterator[AuditRecorder]:
        """A transaction that appends to the chain: one at a time, head updated on commit."""
        log = self._audit
        if log is None:
            raise NodeStateError("the node's audit chain is not attached to its state")
        with self._audit_lock:
            with self._transaction() as session:
                recorder = AuditRecorder(log, session)
                yield recorder
            if recorder.head is not None:
                self._head = recorder.head

    @contextmanager
    def audited(self) -> Iterator[AuditRecorder]:
        """A transaction whose changes and audit entries commit together (or not at all), for
        the node's other stores of governance state (`ehds.node.privacy_ledger`,
        `ehds.node.workspaces`): leave the block normally to commit."""
        with self._audited() as recorder:
            yield recorder

    # ----------------------------------------------------------------------- audit chain

    def attach_audit(self, log: AuditLog) -> None:
        """Write the chain with ``log`` from now on (the agent's own chain and key)."""
        if log.table is not audit_log:
            raise ValueError("the node's chain lives in its own audit_log table")
        with self._audit_lock, self._transaction() as session:
            self._audit = log
            self._head = log.head(session)

    @property
    def audit_head(self) -> AuditRef | None:
        """The last entry of the chain (kept in memory: read by every outgoing message)."""
        return self._head

    def audit(self, note: AuditNote) -> AuditRef:
        """Append one entry on its own (no state change goes with it)."""
        with self._audited() as recorder:
            return recorder.append(note)

    def audit_lines(self, *, after_seq: int = 0) -> list[bytes]:
        """The chain's canonical lines, in order."""
        with self._transaction() as session:
            entries = session.scalars(
                sa.select(audit_log.c.entry)
                .where(audit_log.c.seq > after_seq)
                .order_by(audit_log.c.seq)
            )
            return [str(entry).encode("utf-8") for entry in entries]

    def record_policy(self, version: str, digest: str) -> str:
        """Audit the policy in force: ``policy.changed`` if its digest differs from the last
        one recorded, else ``policy.loaded``; returns the action written."""
        with self._audited() as recorder:
            last = recorder.session.execute(
                sa.select(audit_log.c.entry)
                .where(audit_log.c.action.in_(("policy.loaded", "policy.changed")))
                .order_by(audit_log.c.seq.desc())
                .limit(1)
            ).scalar()
            previous = None
            if last is not None:
                entry = json.loads(last)
                previous = (str(entry["detail"].get("version", "")), str(entry["digest"]))
            note = policy_recorded(version, digest, previous)
            recorder.append(note)
            return note.action

    # ----------------------------------------------------------------------- assignments

    def admit_assignment(
        self, assignment: TaskAssignment, *, signer: str, now: datetime | None = None
    ) -> AdmittedAssignment:
        """Decide on a verified assignment and record it, in one transaction.

        A task id seen with the same nonce is a re-delivery (``assignment.repeated``); with
        another nonce a replay (rejected); a new one past its expiry is rejected; otherwise
        the task is stored ``queued`` with its permit (``assignment.received``).
        """
        now = now or _now()
        task_id = assignment.task_id
        with self._audited() as recorder:
            session = recorder.session
            seen = session.get(SeenAssignmentRow, task_id)
            row = session.get(TaskRow, task_id)
            if seen is None and row is not None:
                # Stored before protocol 1.3: the first nonce it comes with is its own.
                seen = SeenAssignmentRow(
                    task_id=task_id,
                    nonce=assignment.nonce,
                    expires_at=expires_at(assignment),
                    received_at=now,
                )
                session.add(seen)
            if seen is not None:
                if seen.nonce != assignment.nonce:
                    recorder.append(
                        assignment_rejected(assignment, AssignmentRejection.REPLAYED, signer)
                    )
                    return AdmittedAssignment(
                        Admission.REJECTED, None, AssignmentRejection.REPLAYED
                    )
                status = row.status if row is not None else "deleted"
                recorder.append(assignment_repeated(assignment, signer, status))
                task = None if row is None else StoredTask.of(row)
                return AdmittedAssignment(Admission.REPEATED, task)
            if now >= expires_at(assignment):
                recorder.append(
                    assignment_rejected(assignment, AssignmentRejection.EXPIRED, signer)
                )
                return AdmittedAssignment(Admission.REJECTED, None, AssignmentRejection.EXPIRED)
            session.add(
                SeenAssignmentRow(
                    task_id=task_id,
                    nonce=assignment.nonce,
                    expires_at=expires_at(assignment),
                    received_at=now,
                )
            )
            row = TaskRow(
                task_id=task_id,
                study_id=assignment.study_id,
                analysis_name=assignment.analysis.name,
                analysis_version=assignment.analysis.version,
                parameters=assignment.parameters,
                deadline=assignment.deadline,
                min_cell_count=assignment.min_cell_count,
                permit=assignment.data_permit_id,
                permit_document=assignment.permit,
                requested_by=assignment.requested_by,
                status=TaskStatus.QUEUED.value,
                outcome_reported=False,
                attempts=0,
                received_at=now,
            )
            session.add(row)
            session.flush()
            recorder.append(assignment_received(assignment, signer))
            return AdmittedAssignment(Admission.NEW, StoredTask.of(row))

    def reject_assignment(
        self, assignment: TaskAssignment, rejection: AssignmentRejection, signer: str | None
    ) -> None:
        """Audit an assignment refused before it could be trusted (signer, signature)."""
        self.audit(assignment_rejected(assignment, rejection, signer))

    # ----------------------------------------------------------------------- tasks

    def task(self, task_id: str) -> StoredTask | None:
        with self._transaction() as session:
            row = session.get(TaskRow, task_id)
            return None if row is None else StoredTask.of(row)

    def start_attempt(self, task_id: str, policy_version: str) -> int:
        """Mark the task running under ``policy_version`` and count the attempt (audited
        ``task.started``); returns the attempt number (1 the first time)."""
        with self._audited() as recorder:
            row = recorder.session.get_one(TaskRow, task_id)
            row.status = TaskStatus.RUNNING.value
            row.policy_version = policy_version
            row.attempts += 1
            recorder.append(task_started(task_id, row.attempts, policy_version))
            return row.attempts

    def requeue(self, task_id: str) -> None:
        """Undo `start_attempt` for a task stopped by an orderly shutdown: it runs again at the
        next start, and the stop does not count as a failed attempt."""
        with self._transaction() as session:
            row = session.get_one(TaskRow, task_id)
            if row.status == TaskStatus.RUNNING.value:
                row.status = TaskStatus.QUEUED.value
                row.attempts = max(0, row.attempts - 1)

    def end_with_outcome(
        self,
        task_id: str,
        code: ErrorCode,
        message: str,
        note: AuditNote,
        now: datetime | None = None,
    ) -> None:
        with self._audited() as recorder:
            row = recorder.session.get_one(TaskRow, task_id)
            row.status = TaskStatus.OUTCOME.value
            row.error_code = int(code)
            row.message = message
            row.outcome_reported = False
            row.ended_at = now or _now()
            recorder.append(note)

    def end_with_result(
        self,
        task_id: str,
        payload: bytes,
        sha256: bytes,
        content_type: str,
        *,
        held: bool,
        note: AuditNote,
        now: datetime | None = None,
    ) -> None:
        """The task is done and its result is in the outbox, in one transaction: ``held``
        (kept until an operator decides) or released (sent until receipted)."""
        now = now or _now()
        with self._audited() as recorder:
            session = recorder.session
            row = session.get_one(TaskRow, task_id)
            row.status = (TaskStatus.HELD if held else TaskStatus.DONE).value
            row.ended_at = now
            session.merge(
                ResultRow(
                    task_id=task_id,
                    payload=payload,
                    sha256=sha256,
                    content_type=content_type,
                    size=len(payload),
                    created_at=now,
                    receipted_at=None,
                )
            )
            recorder.append(note)

    def mark_outcome_reported(self, task_id: str) -> None:
        with self._transaction() as session:
            row = session.get(TaskRow, task_id)
            if row is not None:
                row.outcome_reported = True

    def unfinished(self) -> list[StoredTask]:
        """Tasks stored but not ended (queued, or running when the node stopped), oldest first."""
        return self._tasks(TaskRow.status.in_([TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]))

    def held(self) -> list[StoredTask]:
        """Tasks whose result waits for an operator's decision, oldest first."""
        return self._tasks(TaskRow.status == TaskStatus.HELD.value)

    def _tasks(self, where: sa.ColumnElement[bool]) -> list[StoredTask]:
        with self._transaction() as session:
            rows = session.scalars(
                sa.select(TaskRow).where(where).order_by(TaskRow.received_at, TaskRow.task_id)
            )
            return [StoredTask.of(row) for row in rows]

    def unreported_outcomes(self) -> list[StoredTask]:
        with self._transaction() as session:
            rows = session.scalars(
                sa.select(TaskRow)
                .where(
                    TaskRow.status == TaskStatus.OUTCOME.value,
                    TaskRow.outcome_reported.is_(False),
                )
                .order_by(TaskRow.ended_at, TaskRow.task_id)
            )
            return [StoredTask.of(row) for row in rows]

    def in_flight_task_ids(self) -> tuple[str, ...]:
        """Tasks acked and not yet ended for the coordinator: no outcome sent and no receipt
        received, held results included (what `Heartbeat.in_flight_task_ids` lists)."""
        with self._transaction() as session:
            open_tasks = sa.select(TaskRow.task_id).where(
                sa.or_(
                    TaskRow.status.in_([TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]),
                    sa.and_(
                        TaskRow.status == TaskStatus.OUTCOME.value,
                        TaskRow.outcome_reported.is_(False),
                    ),
                )
            )
            unreceipted = sa.select(ResultRow.task_id).where(ResultRow.receipted_at.is_(None))
            ids = session.scalars(sa.union(open_tasks, unreceipted)).all()
            return tuple(sorted(ids))

    # ----------------------------------------------------------------------- outbox

    def _released_result(self, session: Session, task_id: str) -> ResultRow | None:
        row = session.get(ResultRow, task_id)
        if row is None or row.receipted_at is not None or row.payload is None:
            return None
        task = session.get(TaskRow, task_id)
        if task is None or task.status != TaskStatus.DONE.value:
            return None  # held: never sent before an operator releases it
        return row

    def result(self, task_id: str) -> StoredResult | None:
        """The released result of ``task_id`` if it still waits for a receipt."""
        with self._transaction() as session:
            row = self._released_result(session, task_id)
            if row is None or row.payload is None:
                return None
            return StoredResult(row.task_id, row.payload, row.sha256, row.content_type)

    def unreceipted_results(self) -> list[str]:
        """Released results not yet receipted (held ones are not released)."""
        with self._transaction() as session:
            return list(
                session.scalars(
                    sa.select(ResultRow.task_id)
                    .join(TaskRow, TaskRow.task_id == ResultRow.task_id)
                    .where(
                        ResultRow.receipted_at.is_(None),
                        TaskRow.status == TaskStatus.DONE.value,
                    )
                    .order_by(ResultRow.created_at, ResultRow.task_id)
                )
            )

    def record_sent(self, task_id: str) -> AuditRef | None:
        """Audit ``result.sent`` for a released result about to go on the stream; the new
        head (None, and nothing written, if there is no such result)."""
        with self._audited() as recorder:
            row = self._released_result(recorder.session, task_id)
            if row is None:
                return None
            return recorder.append(result_sent(task_id, row.size, row.sha256))

    def receipt(self, task_id: str, sha256: bytes, now: datetime | None = None) -> bool:
        """Record the coordinator's receipt and drop the payload; False if ``sha256`` is not
        the digest of the stored result (the result stays in the outbox)."""
        with self._audited() as recorder:
            row = recorder.session.get(ResultRow, task_id)
            if row is None or row.sha256 != sha256:
                return False
            if row.receipted_at is None:
                row.receipted_at = now or _now()
                row.payload = None
                recorder.append(result_receipted(task_id, sha256))
            return True

    # ----------------------------------------------------------------------- release gate

    def pending_decisions(self) -> list[str]:
        """Tasks with an operator's decision not yet applied, oldest decision first."""
        with self._transaction() as session:
            return list(
                session.scalars(
                    sa.select(ReleaseDecisionRow.task_id)
                    .where(ReleaseDecisionRow.applied_at.is_(None))
                    .order_by(ReleaseDecisionRow.decided_at, ReleaseDecisionRow.task_id)
                )
            )

    def apply_decision(self, task_id: str, now: datetime | None = None) -> AppliedDecision | None:
        """Apply the recorded decision on a held result, audited as the operator's act:
        release (the result joins the outbox) or reject (the task ends RELEASE_REJECTED and
        its result is deleted). None if there is no unapplied decision."""
        now = now or _now()
        with self._audited() as recorder:
            session = recorder.session
            decision = session.get(ReleaseDecisionRow, task_id)
            if decision is None or decision.applied_at is not None:
                return None
            decision.applied_at = now
            kind = Decision(decision.decision)
            row = session.get(TaskRow, task_id)
            result = session.get(ResultRow, task_id)
            if row is None or row.status != TaskStatus.HELD.value or result is None:
                return AppliedDecision(task_id, kind, decision.decided_by, None)
            recorder.append(
                result_decided(
                    task_id,
                    released=kind is Decision.RELEASE,
                    actor=decision.decided_by,
                    sha256=result.sha256,
                )
            )
            if kind is Decision.RELEASE:
                row.status = TaskStatus.DONE.value
            else:
                row.status = TaskStatus.OUTCOME.value
                row.error_code = int(ErrorCode.RELEASE_REJECTED)
                row.message = OUTCOME_MESSAGES[ErrorCode.RELEASE_REJECTED]
                row.outcome_reported = False
                session.delete(result)
            session.flush()
            return AppliedDecision(task_id, kind, decision.decided_by, StoredTask.of(row))

    # ----------------------------------------------------------------------- retention

    def sweep_retention(self, days: int, now: datetime | None = None) -> list[str]:
        """Delete tasks that ended more than ``days`` ago, with their results and decisions,
        one ``retention.deleted`` entry each; and the memory of assignments expired before
        then whose task is gone. Returns the deleted task ids."""
        now = now or _now()
        cutoff = now - timedelta(days=days)
        deleted: list[str] = []
        while True:
            with self._audited() as recorder:
                session = recorder.session
                rows = session.scalars(
                    sa.select(TaskRow)
                    .where(
                        TaskRow.status.in_([TaskStatus.DONE.value, TaskStatus.OUTCOME.value]),
                        TaskRow.ended_at < cutoff,
                    )
                    .order_by(TaskRow.ended_at, TaskRow.task_id)
                    .limit(RETENTION_BATCH)
                ).all()
                for row in rows:
                    session.execute(sa.delete(ResultRow).where(ResultRow.task_id == row.task_id))
                    session.execute(
                        sa.delete(ReleaseDecisionRow).where(
                            ReleaseDecisionRow.task_id == row.task_id
                        )
                    )
                    session.delete(row)
                    recorder.append(
                        retention_deleted(
                            row.task_id,
                            study=row.study_id,
                            status=row.status,
                            ended_at=row.ended_at,
                            days=days,
                        )
                    )
                    deleted.append(row.task_id)
            if len(rows) < RETENTION_BATCH:
                break
        with self._transaction() as session:
            session.execute(
                sa.delete(SeenAssignmentRow).where(
                    SeenAssignmentRow.expires_at < cutoff,
                    ~sa.exists().where(TaskRow.task_id == SeenAssignmentRow.task_id),
                )
            )
        return deleted
