"""Iterative analyses through a live coordinator: fake nodes made of the generated stubs play
`test.rounds` round by round (3 nodes x 3 rounds), a node that refuses a later round fails the
study by name, a restart in the middle of an iteration still completes it, a node away when a
round starts gets its task when it reconnects, cancel and deadline end a round like any tasks,
and a researcher cannot set a round's input."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
import sqlalchemy as sa
from alembic import command
from coordinator_harness import (
    BLOB,
    SLEEP,
    Caller,
    FakeNode,
    Pki,
    make_config,
    make_pki,
    profile,
    register_default_permits,
    rpc_error,
    run,
    spec,
)

from ehds.analyses.base import JsonObject
from ehds.analyses.iteration import (
    Finished,
    IterationFailedError,
    NextRound,
    run_locally,
)
from ehds.analyses.registry import Registry
from ehds.analyses.testing import BlobAnalysis, RoundsAnalysis, RoundsParameters, SleepAnalysis
from ehds.audit import payload_digest
from ehds.cli.study_commands import progress_text, render_status
from ehds.coordinator.server import CoordinatorServer
from ehds.coordinator.state.database import (
    alembic_config,
    check_migrations,
    create_state_engine,
    head_revision,
    upgrade,
)
from ehds.coordinator.state.models import NAME_LENGTH, STUDY_ID_LENGTH, task_id
from ehds.federation.model import (
    AnalysisRef,
    ErrorCode,
    NodeTaskState,
    Study,
    StudyNodeStatus,
    StudyState,
)
from ehds.federation.v1 import node_link_pb2

ROUNDS: Final = AnalysisRef("test.rounds", "1.0.0")
PERMIT: Final = "permit-rounds"
NODES: Final = ("node-a", "node-b", "node-c")
VALUES: Final = {"node-a": 1, "node-b": 10, "node-c": 100}


def rounds_spec(rounds: int, **overrides: Any) -> Any:
    parameters = overrides.pop("parameters", {"rounds": rounds, "value": 0})
    return spec(ROUNDS, parameters, permit=PERMIT, **overrides)


async def register_rounds_permit(server: CoordinatorServer, pki: Pki) -> None:
    ops = Caller(server.address, pki.tls("ops"))
    try:
        await ops.register_permit(pki.permit(PERMIT, analyses=("test.rounds",)))
    finally:
        await ops.close()


async def open_nodes(server: CoordinatorServer, pki: Pki) -> dict[str, FakeNode]:
    nodes = {name: FakeNode(server.address, pki.tls(name), name) for name in NODES}
    for node in nodes.values():
        await node.open(minor=4, node_profile=profile((SLEEP, BLOB, ROUNDS)))
    return nodes


async def close_all(*things: Any) -> None:
    for thing in things:
        await thing.close()


def round_of(assignment: node_link_pb2.TaskAssignment) -> dict[str, Any] | None:
    parameters = json.loads(assignment.parameters)
    assert isinstance(parameters, dict)
    value = parameters.get("round")
    assert value is None or isinstance(value, dict)
    return value


async def play(node: FakeNode, assignment: node_link_pb2.TaskAssignment) -> None:
    """What a node running test.rounds releases: its value plus the previous round's total."""
    previous = round_of(assignment) or {}
    await node.ack(assignment.task_id)
    digest = await node.result(
        assignment.task_id, {"value": VALUES[node.name] + int(previous.get("total", 0))}
    )
    receipt = (await node.expect("result_receipt")).result_receipt
    assert receipt.task_id == assignment.task_id
    assert receipt.sha256 == digest


async def next_round(
    nodes: Mapping[str, FakeNode], study_id: str, number: int
) -> dict[str, node_link_pb2.TaskAssignment]:
    assignments = {}
    for name, node in nodes.items():
        assignment = (await node.expect("task_assignment")).task_assignment
        expected = f"{study_id}.{name}" if number == 0 else f"{study_id}.{name}.r{number}"
        assert assignment.task_id == expected
        carried = round_of(assignment)
        assert (carried or {}).get("number", 0) == number
        assignments[name] = assignment
    return assignments


def expected_total(values: Sequence[int], rounds: int) -> int:
    total = 0
    for _ in range(rounds):
        total = sum(value + total for value in values)
    return total


