"""The node agent against a fake coordinator over real mutual TLS: Hello, tasks, their ends.

Each test runs one scenario in its own event loop (`asyncio.run`): the fake coordinator and the
real `NodeAgent` share it, tasks run on the agent's worker threads against a 500-person
synthetic CDM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import pytest
import sqlalchemy as sa
from node_harness import (
    FailingAnalysis,
    FakeCoordinator,
    LocalAnalyses,
    Pki,
    RunningNode,
    Session,
    assignment,
    coordinator_server,
    running_node,
    write_node_config,
    write_policy,
)

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import duckdb_session
from ehds.analyses.person_count import PersonCount
from ehds.federation.limits import MAX_CHUNK_BYTES
from ehds.federation.model import (
    CancelTask,
    ErrorCode,
    Heartbeat,
    Hello,
    ProtocolVersion,
    ResultReceipt,
    TaskAck,
    TaskOutcome,
    TaskProgress,
    TaskStage,
)
from ehds.federation.version import PROTOCOL_VERSION
from ehds.node.errors import OUTCOME_MESSAGES
from ehds.node.runner import PROGRESS_AFTER_S
from ehds.omop.database import CdmDatabase

Scenario = Callable[[FakeCoordinator, RunningNode, Session], Awaitable[None]]
TIMEOUT_S = 20.0


def run_scenario(
    tmp_path: Path,
    pki: Pki,
    cdm: Path,
    scenario: Scenario,
    *,
    analyses: LocalAnalyses | None = None,
    coordinator: FakeCoordinator | None = None,
    protocol_version: ProtocolVersion | None = None,
) -> None:
    """Start the fake coordinator and a node, wait for the node's first stream, run
    ``scenario``, and take everything down."""
    analyses = analyses or LocalAnalyses()
    coordinator = coordinator or FakeCoordinator()
    write_policy(tmp_path / "policy.yaml")

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(
                config, registry=analyses.registry(), protocol_version=protocol_version
            ) as node:
                session = await coordinator.next_session()
                await session.next(Heartbeat)  # welcomed: the first heartbeat follows Welcome
                await scenario(coordinator, node, session)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def outcome_of(session: Session, task_id: str) -> Awaitable[TaskOutcome]:
    return session.next(TaskOutcome, lambda m: m.task_id == task_id)


def test_progress_only_for_a_task_running_longer_than_the_threshold(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-slow", "test.sleep", b'{"seconds":2.2}'))
        await session.next(TaskAck, lambda m: m.task_id == "t-slow")
        acked = asyncio.get_running_loop().time()
        first = await session.next(TaskProgress, lambda m: m.task_id == "t-slow")
        assert asyncio.get_running_loop().time() - acked >= PROGRESS_AFTER_S - 0.1
        assert first.stage is TaskStage.COMPUTING
        await session.result("t-slow")
        progress = [m for m in session.received if isinstance(m, TaskProgress)]
        assert progress[-1].stage is TaskStage.UPLOADING
        # 2.2 s of work: at most one message per second, then "uploading".
        assert 2 <= len(progress) <= 4

    run_scenario(tmp_path, pki, cdm, scenario)


def test_hello_announces_versions_engine_and_policy_capabilities(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    with CdmDatabase.parse(str(cdm)).connect(read_only=True) as conn:
        vocabulary = conn.execute(sa.text("SELECT vocabulary_version FROM cdm.cdm_source")).scalar()
    assert vocabulary

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        hello = next(m for m in session.received if isinstance(m, Hello))
        assert session.peer == "node/hospital-a"  # the certificate names the node
        assert hello.protocol_version == ProtocolVersion(*PROTOCOL_VERSION)
        profile = hello.profile
        assert profile.software.name == "ehds-federation"
        assert profile.software.version == metadata.version("ehds-federation")
        assert profile.cdm_version == "5.4"
        assert profile.vocabulary_version == vocabulary
        assert profile.engine == "duckdb"
        assert profile.policy_version == "test-policy-1"
        # The policy's analyses the registry knows; test.forbidden is known but not allowed.
        assert [str(ref) for ref in profile.capabilities] == [
            "person_count 1.0.0",
            "test.blob 1.0.0",
            "test.fail 1.0.0",
            "test.gate 1.0.0",
            "test.sleep 1.0.0",
            "test.slow_query 1.0.0",
        ]
        assert node.agent.connected
        assert node.metrics.registry.get_sample_value("ehds_node_connected") == 1

    run_scenario(tmp_path, pki, cdm, scenario)


def test_person_count_result_is_the_analysis_output_as_canonical_json(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    parameters = b'{"age_band_edges":[0,18,45,65]}'

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        # The coordinator asks for 3, the policy says 5: the node applies the larger.
        session.send(assignment("t-count", "person_count", parameters, min_cell_count=3))
        await session.next(TaskAck, lambda m: m.task_id == "t-count")
        payload, _ = await session.result("t-count")
        assert payload.content_type == "application/json"
        analysis = PersonCount()
        with duckdb_session(cdm, tmp_path / "expected-results.duckdb") as engine:
            expected = analysis.compute(
                analysis.parse_parameters(parameters),
                ComputeContext(cdm=None, min_cell_count=5, engine=engine),
            )
        assert json.loads(payload.data) == expected
        assert payload.data == json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
        # A task that ends within PROGRESS_AFTER_S sends no progress: ack, then the result.
        assert not [m for m in session.received if isinstance(m, TaskProgress)]
        # Until the receipt, the task is in flight; after it, no longer.
        await session.next(Heartbeat, lambda m: "t-count" in m.in_flight_task_ids)
        session.send(ResultReceipt("t-count", payload.sha256))
        await session.next(Heartbeat, lambda m: "t-count" not in m.in_flight_task_ids)
        assert node.state.result("t-count") is None  # payload dropped after the receipt
        samples = node.metrics.registry
        labels = {"analysis": "person_count 1.0.0", "outcome": "done"}
        assert samples.get_sample_value("ehds_node_tasks_total", labels) == 1
        assert (
            samples.get_sample_value(
                "ehds_node_task_duration_seconds_count", {"analysis": "person_count 1.0.0"}
            )
            == 1
        )

    run_scenario(tmp_path, pki, cdm, scenario)


def test_ack_comes_after_the_task_is_stored(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-durable", "test.sleep", b'{"seconds":30}'))
        await session.next(TaskAck, lambda m: m.task_id == "t-durable")
        # Read through a separate SQLite connection: the row is committed, not just cached.
        with sqlite3.connect(node.config.state) as db:
            rows = db.execute(
                "SELECT study_id, analysis_name, parameters FROM tasks WHERE task_id = ?",
                ("t-durable",),
            ).fetchall()
        assert rows == [("study-t-durable", "test.sleep", b'{"seconds":30}')]
        await session.next(Heartbeat, lambda m: m.in_flight_task_ids == ("t-durable",))

    run_scenario(tmp_path, pki, cdm, scenario)


def test_policy_refusal_never_runs_the_analysis(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-refused", "test.forbidden"))
        await session.next(TaskAck, lambda m: m.task_id == "t-refused")
        result = await outcome_of(session, "t-refused")
        assert result.error_code is ErrorCode.POLICY_REFUSED
        assert result.message == ANALYSIS_NOT_ALLOWED
        assert analyses.forbidden.runs == 0
        labels = {"analysis": "test.forbidden 1.0.0", "outcome": "refused"}
        assert node.metrics.registry.get_sample_value("ehds_node_tasks_total", labels) == 1

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


ANALYSIS_NOT_ALLOWED = (
    "policy.analysis_not_allowed: the analysis is not allowed by this site's policy"
)
INVALID_PARAMETERS = OUTCOME_MESSAGES[ErrorCode.INVALID_PARAMETERS]
INVALID_TASKS = {
    "analysis not in policy": ("test.unknown", "1.0.0", b"{}", ErrorCode.POLICY_REFUSED),
    "version not in policy": ("person_count", "9.9.9", b"{}", ErrorCode.POLICY_REFUSED),
    "bad value": ("person_count", "1.0.0", b'{"age_band_edges":[5]}', ErrorCode.INVALID_PARAMETERS),
    "unknown key": ("person_count", "1.0.0", b'{"colour":"red"}', ErrorCode.INVALID_PARAMETERS),
    "not json": ("person_count", "1.0.0", b"not json", ErrorCode.INVALID_PARAMETERS),
}


@pytest.mark.parametrize("case", INVALID_TASKS.values(), ids=INVALID_TASKS.keys())
def test_invalid_tasks_end_with_their_code(
    tmp_path: Path, pki: Pki, cdm: Path, case: tuple[str, str, bytes, ErrorCode]
) -> None:
    analysis, version, parameters, code = case
    message = ANALYSIS_NOT_ALLOWED if code is ErrorCode.POLICY_REFUSED else INVALID_PARAMETERS

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-bad", analysis, parameters, version=version))
        result = await outcome_of(session, "t-bad")
        assert (result.error_code, result.message) == (code, message)

    run_scenario(tmp_path, pki, cdm, scenario)


def test_analysis_allowed_by_policy_but_unknown_or_other_version(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-ghost", "ghost"))
        session.send(assignment("t-v9", "person_count", version="9.9.9"))
        # The two tasks run concurrently: take their outcomes in whatever order they come.
        codes = {}
        for _ in range(2):
            outcome = await session.next(TaskOutcome, lambda m: m.task_id in {"t-ghost", "t-v9"})
            codes[outcome.task_id] = outcome.error_code
        assert codes == {
            "t-ghost": ErrorCode.ANALYSIS_UNKNOWN,
            "t-v9": ErrorCode.ANALYSIS_VERSION_UNSUPPORTED,
        }

    write_policy_with = [("ghost", "1.0.0"), ("person_count", "9.9.9")]

    async def main() -> None:
        coordinator = FakeCoordinator()
        write_policy(tmp_path / "policy.yaml", tuple(write_policy_with))
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=LocalAnalyses().registry()) as node:
                session = await coordinator.next_session()
                hello = await session.next(Hello)
                assert hello.profile.capabilities == ()  # neither is runnable here
                await scenario(coordinator, node, session)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def test_internal_failure_sends_only_the_code_and_fixed_text(
    tmp_path: Path, pki: Pki, cdm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-fail", "test.fail"))
        result = await outcome_of(session, "t-fail")
        assert result.error_code is ErrorCode.INTERNAL
        assert result.message == OUTCOME_MESSAGES[ErrorCode.INTERNAL]
        assert FailingAnalysis.SECRET not in repr(session.received)

    with caplog.at_level(logging.ERROR, logger="ehds.node"):
        run_scenario(tmp_path, pki, cdm, scenario)
    # Where it failed stays in this node's log; what the exception said (it could quote CDM
    # values) does not, not even there.
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "message withheld" in logged
    assert "compute" in logged  # the frame where it failed
    assert FailingAnalysis.SECRET not in logged
    assert all(record.exc_info is None for record in caplog.records)


def test_cdm_unavailable(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    missing = tmp_path / "gone" / "missing.duckdb"

    async def main() -> None:
        coordinator = FakeCoordinator()
        write_policy(tmp_path / "policy.yaml")
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(
                tmp_path,
                pki=pki,
                cdm=missing,
                address=f"127.0.0.1:{port}",
            )
            async with running_node(config, registry=LocalAnalyses().registry()):
                session = await coordinator.next_session()
                hello = await session.next(Hello)
                assert (hello.profile.cdm_version, hello.profile.vocabulary_version) == ("", "")
                session.send(assignment("t-cdm", "person_count"))
                result = await outcome_of(session, "t-cdm")
                assert result.error_code is ErrorCode.CDM_UNAVAILABLE

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def test_cancel_stops_a_running_task(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-block", "test.gate"))
        session.send(assignment("t-other", "person_count"))
        await asyncio.to_thread(analyses.gate.started.wait, 5)
        # One blocked task does not hold up another.
        await session.result("t-other")
        session.send(CancelTask("t-block", "study cancelled by requester"))
        result = await outcome_of(session, "t-block")
        assert result.error_code is ErrorCode.CANCELLED
        await session.next(Heartbeat, lambda m: "t-block" not in m.in_flight_task_ids)
        labels = {"analysis": "test.gate 1.0.0", "outcome": "cancelled"}
        assert node.metrics.registry.get_sample_value("ehds_node_tasks_total", labels) == 1

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_cancel_interrupts_a_running_query(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-query", "test.slow_query"))
        await asyncio.to_thread(analyses.slow_query.query_started.wait, 5)
        await asyncio.sleep(0.2)  # the statement is running inside DuckDB
        loop = asyncio.get_running_loop()
        started = loop.time()
        session.send(CancelTask("t-query", "stop"))
        result = await outcome_of(session, "t-query")
        assert result.error_code is ErrorCode.CANCELLED
        assert loop.time() - started < 2.0

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_deadline_stops_a_running_task_and_refuses_a_late_one(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(
            assignment("t-slow", "test.sleep", b'{"seconds":30}', deadline=timedelta(seconds=0.5))
        )
        # Accepted (its assignment has not expired) but past its deadline when it would run.
        session.send(
            assignment(
                "t-late",
                "person_count",
                deadline=datetime.now(UTC) - timedelta(seconds=1),
                expires_at=datetime.now(UTC) + timedelta(seconds=60),
            )
        )
        codes = {}
        for _ in range(2):  # in whatever order they come
            outcome = await session.next(TaskOutcome, lambda m: m.task_id in {"t-late", "t-slow"})
            codes[outcome.task_id] = outcome.error_code
        assert codes == {
            "t-late": ErrorCode.DEADLINE_EXCEEDED,
            "t-slow": ErrorCode.DEADLINE_EXCEEDED,
        }

    run_scenario(tmp_path, pki, cdm, scenario)


def test_result_over_4_mib_travels_in_chunks(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    size = 5 * 1024 * 1024

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-blob", "test.blob", json.dumps({"size_bytes": size}).encode()))
        payload, count = await session.result("t-blob", timeout=10)
        assert count == -(-len(payload.data) // MAX_CHUNK_BYTES) >= 6
        assert len(json.loads(payload.data)["blob"]) == size

    run_scenario(tmp_path, pki, cdm, scenario)


def test_repeated_assignment_is_acked_again_and_its_end_resent(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        refused = assignment("t-again", "test.forbidden")
        session.send(refused)
        first = await outcome_of(session, "t-again")
        session.send(refused)
        await session.next(TaskAck, lambda m: m.task_id == "t-again")
        second = await outcome_of(session, "t-again")
        assert (first.error_code, first.message) == (second.error_code, second.message)
        assert first.error_code is ErrorCode.POLICY_REFUSED
        assert analyses.forbidden.runs == 0

        done = assignment("t-done", "person_count")
        session.send(done)
        first_result, _ = await session.result("t-done")
        session.send(done)  # no receipt yet: the result comes again
        await session.next(TaskAck, lambda m: m.task_id == "t-done")
        second_result, _ = await session.result("t-done")
        assert first_result == second_result

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_previous_protocol_minor_version(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    """A stream at 1.0 still connects, but a coordinator older than 1.3 cannot sign its
    assignments: the node runs none of them (governance is not negotiable downwards)."""

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        hello = next(m for m in session.received if isinstance(m, Hello))
        assert hello.protocol_version == ProtocolVersion(1, 0)
        assert session.protocol == ProtocolVersion(1, 0)
        session.send(assignment("t-old", "person_count"))
        result = await outcome_of(session, "t-old")
        assert result.error_code is ErrorCode.ASSIGNMENT_REJECTED
        assert result.message.startswith("assignment.unknown_signer: ")
        assert node.state.task("t-old") is None

    run_scenario(tmp_path, pki, cdm, scenario, protocol_version=ProtocolVersion(1, 0))


def test_clock_skew_and_name_mismatch_are_logged(
    tmp_path: Path, pki: Pki, cdm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = FakeCoordinator(
        coordinator_time=lambda: datetime.now(UTC) - timedelta(minutes=2),
        node_name="hospital-z",
    )

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="ehds.node"):
        run_scenario(tmp_path, pki, cdm, scenario, coordinator=coordinator)
    messages = [record.getMessage() for record in caplog.records]
    assert any("clock differs" in m and "120" in m for m in messages), messages
    assert any("'hospital-z'" in m and "'hospital-a'" in m for m in messages), messages
