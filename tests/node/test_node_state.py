"""The node's state database: migrations equal the models, what survives a reopen, the lock,
replay memory, release decisions, retention, and the audit chain each change writes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from node_harness import COORDINATOR_REF, Pki, default_permit

from ehds.audit import AuditEntry, AuditLog, payload_digest, verify_lines
from ehds.core.signing import Signer
from ehds.federation.model import AnalysisRef, ErrorCode, TaskAssignment
from ehds.node.assignment_check import AssignmentRejection
from ehds.node.audit_trail import AuditNote
from ehds.node.errors import OUTCOME_MESSAGES, NodeStateError
from ehds.node.review import ReviewStore
from ehds.node.state import Admission, NodeState, alembic_config
from ehds.node.state_schema import Decision, TaskStatus, audit_log, metadata

DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)
CHAIN = "node hospital-a"
COORDINATOR = "coordinator central"


def _assignment(task_id: str, nonce: str = "n-1", **changes: object) -> TaskAssignment:
    fields: dict[str, object] = {
        "task_id": task_id,
        "study_id": "s-1",
        "analysis": AnalysisRef("person_count", "1.0.0"),
        "parameters": b'{"reference_year":2025}',
        "deadline": DEADLINE,
        "min_cell_count": 10,
        "data_permit_id": "permit-7",
        "requested_by": "alice",
        "permit": default_permit(),
        "nonce": nonce,
        "expires_at": DEADLINE,
        "coordinator_audit_ref": COORDINATOR_REF,
    }
    fields.update(changes)
    return TaskAssignment(**fields)  # type: ignore[arg-type]


@pytest.fixture
def signer(pki: Pki) -> Signer:
    return Signer.from_file(pki.tls("hospital-a").key)


@pytest.fixture
def state(tmp_path: Path, signer: Signer) -> Iterator[NodeState]:
    with NodeState.open(tmp_path / "node.db") as opened:
        opened.attach_audit(AuditLog(audit_log, signer, CHAIN))
        yield opened


@contextmanager
def _sql(path: Path) -> Iterator[sa.Connection]:
    """A transaction on the state file from outside the node (what a tamperer would do)."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _entries(state: NodeState) -> list[AuditEntry]:
    return [AuditEntry.parse(line) for line in state.audit_lines()]


def _actions(state: NodeState) -> list[str]:
    return [entry.action for entry in _entries(state)]


def _failed(task_id: str) -> AuditNote:
    return AuditNote("task.failed", f"task {task_id}", detail={"code": "POLICY_REFUSED"})