def audit_entries(tmp_path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(tmp_path / "coordinator-state.db") as db:
        return [json.loads(row[0]) for row in db.execute("SELECT entry FROM audit_log")]


# --------------------------------------------------------------------------- in one process


def test_rounds_analysis_runs_locally_to_the_expected_total() -> None:
    analysis = RoundsAnalysis()
    contexts: dict[str, Any] = {name: _Context() for name in NODES}
    for rounds in (1, 3):
        params = RoundsParameters(rounds=rounds, value=5)
        result, ran = run_locally(analysis, params, contexts)
        assert ran == rounds
        assert result == {"total": expected_total([5, 5, 5], rounds), "rounds": rounds}


class _Context:
    def check_cancelled(self) -> None:
        return None


# --------------------------------------------------------------------------- live


def test_three_nodes_three_rounds_give_the_expected_total(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        nodes = await open_nodes(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(rounds_spec(3))
            assert study.round == 0
            dispatched: list[node_link_pb2.TaskAssignment] = []
            for number in range(3):
                assignments = await next_round(nodes, study.id, number)
                dispatched.extend(assignments.values())
                if number == 1:
                    live = await alice.get(study.id)
                    assert live.round == 1
                    assert {status.node_name for status in live.nodes} == set(NODES)
                    assert all(s.state is NodeTaskState.DISPATCHED for s in live.nodes)
                for name, assignment in assignments.items():
                    await play(nodes[name], assignment)
            final = await alice.wait_final(study.id)
            assert final.state is StudyState.COMPLETED, final.state_reason
            assert final.round == 2
            document = await alice.results(study.id)
        finally:
            await close_all(alice, *nodes.values())

        total = expected_total(list(VALUES.values()), 3)
        assert document["pooled"] == {"total": total, "rounds": 3}
        assert document["rounds"] == 3
        assert document["contributors"] == list(NODES)
        last = expected_total(list(VALUES.values()), 2)
        assert [(n["node"], n["state"], n["result"]) for n in document["nodes"]] == [
            (name, "RELEASED", {"value": VALUES[name] + last}) for name in NODES
        ]
        entries = audit_entries(tmp_path)
        rounds = [e for e in entries if e["action"] == "study.round"]
        assert [e["detail"]["round"] for e in rounds] == [1, 2]
        by_task = {
            e["subject"].removeprefix("task "): e
            for e in entries
            if e["action"] == "task.dispatched"
        }
        for assignment in dispatched:
            entry = by_task[assignment.task_id]
            # The digest is of the bytes the node received (a round's own parameters).
            assert entry["digest"] == payload_digest(assignment.parameters)
        round_digests = {e["digest"] for e in rounds}
        assert {by_task[a.task_id]["digest"] for a in dispatched if round_of(a)} == round_digests

    run(tmp_path, body)


def test_a_node_that_refuses_a_later_round_fails_the_study_naming_it(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        nodes = await open_nodes(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(rounds_spec(3, min_nodes=2))
            for name, assignment in (await next_round(nodes, study.id, 0)).items():
                await play(nodes[name], assignment)
            round_1 = await next_round(nodes, study.id, 1)
            await play(nodes["node-a"], round_1["node-a"])
            await nodes["node-b"].ack(round_1["node-b"].task_id)
            await nodes["node-b"].outcome(
                round_1["node-b"].task_id, ErrorCode.DISCLOSURE_REFUSED, "glm.cross_cell"
            )
            await play(nodes["node-c"], round_1["node-c"])
            final = await alice.wait_final(study.id)
            error = await rpc_error(alice.results(study.id))
        finally:
            await close_all(alice, *nodes.values())
        assert final.state is StudyState.FAILED
        assert final.round == 1
        assert final.state_reason == (
            "round 1: every node of round 0 must contribute, and node-b refused "
            "(DISCLOSURE_REFUSED)"
        )
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION

    run(tmp_path, body)


def test_round_zero_needs_min_nodes_and_later_rounds_go_to_its_contributors(
    tmp_path: Path,
) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        nodes = await open_nodes(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(rounds_spec(2, min_nodes=2))
            round_0 = await next_round(nodes, study.id, 0)
            await nodes["node-c"].outcome(round_0["node-c"].task_id, ErrorCode.POLICY_REFUSED)
            await play(nodes["node-a"], round_0["node-a"])
            await play(nodes["node-b"], round_0["node-b"])
            contributors = {name: nodes[name] for name in ("node-a", "node-b")}
            for name, assignment in (await next_round(contributors, study.id, 1)).items():
                await play(nodes[name], assignment)
            await nodes["node-c"].quiet(0.2)  # no round 1 for a node that did not contribute
            final = await alice.wait_final(study.id)
            document = await alice.results(study.id)

            too_few = await alice.submit(rounds_spec(2, min_nodes=3))
            round_0 = await next_round(nodes, too_few.id, 0)
            await nodes["node-c"].outcome(round_0["node-c"].task_id, ErrorCode.POLICY_REFUSED)
            await play(nodes["node-a"], round_0["node-a"])
            await play(nodes["node-b"], round_0["node-b"])
            failed = await alice.wait_final(too_few.id)
        finally:
            await close_all(alice, *nodes.values())
        assert final.state is StudyState.COMPLETED, final.state_reason
        values = [VALUES["node-a"], VALUES["node-b"]]
        assert document["pooled"] == {"total": expected_total(values, 2), "rounds": 2}
        assert document["contributors"] == ["node-a", "node-b"]
        # node-c's latest task is its round-0 refusal.
        node_c = next(n for n in document["nodes"] if n["node"] == "node-c")
        assert (node_c["state"], node_c["error_code"]) == ("REFUSED", "POLICY_REFUSED")
        assert failed.state is StudyState.FAILED
        assert failed.round == 0
        assert failed.state_reason.startswith("2 of 3 nodes contributed, min_nodes is 3")

    run(tmp_path, body)


def test_an_iteration_survives_a_coordinator_restart(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, pki)

    async def main() -> None:
        async with CoordinatorServer(config) as server:
            await register_default_permits(server, pki)
            await register_rounds_permit(server, pki)
            nodes = await open_nodes(server, pki)
            alice = Caller(server.address, pki.tls("alice"))
            try:
                study = await alice.submit(rounds_spec(3))
                for name, assignment in (await next_round(nodes, study.id, 0)).items():
                    await play(nodes[name], assignment)
                # Round 1 is out (not acknowledged) when the coordinator stops.
                await next_round(nodes, study.id, 1)
            finally:
                await close_all(alice, *nodes.values())
        async with CoordinatorServer(config) as server:
            nodes = await open_nodes(server, pki)
            alice = Caller(server.address, pki.tls("alice"))
            try:
                live = await alice.get(study.id)
                assert live.round == 1
                # The same round-1 tasks again (never acknowledged: re-sent on Hello).
                for number in (1, 2):
                    for name, assignment in (await next_round(nodes, study.id, number)).items():
                        await play(nodes[name], assignment)
                final = await alice.wait_final(study.id)
                document = await alice.results(study.id)
            finally:
                await close_all(alice, *nodes.values())
        assert final.state is StudyState.COMPLETED, final.state_reason
        assert document["pooled"] == {
            "total": expected_total(list(VALUES.values()), 3),
            "rounds": 3,
        }

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_node_away_when_a_round_starts_gets_its_task_on_reconnect(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        nodes = await open_nodes(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(rounds_spec(2))
            round_0 = await next_round(nodes, study.id, 0)
            await play(nodes["node-c"], round_0["node-c"])
            await nodes["node-c"].close()  # away when round 1 starts
            await play(nodes["node-a"], round_0["node-a"])
            await play(nodes["node-b"], round_0["node-b"])
            for name in ("node-a", "node-b"):
                assignment = (await nodes[name].expect("task_assignment")).task_assignment
                assert assignment.task_id == f"{study.id}.{name}.r1"
            waiting = await alice.wait_node_state(study.id, "node-c", NodeTaskState.NOT_DISPATCHED)
            nodes["node-c"] = FakeNode(server.address, pki.tls("node-c"), "node-c")
            await nodes["node-c"].open(minor=4, node_profile=profile((SLEEP, BLOB, ROUNDS)))
            late = (await nodes["node-c"].expect("task_assignment")).task_assignment
            assert late.task_id == f"{study.id}.node-c.r1"
            assert round_of(late) == {"number": 1, "total": sum(VALUES.values())}
        finally:
            await close_all(alice, *nodes.values())
        assert waiting.round == 1

    run(tmp_path, body)


def test_cancel_and_deadline_end_the_current_round(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        nodes = await open_nodes(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(rounds_spec(3))
            for name, assignment in (await next_round(nodes, study.id, 0)).items():
                await play(nodes[name], assignment)
            round_1 = await next_round(nodes, study.id, 1)
            await nodes["node-a"].ack(round_1["node-a"].task_id)
            cancelled = await alice.cancel(study.id, "enough")
            for name in NODES:
                stop = (await nodes[name].expect("cancel_task")).cancel_task
                assert stop.task_id == round_1[name].task_id

            late = await alice.submit(rounds_spec(3, deadline_seconds=2))
            for name, assignment in (await next_round(nodes, late.id, 0)).items():
                await play(nodes[name], assignment)
            round_1 = await next_round(nodes, late.id, 1)
            await play(nodes["node-a"], round_1["node-a"])
            await nodes["node-b"].ack(round_1["node-b"].task_id)
            timed_out = await alice.wait_final(late.id, timeout=5)
        finally:
            await close_all(alice, *nodes.values())
        assert cancelled.state is StudyState.CANCELLED
        assert cancelled.round == 1
        assert all(status.state is NodeTaskState.CANCELLED for status in cancelled.nodes)
        assert timed_out.state is StudyState.FAILED
        assert timed_out.state_reason == (
            "round 1: every node of round 0 must contribute, and node-b timed out "
            "(DEADLINE_EXCEEDED), node-c timed out (DEADLINE_EXCEEDED)"
        )

    run(tmp_path, body)


def test_a_researcher_cannot_set_the_round(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            parameters = {"rounds": 2, "value": 1, "round": {"number": 1, "total": 5}}
            error = await rpc_error(alice.submit(rounds_spec(2, parameters=parameters)))
        finally:
            await alice.close()
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("spec.parameters.round: set by the coordinator")

    run(tmp_path, body)


# --------------------------------------------------------------------------- failures


class _TwoRounds(RoundsAnalysis):
    max_rounds = 2


class _Diverges(RoundsAnalysis):
    def advance(
        self,
        params: RoundsParameters,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        if round_number == 1:
            raise IterationFailedError("test.rounds diverged (deviance went up 3 times)")
        return super().advance(params, round_number, state, node_results)


class _Broken(RoundsAnalysis):
    def advance(
        self,
        params: RoundsParameters,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        raise ZeroDivisionError("a bug")


def _failure(tmp_path: Path, analysis: RoundsAnalysis, rounds_played: int) -> str:
    reasons: list[str] = []

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await register_rounds_permit(server, pki)
        nodes = await open_nodes(server, pki)
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(rounds_spec(5))
            for number in range(rounds_played):
                for name, assignment in (await next_round(nodes, study.id, number)).items():
                    await play(nodes[name], assignment)
            final = await alice.wait_final(study.id)
        finally:
            await close_all(alice, *nodes.values())
        assert final.state is StudyState.FAILED
        reasons.append(final.state_reason)

    pki = make_pki(tmp_path)
    registry = Registry([SleepAnalysis(), BlobAnalysis(), analysis])

    async def main() -> None:
        async with CoordinatorServer(make_config(tmp_path, pki), analyses=registry) as server:
            await body(server, pki)

    asyncio.run(asyncio.wait_for(main(), 20))
    (reason,) = reasons
    return reason


def test_an_iteration_past_max_rounds_fails(tmp_path: Path) -> None:
    assert _failure(tmp_path, _TwoRounds(), 2) == "test.rounds 1.0.0 did not finish in 2 rounds"


def test_an_iteration_failure_fails_the_study_with_its_message(tmp_path: Path) -> None:
    reason = _failure(tmp_path, _Diverges(), 2)
    assert reason == "test.rounds diverged (deviance went up 3 times)"


def test_an_error_in_advance_fails_the_study_without_details(tmp_path: Path) -> None:
    reason = _failure(tmp_path, _Broken(), 1)
    assert reason == "aggregation failed at the coordinator (see its log)"


# --------------------------------------------------------------------------- schema and CLI


def _migrate_round_data(url: str) -> None:
    """A database at 0002 with a study, its task and result, migrated to rounds: all round 0,
    nothing lost, and a round-1 task id of the widest node name fits."""
    engine = create_state_engine(url)
    try:
        assert upgrade(engine, "0002") == "0002"
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO nodes (name, first_seen_at, revoked) VALUES (:n, :t, false)"),
                {"n": LONG_NODE, "t": NOW},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO studies (id, title, analysis_name, analysis_version, parameters,"
                    " min_nodes, deadline_seconds, target_nodes, data_permit_id, min_cell_count,"
                    " state, state_reason, submitted_by, created_at, updated_at, deadline_at,"
                    " ended_at) VALUES (:s, 't', 'test.sleep', '1.0.0', :p, 1, 60, '[]',"
                    " 'permit-1', 10, 'COMPLETED', '', 'alice', :t, :t, :t, :t)"
                ),
                {"s": LONG_STUDY, "p": b"{}", "t": NOW},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO tasks (task_id, study_id, node_name, state, error_code, reason,"
                    " vocabulary_version, stage, fraction, updated_at, ended_at, cancel_pending)"
                    " VALUES (:id, :s, :n, 'RELEASED', 'UNSPECIFIED', '', '',"
                    " 'UNSPECIFIED', 1.0, :t, :t, false)"
                ),
                {"id": f"{LONG_STUDY}.{LONG_NODE}", "s": LONG_STUDY, "n": LONG_NODE, "t": NOW},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO results (task_id, study_id, node_name, content_type, payload,"
                    " sha256, size, received_at) VALUES (:id, :s, :n, 'application/json', :p,"
                    " :h, 2, :t)"
                ),
                {
                    "id": f"{LONG_STUDY}.{LONG_NODE}",
                    "s": LONG_STUDY,
                    "n": LONG_NODE,
                    "p": b"{}",
                    "h": "0" * 64,
                    "t": NOW,
                },
            )
        assert upgrade(engine) == head_revision()
        check_migrations(engine)
        with engine.begin() as connection:
            assert connection.execute(sa.text("SELECT round FROM tasks")).scalars().all() == [0]
            assert connection.execute(sa.text("SELECT round FROM studies")).scalars().all() == [0]
            assert connection.execute(sa.text("SELECT count(*) FROM results")).scalar() == 1
            connection.execute(
                sa.text(
                    "INSERT INTO tasks (task_id, study_id, node_name, round, state, error_code,"
                    " reason, vocabulary_version, stage, fraction, updated_at, cancel_pending)"
                    " VALUES (:id, :s, :n, 49, 'NOT_DISPATCHED', 'UNSPECIFIED', '', '',"
                    " 'UNSPECIFIED', 0.0, :t, false)"
                ),
                {
                    "id": task_id(LONG_STUDY, LONG_NODE, 49),
                    "s": LONG_STUDY,
                    "n": LONG_NODE,
                    "t": NOW,
                },
            )
            # One task per study, node and round.
            with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
                connection.execute(
                    sa.text(
                        "INSERT INTO tasks (task_id, study_id, node_name, round, state,"
                        " error_code, reason, vocabulary_version, stage, fraction, updated_at,"
                        " cancel_pending) VALUES ('other', :s, :n, 49, 'NOT_DISPATCHED',"
                        " 'UNSPECIFIED', '', '', 'UNSPECIFIED', 0.0, :t, false)"
                    ),
                    {"s": LONG_STUDY, "n": LONG_NODE, "t": NOW},
                )
        # And back: round 0 is what 0002 held (the round-49 task goes).
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0002")
        with engine.begin() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM results")).scalar() == 1
        assert "round" not in {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    finally:
        engine.dispose()


NOW: Final = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LONG_STUDY: Final = "s" * STUDY_ID_LENGTH
LONG_NODE: Final = "n" * NAME_LENGTH


def test_migration_0003_keeps_tasks_as_round_zero_on_sqlite(tmp_path: Path) -> None:
    _migrate_round_data(f"sqlite:///{tmp_path / 'state.db'}")


@pytest.mark.postgres
def test_migration_0003_keeps_tasks_as_round_zero_on_postgresql(fresh_postgres_url: str) -> None:
    _migrate_round_data(fresh_postgres_url)


def test_status_and_watch_show_the_round() -> None:
    study = Study(
        id="st-1",
        spec=rounds_spec(3),
        state=StudyState.RUNNING,
        nodes=(StudyNodeStatus("node-a", NodeTaskState.RELEASED),),
        round=2,
    )
    assert progress_text(study).startswith("RUNNING     round 2 nodes done 1/1")
    assert "  round         2 (the nodes below are this round's tasks)" in render_status(study)
    assert "round" not in progress_text(replace(study, round=0))
