"""Study workspaces: the names the node hands out, their use times, and the drop of idle
tables (through a real DuckDB engine) with the audit entries that record it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import pytest
from ibis.common.exceptions import TableNotFound
from node_harness import Pki

from ehds.analyses.engine import IbisCdm, open_duckdb
from ehds.audit import AuditEntry, AuditLog, verify_lines
from ehds.core.signing import Signer
from ehds.node.state import NodeState
from ehds.node.state_schema import WorkspaceRow, audit_log
from ehds.node.workspaces import StudyWorkspace, drop_idle_workspaces, workspace_table_name

T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)
SCHEMAS = ("cdm", "vocab", "results")


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def signer(pki: Pki) -> Signer:
    return Signer.from_file(pki.tls("hospital-a").key)


@pytest.fixture
def state(tmp_path: Path, signer: Signer) -> Iterator[NodeState]:
    with NodeState.open(tmp_path / "node.db") as opened:
        opened.attach_audit(AuditLog(audit_log, signer, "node hospital-a"))
        yield opened


def _rows(state: NodeState) -> dict[str, WorkspaceRow]:
    with state.audited() as recorder:
        return {row.name: row for row in recorder.session.query(WorkspaceRow).all()}


def _actions(state: NodeState) -> list[str]:
    return [AuditEntry.parse(line).action for line in state.audit_lines()]


def test_names_are_derived_from_the_study_and_the_purpose() -> None:
    study = hashlib.sha256(b"study-42").hexdigest()[:16]
    assert workspace_table_name("study-42", "glm_design") == f"ws_{study}_glm_design"
    assert workspace_table_name("study-43", "glm_design") != f"ws_{study}_glm_design"
    for bad in ("", "Design", "a-b", "x;drop table t", "a" * 44):
        with pytest.raises(ValueError, match="workspace purpose"):
            workspace_table_name("study-42", bad)
    assert len(workspace_table_name("s", "a" * 43)) == 63


def test_a_name_is_recorded_once_and_touched_at_each_use(state: NodeState) -> None:
    clock = Clock()
    workspace = StudyWorkspace(state, "study-42", clock=clock)
    name = workspace.table_name("glm_design")
    clock.now = T0 + timedelta(hours=5)
    # Another round of the study (another task, another object): the same table.
    assert StudyWorkspace(state, "study-42", clock=clock).table_name("glm_design") == name
    row = _rows(state)[name]
    assert (row.study_id, row.purpose) == ("study-42", "glm_design")
    assert (row.created_at, row.last_used_at) == (T0, T0 + timedelta(hours=5))
    assert _actions(state) == ["workspace.created"]
    with pytest.raises(ValueError, match="study id"):
        StudyWorkspace(state, "").table_name("glm_design")


@pytest.fixture
def engine_factory() -> Iterator[list[IbisCdm]]:
    """The engines a test opened (`_open`), closed at its end."""
    opened: list[IbisCdm] = []
    yield opened
    for engine in opened:
        engine.close()


def _open(tmp_path: Path, cdm: Path, opened: list[IbisCdm]) -> IbisCdm:
    engine = open_duckdb(cdm, tmp_path / "node-results.duckdb", schemas=SCHEMAS)
    opened.append(engine)
    return engine


def _exists(tmp_path: Path, cdm: Path, opened: list[IbisCdm], name: str) -> bool:
    engine = _open(tmp_path, cdm, opened)
    try:
        engine.results_table(name)
    except TableNotFound:
        return False
    finally:
        engine.close()
    return True


def test_idle_workspace_tables_are_dropped_and_forgotten(
    tmp_path: Path, cdm: Path, state: NodeState, signer: Signer, engine_factory: list[IbisCdm]
) -> None:
    clock = Clock()
    idle = StudyWorkspace(state, "study-old", clock=clock).table_name("glm_design")
    clock.now = T0 + timedelta(hours=47)
    recent = StudyWorkspace(state, "study-new", clock=clock).table_name("glm_design")
    engine = _open(tmp_path, cdm, engine_factory)
    rows = ibis.memtable({"y": [0, 1], "x": [1.0, 2.0]})
    for name in (idle, recent):
        engine.create_results_table(name, rows)
    engine.close()

    later = T0 + timedelta(hours=49)
    # Nothing idle for 72 hours yet: no engine is even opened.
    assert drop_idle_workspaces(state, _unused_engine, 72, now=later) == []

    dropped = drop_idle_workspaces(
        state, lambda: _open(tmp_path, cdm, engine_factory), 48, now=later
    )
    assert dropped == [idle]
    assert set(_rows(state)) == {recent}
    assert _exists(tmp_path, cdm, engine_factory, recent)
    assert not _exists(tmp_path, cdm, engine_factory, idle)
    entries = [AuditEntry.parse(line) for line in state.audit_lines()]
    assert [e.action for e in entries] == [
        "workspace.created",
        "workspace.created",
        "workspace.dropped",
    ]
    assert entries[-1].subject == f"workspace {idle}"
    assert entries[-1].detail["study"] == "study-old"
    assert entries[-1].detail["ttl_hours"] == 48
    report = verify_lines(state.audit_lines(), keys={signer.key_id: signer.public_key})
    assert report.ok, report.problem


def _unused_engine() -> IbisCdm:
    raise AssertionError("no engine is needed when nothing is idle")


class _Failing:
    """An engine whose drop fails (the results place unreachable)."""

    def __init__(self) -> None:
        self.closed = False

    def drop_results_table(self, name: str) -> None:
        raise ConnectionError("results place unreachable")

    def close(self) -> None:
        self.closed = True


def test_a_table_that_cannot_be_dropped_stays_recorded(state: NodeState) -> None:
    name = StudyWorkspace(state, "study-1", clock=Clock()).table_name("design")
    failing = _Failing()
    later = T0 + timedelta(hours=49)
    assert drop_idle_workspaces(state, lambda: failing, 48, now=later) == []  # type: ignore[arg-type, return-value]
    assert failing.closed
    assert set(_rows(state)) == {name}
    assert _actions(state) == ["workspace.created"]


def test_a_workspace_used_during_the_drop_is_kept(
    tmp_path: Path, cdm: Path, state: NodeState, engine_factory: list[IbisCdm]
) -> None:
    clock = Clock()
    workspace = StudyWorkspace(state, "study-1", clock=clock)
    name = workspace.table_name("design")
    later = T0 + timedelta(hours=49)

    def engine_after_a_new_round() -> IbisCdm:
        clock.now = later  # a round of the study starts while the sweep runs
        workspace.table_name("design")
        return _open(tmp_path, cdm, engine_factory)

    assert drop_idle_workspaces(state, engine_after_a_new_round, 48, now=later) == []
    assert _rows(state)[name].last_used_at == later  # still known: dropped at a later sweep
    assert _actions(state) == ["workspace.created"]