def _result(state: NodeState, task_id: str, payload: bytes, *, held: bool) -> None:
    state.end_with_result(
        task_id,
        payload,
        hashlib.sha256(payload).digest(),
        "application/json",
        held=held,
        note=AuditNote("result.held" if held else "result.released", f"task {task_id}"),
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
            assert context.get_current_revision() == head == "0004"
    finally:
        engine.dispose()


def test_tasks_and_results_survive_a_reopen(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "node.db"
    log = AuditLog(audit_log, signer, CHAIN)
    with NodeState.open(path) as state:
        state.attach_audit(log)
        admitted = state.admit_assignment(_assignment("t-1"), signer=COORDINATOR)
        assert admitted.admission is Admission.NEW
        task = admitted.task
        assert task is not None
        assert task.status is TaskStatus.QUEUED
        again = state.admit_assignment(_assignment("t-1"), signer=COORDINATOR)
        assert (again.admission, again.task) == (Admission.REPEATED, task)
        state.admit_assignment(_assignment("t-2"), signer=COORDINATOR)
        assert state.start_attempt("t-1", "policy-3") == 1
        payload = b'{"cells":[]}'
        _result(state, "t-1", payload, held=False)
        state.end_with_outcome("t-2", ErrorCode.POLICY_REFUSED, "refused", _failed("t-2"))
        head = state.audit_head
    with NodeState.open(path) as state:
        state.attach_audit(log)
        assert state.audit_head == head  # the head is read back from the chain
        stored = state.task("t-1")
        assert stored is not None
        assert stored.status is TaskStatus.DONE
        assert stored.deadline == DEADLINE
        assert stored.permit == "permit-7"
        assert stored.permit_document == default_permit()
        assert stored.requested_by == "alice"
        assert stored.attempts == 1
        result = state.result("t-1")
        assert result is not None
        assert result.payload == b'{"cells":[]}'
        assert state.unreceipted_results() == ["t-1"]
        assert [(t.task_id, t.message) for t in state.unreported_outcomes()] == [("t-2", "refused")]
        assert state.in_flight_task_ids() == ("t-1", "t-2")
        state.mark_outcome_reported("t-2")
        assert state.in_flight_task_ids() == ("t-1",)
        assert not state.receipt("t-1", b"\x00" * 32)  # wrong digest: kept
        assert state.result("t-1") is not None
        assert state.receipt("t-1", hashlib.sha256(payload).digest())
        assert state.result("t-1") is None
        assert state.in_flight_task_ids() == ()
        assert _actions(state) == [
            "assignment.received",
            "assignment.repeated",
            "assignment.received",
            "task.started",
            "result.released",
            "task.failed",
            "result.receipted",
        ]


def test_every_change_is_in_a_chain_that_verifies(state: NodeState, signer: Signer) -> None:
    assignment = _assignment("t-1")
    state.admit_assignment(assignment, signer=COORDINATOR)
    state.start_attempt("t-1", "p-1")
    payload = b'{"rows":[]}'
    _result(state, "t-1", payload, held=False)
    assert state.record_sent("t-1") == state.audit_head
    state.receipt("t-1", hashlib.sha256(payload).digest())
    lines = state.audit_lines()
    report = verify_lines(lines, keys={signer.key_id: signer.public_key})
    assert report.ok, report.problem
    assert (report.chain, report.entries, report.signatures_checked) == (CHAIN, 5, 5)
    head = state.audit_head
    assert head is not None
    assert report.head == head
    received, *_, sent, receipted = _entries(state)
    # What came from the coordinator: its signer, its audit entry as the anchor, the digest of
    # the parameters and the permit, never their content.
    assert received.actor == COORDINATOR
    assert received.subject == "task t-1"
    assert received.anchor is not None
    assert (received.anchor.chain, received.anchor.seq) == (COORDINATOR_REF.chain, 41)
    assert received.digest == payload_digest(assignment.parameters)
    assert received.detail["permit_digest"] == payload_digest(default_permit())
    assert received.detail["requested_by"] == "alice"
    assert b"reference_year" not in b"".join(lines)
    assert sent.digest == receipted.digest == payload_digest(payload)
    assert sent.actor == CHAIN
    # Tampering with one stored entry is found at that entry.
    with _sql(state.path) as conn:
        entry = json.loads(
            conn.execute(sa.text("SELECT entry FROM audit_log WHERE seq=2")).scalar_one()
        )
        entry["detail"]["attempt"] = 7
        conn.execute(
            sa.text("UPDATE audit_log SET entry=:e WHERE seq=2"),
            {"e": json.dumps(entry, separators=(",", ":"), sort_keys=True)},
        )
    tampered = verify_lines(state.audit_lines(), keys={signer.key_id: signer.public_key})
    assert not tampered.ok
    assert tampered.bad_seq == 2


def test_assignment_memory_repeats_replays_and_expiry(state: NodeState) -> None:
    assert state.admit_assignment(_assignment("t-1", "n-1"), signer=COORDINATOR).task is not None
    repeated = state.admit_assignment(_assignment("t-1", "n-1"), signer=COORDINATOR)
    assert repeated.admission is Admission.REPEATED
    replayed = state.admit_assignment(
        _assignment("t-1", "n-2", parameters=b'{"other":1}'), signer=COORDINATOR
    )
    assert (replayed.admission, replayed.rejection) == (
        Admission.REJECTED,
        AssignmentRejection.REPLAYED,
    )
    stored = state.task("t-1")
    assert stored is not None
    assert stored.parameters == b'{"reference_year":2025}'
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = state.admit_assignment(
        _assignment("t-old", deadline=past, expires_at=past), signer=COORDINATOR
    )
    assert (expired.admission, expired.rejection) == (
        Admission.REJECTED,
        AssignmentRejection.EXPIRED,
    )
    assert state.task("t-old") is None  # a rejected assignment is never stored
    rejected = [e for e in _entries(state) if e.action == "assignment.rejected"]
    assert [e.detail["code"] for e in rejected] == ["assignment.replayed", "assignment.expired"]


def test_a_state_from_before_requested_by_is_migrated(tmp_path: Path, signer: Signer) -> None:
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
        state.attach_audit(AuditLog(audit_log, signer, CHAIN))
        [task] = state.unfinished()
        assert (task.task_id, task.permit, task.requested_by) == ("t-old", "permit-7", "")
        # No permit document: the runner refuses it (permit.missing) rather than run it.
        assert task.permit_document is None
        # Its first re-delivery under 1.3 names its nonce; it is the same task, not a replay.
        again = state.admit_assignment(_assignment("t-old", "n-9"), signer=COORDINATOR)
        assert again.admission is Admission.REPEATED
        new = state.admit_assignment(_assignment("t-new"), signer=COORDINATOR).task
        assert new is not None
        assert new.requested_by == "alice"


def test_requeue_undoes_an_attempt_stopped_by_shutdown(state: NodeState) -> None:
    state.admit_assignment(_assignment("t-1"), signer=COORDINATOR)
    state.start_attempt("t-1", "p")
    assert [t.status for t in state.unfinished()] == [TaskStatus.RUNNING]
    state.requeue("t-1")
    [task] = state.unfinished()
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 0)


def test_a_held_result_is_not_sent_until_a_decision_is_applied(state: NodeState) -> None:
    for task_id in ("t-keep", "t-drop"):
        state.admit_assignment(_assignment(task_id), signer=COORDINATOR)
        _result(state, task_id, b'{"rows":[]}', held=True)
    assert [t.task_id for t in state.held()] == ["t-keep", "t-drop"]
    # Held: in flight for the coordinator, but not in the outbox.
    assert state.in_flight_task_ids() == ("t-drop", "t-keep")
    assert state.unreceipted_results() == []
    assert state.result("t-keep") is None
    assert state.record_sent("t-keep") is None
    assert state.apply_decision("t-keep") is None  # nothing recorded yet
    with ReviewStore(state.path) as review:  # what `ehds node review` does, without the lock
        review.decide("t-keep", Decision.RELEASE, "operator dpo")
        review.decide("t-drop", Decision.REJECT, "operator dpo")
    assert state.pending_decisions() == ["t-keep", "t-drop"]
    released = state.apply_decision("t-keep")
    assert released is not None
    assert released.task is not None
    assert released.task.status is TaskStatus.DONE
    assert state.unreceipted_results() == ["t-keep"]
    rejected = state.apply_decision("t-drop")
    assert rejected is not None
    assert rejected.task is not None
    assert (rejected.task.status, rejected.task.error_code, rejected.task.message) == (
        TaskStatus.OUTCOME,
        ErrorCode.RELEASE_REJECTED,
        OUTCOME_MESSAGES[ErrorCode.RELEASE_REJECTED],
    )
    assert state.result("t-drop") is None
    assert state.apply_decision("t-drop") is None  # applied once
    assert state.pending_decisions() == []
    decided = [e for e in _entries(state) if e.action in ("result.released", "result.rejected")]
    assert [(e.action, e.actor, e.subject) for e in decided] == [
        ("result.released", "operator dpo", "task t-keep"),
        ("result.rejected", "operator dpo", "task t-drop"),
    ]


def test_retention_deletes_ended_tasks_and_keeps_the_replay_memory(state: NodeState) -> None:
    now = datetime.now(UTC)
    for task_id in ("t-old", "t-recent", "t-held", "t-running"):
        state.admit_assignment(_assignment(task_id), signer=COORDINATOR)
    _result(state, "t-old", b"{}", held=False)
    state.end_with_outcome("t-recent", ErrorCode.INTERNAL, "x", _failed("t-recent"))
    _result(state, "t-held", b"{}", held=True)
    with _sql(state.path) as conn:
        conn.execute(
            sa.text("UPDATE tasks SET ended_at=:t WHERE task_id IN ('t-old', 't-held')"),
            {"t": (now - timedelta(days=40)).replace(tzinfo=None)},
        )
    assert state.sweep_retention(30, now=now) == ["t-old"]
    assert state.task("t-old") is None
    assert state.result("t-old") is None
    assert {t.task_id for t in state.held()} == {"t-held"}  # not ended: an operator decides
    assert state.task("t-recent") is not None
    assert state.task("t-running") is not None
    [deleted] = [e for e in _entries(state) if e.action == "retention.deleted"]
    assert deleted.subject == "task t-old"
    assert deleted.detail["retention_days"] == 30
    # The task is gone but its assignment is remembered until it expires (2030): a re-delivery
    # is recognised and never runs it again, another nonce is still a replay.
    again = state.admit_assignment(_assignment("t-old"), signer=COORDINATOR)
    assert (again.admission, again.task) == (Admission.REPEATED, None)
    replay = state.admit_assignment(_assignment("t-old", "n-2"), signer=COORDINATOR)
    assert replay.rejection is AssignmentRejection.REPLAYED


def test_auditing_needs_the_chain(tmp_path: Path) -> None:
    with NodeState.open(tmp_path / "node.db") as state:
        with pytest.raises(NodeStateError, match="audit chain is not attached"):
            state.admit_assignment(_assignment("t-1"), signer=COORDINATOR)
        assert state.task("t-1") is None


def test_naive_datetimes_are_refused(state: NodeState) -> None:
    naive = _assignment("t", deadline=datetime(2030, 1, 1), expires_at=DEADLINE)
    with pytest.raises(sa.exc.StatementError):
        state.admit_assignment(naive, signer=COORDINATOR)


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
