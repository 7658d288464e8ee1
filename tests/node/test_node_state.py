"""The node's state database: migrations equal the models, what survives a reopen, the lock."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from ehds.federation.model import AnalysisRef, ErrorCode, TaskAssignment
from ehds.node.errors import NodeStateError
from ehds.node.state import NodeState, alembic_config
from ehds.node.state_schema import TaskStatus, metadata

DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)


def _assignment(task_id: str) -> TaskAssignment:
    return TaskAssignment(
        task_id=task_id,
        study_id="s-1",
        analysis=AnalysisRef("person_count", "1.0.0"),
        parameters=b'{"reference_year":2025}',
        deadline=DEADLINE,
        min_cell_count=10,
        data_permit_id="permit-7",
        requested_by="alice",
    )


def test_migrations_match_the_models(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    NodeState.open(path).close()
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            assert compare_metadata(context, metadata) == []
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert context.get_current_revision() == head
    finally:
        engine.dispose()


def test_tasks_and_results_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with NodeState.open(path) as state:
        task, new = state.record_assignment(_assignment("t-1"))
        assert new
        assert task.status is TaskStatus.QUEUED
        again, new = state.record_assignment(_assignment("t-1"))
        assert not new
        assert again == task
        state.record_assignment(_assignment("t-2"))
        assert state.start_attempt("t-1", "policy-3") == 1
        payload = b'{"cells":[]}'
        state.end_with_result("t-1", payload, hashlib.sha256(payload).digest(), "application/json")
        state.end_with_outcome("t-2", ErrorCode.POLICY_REFUSED, "analysis not allowed")
    with NodeState.open(path) as state:
        stored = state.task("t-1")
        assert stored is not None
        assert stored.status is TaskStatus.DONE
        assert stored.deadline == DEADLINE
        assert stored.permit == "permit-7"
        assert stored.requested_by == "alice"
        assert stored.attempts == 1
        result = state.result("t-1")
        assert result is not None
        assert result.payload == b'{"cells":[]}'
        assert state.unreceipted_results() == ["t-1"]
        assert [(t.task_id, t.message) for t in state.unreported_outcomes()] == [
            ("t-2", "analysis not allowed")
        ]
        assert state.in_flight_task_ids() == ("t-1", "t-2")
        state.mark_outcome_reported("t-2")
        assert state.in_flight_task_ids() == ("t-1",)
        assert not state.receipt("t-1", b"\x00" * 32)  # wrong digest: kept
        assert state.result("t-1") is not None
        assert state.receipt("t-1", hashlib.sha256(payload).digest())
        assert state.result("t-1") is None
        assert state.in_flight_task_ids() == ()


def test_a_state_from_before_requested_by_is_migrated(tmp_path: Path) -> None:
    """A node upgraded in place keeps its queued tasks; they came from a 1.1 coordinator, which
    named no researcher, so they get "" (the differencing guard keys on the permit alone)."""
    path = tmp_path / "node.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
            connection.execute(
                sa.text(
                    "INSERT INTO tasks (task_id, study_id, analysis_name, analysis_version, "
                    "parameters, deadline, min_cell_count, permit, status, outcome_reported, "
                    "attempts, received_at) VALUES ('t-old', 's', 'person_count', '1.0.0', "
                    "x'7b7d', '2030-01-01 00:00:00', 5, 'permit-7', 'queued', 0, 0, "
                    "'2026-01-01 00:00:00')"
                )
            )
    finally:
        engine.dispose()
    with NodeState.open(path) as state:
        [task] = state.unfinished()
        assert (task.task_id, task.permit, task.requested_by) == ("t-old", "permit-7", "")
        new, _ = state.record_assignment(_assignment("t-new"))
        assert new.requested_by == "alice"


def test_requeue_undoes_an_attempt_stopped_by_shutdown(tmp_path: Path) -> None:
    with NodeState.open(tmp_path / "node.db") as state:
        state.record_assignment(_assignment("t-1"))
        state.start_attempt("t-1", "p")
        assert [t.status for t in state.unfinished()] == [TaskStatus.RUNNING]
        state.requeue("t-1")
        [task] = state.unfinished()
        assert (task.status, task.attempts) == (TaskStatus.QUEUED, 0)


def test_naive_datetimes_are_refused(tmp_path: Path) -> None:
    with NodeState.open(tmp_path / "node.db") as state:
        naive = TaskAssignment(
            task_id="t",
            study_id="s",
            analysis=AnalysisRef("a", "1"),
            parameters=b"{}",
            deadline=datetime(2030, 1, 1),
            min_cell_count=1,
        )
        with pytest.raises(sa.exc.StatementError):
            state.record_assignment(naive, now=datetime.now(UTC) - timedelta(seconds=1))


def test_one_process_per_state_file(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with (
        NodeState.open(path),
        pytest.raises(NodeStateError, match="in use by another node process"),
    ):
        NodeState.open(path)
    NodeState.open(path).close()  # released on close


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NodeStateError, match="cannot be opened or migrated"):
        NodeState.open(path)
    # The lock is released after the failure.
    path.unlink()
    NodeState.open(path).close()
