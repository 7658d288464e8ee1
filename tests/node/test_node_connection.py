"""The node's connection: reconnects, re-sends, restarts, keepalive, proxy, insecure mode.

Real sockets on 127.0.0.1 throughout: the fake coordinator is a grpc.aio server with mutual
TLS, the forwarder and the CONNECT proxy are asyncio TCP relays in the test's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from node_harness import (
    ConnectProxy,
    FakeCoordinator,
    Forwarder,
    LocalAnalyses,
    Pki,
    assignment,
    coordinator_server,
    eventually,
    relay,
    running_node,
    write_node_config,
    write_policy,
)

from ehds.federation.model import (
    ErrorCode,
    Heartbeat,
    Hello,
    ResultChunk,
    ResultReceipt,
    TaskAck,
    TaskOutcome,
)
from ehds.node.runner import MAX_ATTEMPTS

TIMEOUT_S = 20.0


def run(main: asyncio.Future[None] | object) -> None:
    assert asyncio.iscoroutine(main)
    asyncio.run(asyncio.wait_for(main, TIMEOUT_S))


def test_unreceipted_result_is_sent_again_after_a_reconnect(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=LocalAnalyses().registry()) as node:
                first = await coordinator.next_session()
                first.send(assignment("t-1", "person_count"))
                sent, _ = await first.result("t-1")
                first.abort(grpc.StatusCode.UNAVAILABLE, "coordinator going away")

                second = await coordinator.next_session()
                beat = await second.next(Heartbeat)
                assert beat.seq == 0
                assert beat.in_flight_task_ids == ("t-1",)
                again, _ = await second.result("t-1")
                assert again == sent
                second.send(ResultReceipt("t-1", again.sha256))
                await second.next(Heartbeat, lambda m: m.in_flight_task_ids == ())
                second.close()

                third = await coordinator.next_session()
                assert (await third.next(Heartbeat)).in_flight_task_ids == ()
                await asyncio.sleep(0.3)
                assert not [m for m in third.received if isinstance(m, ResultChunk)]
                reconnects = node.metrics.registry.get_sample_value(
                    "ehds_node_stream_reconnects_total"
                )
                assert reconnects == 2

    run(main())


def test_coordinator_restart_reconnects_and_delivers_what_ended_meanwhile(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main() -> None:
        server = coordinator_server(pki, coordinator)
        port = await server.__aenter__()
        try:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=LocalAnalyses().registry()) as node:
                first = await coordinator.next_session()
                first.send(
                    assignment(
                        "t-slow", "test.sleep", b'{"seconds":30}', deadline=timedelta(seconds=1)
                    )
                )
                await first.next(TaskAck)
                # The coordinator goes down; the task's deadline passes while it is away.
                await server.__aexit__(None, None, None)
                await eventually(lambda: not node.agent.connected)
                await eventually(lambda: node.state.unreported_outcomes() != [], timeout=5)
                await eventually(
                    lambda: (
                        (
                            node.metrics.registry.get_sample_value(
                                "ehds_node_stream_reconnects_total"
                            )
                            or 0
                        )
                        >= 2
                    )
                )
                server = coordinator_server(pki, coordinator, port=port)
                await server.__aenter__()
                session = await coordinator.next_session()
                beat = await session.next(Heartbeat)
                assert beat.in_flight_task_ids == ("t-slow",)
                outcome = await session.next(TaskOutcome)
                assert (outcome.task_id, outcome.error_code) == (
                    "t-slow",
                    ErrorCode.DEADLINE_EXCEEDED,
                )
                await session.next(Heartbeat, lambda m: m.in_flight_task_ids == ())
                assert node.agent.connected
        finally:
            await server.__aexit__(None, None, None)

    run(main())


def test_restart_runs_stored_unfinished_tasks_and_resends_results(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()
    before, after = LocalAnalyses(), LocalAnalyses()
    after.gate.gate.set()

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=before.registry()) as node:
                session = await coordinator.next_session()
                session.send(assignment("t-gate", "test.gate"))
                session.send(assignment("t-count", "person_count"))
                await asyncio.to_thread(before.gate.started.wait, 5)
                result, _ = await session.result("t-count")
            # An orderly stop sends nothing for the running task and keeps it queued.
            assert not [
                m for m in session.received if isinstance(m, TaskOutcome) and m.task_id == "t-gate"
            ]
            state_file = node.config.state
            with sqlite3.connect(state_file) as db:
                assert db.execute(
                    "SELECT status, attempts FROM tasks WHERE task_id='t-gate'"
                ).fetchone() == ("queued", 0)
                # What a SIGKILL in the middle of the task leaves behind.
                db.execute("UPDATE tasks SET status='running', attempts=1 WHERE task_id='t-gate'")

            async with running_node(config, registry=after.registry()) as node:
                session = await coordinator.next_session()
                again, _ = await session.result("t-count")
                assert again == result
                gate_result, _ = await session.result("t-gate")
                assert gate_result.data == b'{"opened":true}'
                assert after.gate.runs == 1
                stored = node.state.task("t-gate")
                assert stored is not None
                assert stored.attempts == 2

    run(main())


def test_a_task_that_keeps_killing_the_node_is_given_up(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()
    analyses = LocalAnalyses()

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=analyses.registry()) as node:
                session = await coordinator.next_session()
                session.send(assignment("t-poison", "test.gate"))
                await asyncio.to_thread(analyses.gate.started.wait, 5)
            with sqlite3.connect(node.config.state) as db:
                db.execute(
                    "UPDATE tasks SET status='running', attempts=? WHERE task_id='t-poison'",
                    (MAX_ATTEMPTS,),
                )
            analyses.gate.started.clear()
            async with running_node(config, registry=analyses.registry()):
                session = await coordinator.next_session()
                outcome = await session.next(TaskOutcome)
                assert (outcome.task_id, outcome.error_code) == ("t-poison", ErrorCode.INTERNAL)
                assert not analyses.gate.started.is_set()

    run(main())


def test_keepalive_notices_a_silent_forwarder_and_reconnects(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator(heartbeat_interval=timedelta(seconds=30))

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port, relay(Forwarder(port)) as fwd:
            config = write_node_config(
                tmp_path,
                pki=pki,
                cdm=cdm,
                address=f"127.0.0.1:{fwd.port}",
                extra={"keepalive": {"time_seconds": 0.5, "timeout_seconds": 0.5}},
            )
            async with running_node(config, registry=LocalAnalyses().registry()) as node:
                first = await coordinator.next_session()
                await first.next(Heartbeat)
                loop = asyncio.get_running_loop()
                frozen_at = loop.time()
                fwd.freeze()  # no FIN, no RST: the bytes just stop
                second = await coordinator.next_session(timeout=8)
                await second.next(Heartbeat)
                # keepalive time + timeout, plus a backoff delay and the TLS handshake
                assert loop.time() - frozen_at < 5.0
                assert fwd.connections == 2
                assert node.agent.connected

    run(main())


@pytest.mark.parametrize("source", ["node.yaml", "https_proxy"])
def test_proxy_tunnels_the_stream_through_http_connect(
    tmp_path: Path, pki: Pki, cdm: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy", "grpc_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port, relay(ConnectProxy()) as proxy:
            url = f"http://127.0.0.1:{proxy.port}"
            if source == "https_proxy":
                monkeypatch.setenv("https_proxy", url)
            extra = {"coordinator": {"proxy": url}} if source == "node.yaml" else {}
            config = write_node_config(
                tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}", extra=extra
            )
            async with running_node(config, registry=LocalAnalyses().registry()):
                session = await coordinator.next_session()
                await session.next(Heartbeat)
                assert session.peer == "node/hospital-a"  # mTLS end to end through the tunnel
                assert proxy.requests == [f"CONNECT 127.0.0.1:{port}"]

    run(main())


def test_insecure_mode_names_the_node_in_a_header(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator(insecure=True)

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=LocalAnalyses().registry(), insecure=True):
                session = await coordinator.next_session()
                await session.next(Heartbeat)
                assert session.peer == "node/hospital-a"

    run(main())


def test_refused_stream_is_retried_with_backoff(
    tmp_path: Path, pki: Pki, cdm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=LocalAnalyses().registry()) as node:
                for _ in range(3):
                    session = await coordinator.next_session()
                    await session.next(Hello)
                    session.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate revoked")
                await eventually(lambda: not node.agent.connected)

    with caplog.at_level(logging.ERROR, logger="ehds.node"):
        run(main())
    assert any("PERMISSION_DENIED" in r.getMessage() for r in caplog.records)


def test_policy_reload_announces_the_new_capabilities(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    policy = write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=LocalAnalyses().registry()) as node:
                first = await coordinator.next_session()
                await first.next(Heartbeat)
                policy.write_text("version: [not, valid", encoding="utf-8")
                assert not node.agent.reload_policy()
                assert node.agent.policy.version == "test-policy-1"
                write_policy(policy, (("person_count", "1.0.0"),), version="test-policy-2")
                assert node.agent.reload_policy()
                second = await coordinator.next_session()
                hello = await second.next(Hello)
                assert hello.profile.policy_version == "test-policy-2"
                assert [str(ref) for ref in hello.profile.capabilities] == ["person_count 1.0.0"]
                second.send(assignment("t-sleep", "test.sleep", b'{"seconds":0}'))
                outcome = await second.next(TaskOutcome)
                assert outcome.error_code is ErrorCode.POLICY_REFUSED

    run(main())
