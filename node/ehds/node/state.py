"""The node's own small state database: tasks it has acked and results not yet receipted.

SQLite through SQLAlchemy 2, its schema created and upgraded by the Alembic migrations shipped
in ``migrations/`` (run at every start, so a node upgraded in place migrates itself).

Durability is the point: the agent acks a task only after `record_assignment` has committed,
and a result goes to the outbox (`end_with_result`) before its first chunk is sent. SQLite runs
in WAL mode with ``synchronous=FULL``: a committed transaction survives a crash of the process
and of the machine.

One process per state file: a second node process on the same file would run every task twice,
so `NodeState.open` takes an exclusive lock (released by the OS when the process dies, SIGKILL
included).

Every method is a short transaction of its own and safe to call from any thread: the agent's
event loop and the task workers share one object.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.orm import Session, sessionmaker

from ehds.core.sqlite import apply_state_pragmas
from ehds.federation.model import AnalysisRef, ErrorCode, TaskAssignment
from ehds.node.errors import NodeStateError
from ehds.node.state_schema import ResultRow, TaskRow, TaskStatus

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30.0


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
        )


@dataclass(frozen=True)
class StoredResult:
    task_id: str
    payload: bytes
    sha256: bytes
    content_type: str


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    """Alembic configured for the shipped migrations (no alembic.ini needed)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    del connection_record
    apply_state_pragmas(dbapi_connection)


class _FileLock:
    """An exclusive advisory lock on ``PATH.lock`` held for the life of the process' use."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, database: Path) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeStateError(
                f"state database {database} is in use by another node process "
                f"(lock {self.path}); run one node per state file"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class NodeState:
    """Open with `NodeState.open(path)`; `close()` when done (or use it as a context manager)."""

    def __init__(self, path: Path, engine: sa.Engine, lock: _FileLock) -> None:
        self.path = path
        self._engine = engine
        self._lock = lock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._closed = threading.Event()

    @classmethod
    def open(cls, path: Path) -> NodeState:
        """Lock the file, create or migrate its schema to the newest version, and open it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeStateError(
                f"cannot create the folder of the state database {path}: {exc.strerror}"
            ) from None
        lock = _FileLock(path)
        lock.acquire(path)
        engine = sa.create_engine(
            f"sqlite:///{path}",
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
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

    # ----------------------------------------------------------------------- tasks

    def record_assignment(
        self, assignment: TaskAssignment, now: datetime | None = None
    ) -> tuple[StoredTask, bool]:
        """Store a new task (``queued``), or return the stored one; True when it is new."""
        with self._transaction() as session:
            row = session.get(TaskRow, assignment.task_id)
            if row is not None:
                return StoredTask.of(row), False
            row = TaskRow(
                task_id=assignment.task_id,
                study_id=assignment.study_id,
                analysis_name=assignment.analysis.name,
                analysis_version=assignment.analysis.version,
                parameters=assignment.parameters,
                deadline=assignment.deadline,
                min_cell_count=assignment.min_cell_count,
                permit=assignment.data_permit_id,
                requested_by=assignment.requested_by,
                status=TaskStatus.QUEUED.value,
                outcome_reported=False,
                attempts=0,
                received_at=now or _now(),
            )
            session.add(row)
            session.flush()
            return StoredTask.of(row), True

    def task(self, task_id: str) -> StoredTask | None:
        with self._transaction() as session:
            row = session.get(TaskRow, task_id)
            return None if row is None else StoredTask.of(row)

    def start_attempt(self, task_id: str, policy_version: str) -> int:
        """Mark the task running under ``policy_version`` and count the attempt; returns the
        attempt number (1 the first time)."""
        with self._transaction() as session:
            row = session.get_one(TaskRow, task_id)
            row.status = TaskStatus.RUNNING.value
            row.policy_version = policy_version
            row.attempts += 1
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
        self, task_id: str, code: ErrorCode, message: str, now: datetime | None = None
    ) -> None:
        with self._transaction() as session:
            row = session.get_one(TaskRow, task_id)
            row.status = TaskStatus.OUTCOME.value
            row.error_code = int(code)
            row.message = message
            row.outcome_reported = False
            row.ended_at = now or _now()

    def end_with_result(
        self,
        task_id: str,
        payload: bytes,
        sha256: bytes,
        content_type: str,
        now: datetime | None = None,
    ) -> None:
        """The task is done and its result is in the outbox, in one transaction."""
        now = now or _now()
        with self._transaction() as session:
            row = session.get_one(TaskRow, task_id)
            row.status = TaskStatus.DONE.value
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

    def mark_outcome_reported(self, task_id: str) -> None:
        with self._transaction() as session:
            row = session.get(TaskRow, task_id)
            if row is not None:
                row.outcome_reported = True

    def unfinished(self) -> list[StoredTask]:
        """Tasks stored but not ended (queued, or running when the node stopped), oldest first."""
        with self._transaction() as session:
            rows = session.scalars(
                sa.select(TaskRow)
                .where(TaskRow.status.in_([TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]))
                .order_by(TaskRow.received_at, TaskRow.task_id)
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
        received (what `Heartbeat.in_flight_task_ids` lists)."""
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

    def result(self, task_id: str) -> StoredResult | None:
        """The result of ``task_id`` if it still waits for a receipt."""
        with self._transaction() as session:
            row = session.get(ResultRow, task_id)
            if row is None or row.receipted_at is not None or row.payload is None:
                return None
            return StoredResult(row.task_id, row.payload, row.sha256, row.content_type)

    def unreceipted_results(self) -> list[str]:
        with self._transaction() as session:
            return list(
                session.scalars(
                    sa.select(ResultRow.task_id)
                    .where(ResultRow.receipted_at.is_(None))
                    .order_by(ResultRow.created_at, ResultRow.task_id)
                )
            )

    def receipt(self, task_id: str, sha256: bytes, now: datetime | None = None) -> bool:
        """Record the coordinator's receipt and drop the payload; False if ``sha256`` is not
        the digest of the stored result (the result stays in the outbox)."""
        with self._transaction() as session:
            row = session.get(ResultRow, task_id)
            if row is None or row.sha256 != sha256:
                return False
            if row.receipted_at is None:
                row.receipted_at = now or _now()
                row.payload = None
            return True
