"""NodeLink against a real coordinator (grpc.aio, mutual TLS, SQLite state): the conversation
of node_link.proto, driven message by message by a fake node built from the generated stubs."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from coordinator_harness import (
    BLOB,
    VOCABULARY,
    Caller,
    FakeNode,
    Pki,
    StreamEnded,
    metric,
    node_status,
    profile,
    run,
    spec,
)

from ehds.analyses.base import canonical_json
from ehds.analyses.testing import blob
from ehds.coordinator.server import CoordinatorServer
from ehds.federation import limits
from ehds.federation.model import AnalysisRef, ErrorCode, NodeTaskState, StudyState
from ehds.federation.v1 import common_pb2, node_link_pb2
from ehds.federation.version import PROTOCOL_MINOR


def test_coordinator_welcomes_a_node_and_negotiates_the_protocol_version(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        old = FakeNode(server.address, pki.tls("node-b"), "node-b")
        newer = FakeNode(server.address, pki.tls("node-c"), "node-c")
        try:
            welcome = await node.open()
            assert welcome.node_name == "node-a"  # from the certificate
            assert (welcome.protocol_version.major, welcome.protocol_version.minor) == (1, 1)
            assert welcome.HasField("coordinator_time")
            assert welcome.heartbeat_interval.seconds == 10
            assert welcome.coordinator_software.name == "ehds-federation"

            # A node speaking the previous minor version: 1.0, and no 1.1 field.
            welcome = await old.open(minor=0)
            assert (welcome.protocol_version.major, welcome.protocol_version.minor) == (1, 0)
            assert not welcome.HasField("coordinator_time")

            welcome = await newer.open(minor=PROTOCOL_MINOR + 3)
            assert welcome.protocol_version.minor == PROTOCOL_MINOR
        finally:
            for fake in (node, old, newer):
                await fake.close()

        major_two = FakeNode(server.address, pki.tls("node-a"), "node-a")
        try:
            with pytest.raises(StreamEnded) as ended:
                await major_two.open(major=2)
            assert ended.value.code is grpc.StatusCode.FAILED_PRECONDITION
        finally:
            await major_two.close()

        not_hello = FakeNode(server.address, pki.tls("node-a"), "node-a")
        try:
            with pytest.raises(StreamEnded) as ended:
                await not_hello.open(
                    first=node_link_pb2.NodeMessage(heartbeat=node_link_pb2.Heartbeat(seq=0))
                )
            assert ended.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "Hello" in ended.value.details
        finally:
            await not_hello.close()

        operator = Caller(server.address, pki.tls("ops"))
        try:
            nodes = {info.name: info for info in await operator.list_nodes()}
            assert set(nodes) == {"node-a", "node-b", "node-c"}
            assert (
                nodes["node-b"].protocol_version.major,
                nodes["node-b"].protocol_version.minor,
            ) == (1, 0)
            assert nodes["node-a"].profile.vocabulary_version == VOCABULARY
            assert not nodes["node-a"].connected
            assert nodes["node-a"].HasField("last_seen")  # written when the stream ended
        finally:
            await operator.close()

    run(tmp_path, body)


def test_coordinator_dispatches_only_to_nodes_that_offer_the_analysis(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        capable = FakeNode(server.address, pki.tls("node-a"), "node-a")
        incapable = FakeNode(server.address, pki.tls("node-b"), "node-b")
        other_version = FakeNode(server.address, pki.tls("node-c"), "node-c")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await capable.open()
            await incapable.open(node_profile=profile(capabilities=[BLOB]))
            await other_version.open(
                node_profile=profile(capabilities=[AnalysisRef("test.sleep", "0.9.0")])
            )
            study = await alice.submit(spec(min_nodes=1))
            assert study.state is StudyState.DISPATCHED
            assignment = (await capable.expect("task_assignment")).task_assignment
            assert assignment.study_id == study.id
            assert assignment.analysis.name == "test.sleep"
            assert assignment.parameters == canonical_json({"seconds": 0.0})
            assert assignment.data_permit_id == "permit-1"
            assert assignment.min_cell_count == 10
            await incapable.quiet()
            await other_version.quiet(0.05)

            b = node_status(study, "node-b")
            assert b.state is NodeTaskState.NOT_DISPATCHED
            assert b.error_code is ErrorCode.ANALYSIS_UNKNOWN
            assert b.reason == 'the node\'s policy does not offer "test.sleep 1.0.0"'
            c = node_status(study, "node-c")
            assert c.error_code is ErrorCode.ANALYSIS_VERSION_UNSUPPORTED
            assert "0.9.0" in c.reason
            assert node_status(study, "node-a").vocabulary_version == VOCABULARY

            await capable.complete(assignment)
            final = await alice.wait_final(study.id)
            assert final.state is StudyState.COMPLETED
            document = await alice.results(study.id)
            assert document["contributors"] == ["node-a"]
            assert document["pooled"] == {"slept": {"node-a": 0}}
            assert document["min_cell_count"] == 10
            by_node = {entry["node"]: entry for entry in document["nodes"]}
            assert by_node["node-a"]["result"] == {"slept": 0}
            assert by_node["node-a"]["vocabulary_version"] == VOCABULARY
            assert by_node["node-b"]["state"] == "NOT_DISPATCHED"
            assert by_node["node-b"]["error_code"] == "ANALYSIS_UNKNOWN"
            assert by_node["node-b"]["result"] is None
        finally:
            for fake in (capable, incapable, other_version):
                await fake.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_names_the_requester_to_nodes_that_speak_1_2_only(tmp_path: Path) -> None:
    """Protocol 1.2: `requested_by` carries the submitting researcher, for the node's
    differencing guard; a 1.1 node does not get it (it would not use it)."""

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        current = FakeNode(server.address, pki.tls("node-a"), "node-a")
        older = FakeNode(server.address, pki.tls("node-b"), "node-b")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await current.open(minor=2)
            await older.open(minor=1)
            await alice.submit(spec(min_nodes=2))
            assert (await current.expect("task_assignment")).task_assignment.requested_by == "alice"
            assert (await older.expect("task_assignment")).task_assignment.requested_by == ""
        finally:
            for fake in (current, older):
                await fake.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_sends_unacknowledged_tasks_again_after_a_reconnect(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        alice = Caller(server.address, pki.tls("alice"))
        try:
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open()
            # node-b never connected: its task waits, NOT_DISPATCHED, until it does.
            late = FakeNode(server.address, pki.tls("node-b"), "node-b")
            await late.open()
            await late.close()
            study = await alice.submit(spec(min_nodes=2))
            assert node_status(study, "node-b").reason == "node not connected"
            first = (await node.expect("task_assignment")).task_assignment
            await node.close()  # lost before the ack

            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open()
            again = (await node.expect("task_assignment")).task_assignment
            assert again.task_id == first.task_id
            assert again.deadline == first.deadline  # absolute: a re-send does not extend it
            await node.heartbeat(0, [])
            await node.ack(again.task_id)
            await alice.wait_node_state(study.id, "node-a", NodeTaskState.RECEIVED)
            await node.close()

            # Acknowledged, then the node lost it (e.g. its disk): its first heartbeat says so.
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open()
            await node.quiet(0.2)
            await node.heartbeat(0, [])
            resent = (await node.expect("task_assignment")).task_assignment
            assert resent.task_id == first.task_id
            await node.heartbeat(1, [])  # only the first heartbeat of a stream reconciles
            await node.quiet(0.2)
            await node.complete(resent)

            late = FakeNode(server.address, pki.tls("node-b"), "node-b")
            await late.open()
            assignment = (await late.expect("task_assignment")).task_assignment
            await late.complete(assignment)
            final = await alice.wait_final(study.id)
            assert final.state is StudyState.COMPLETED
            assert (
                metric(
                    server.metrics.registry,
                    "ehds_coordinator_tasks_dispatched_total",
                    {"analysis": "test.sleep 1.0.0"},
                )
                == 2
            )  # re-sends are not dispatches
            await node.close()
            await late.close()
        finally:
            await alice.close()

    run(tmp_path, body)


def test_coordinator_stores_a_result_sent_twice_once(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec(targets=["node-a"], min_nodes=1))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            digest = await node.result(task.task_id, {"slept": 0})
            await node.result(task.task_id, {"slept": 0})  # receipt lost, say: sent again
            for _ in range(2):
                receipt = (await node.expect("result_receipt")).result_receipt
                assert (receipt.task_id, receipt.sha256) == (task.task_id, digest)
            await alice.wait_final(study.id)
            # After the study used it, a third copy changes nothing but is still acknowledged.
            await node.result(task.task_id, {"slept": 1})
            receipt = (await node.expect("result_receipt")).result_receipt
            assert receipt.sha256 == digest
            # Reconnected and still holding it: the first heartbeat gets the receipt again.
            await node.close()
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open()
            await node.heartbeat(0, [task.task_id])
            receipt = (await node.expect("result_receipt")).result_receipt
            assert receipt.sha256 == digest
            assert (
                metric(
                    server.metrics.registry,
                    "ehds_coordinator_tasks_completed_total",
                    {"analysis": "test.sleep 1.0.0"},
                )
                == 1
            )
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)
    with sqlite3.connect(tmp_path / "coordinator-state.db") as db:
        rows = db.execute(
            "SELECT t.node_name, length(r.payload) FROM results r JOIN tasks t "
            "ON t.task_id = r.task_id"
        ).fetchall()
    assert rows == [("node-a", len(canonical_json({"slept": 0})))]


def test_coordinator_receives_a_chunked_result_over_4_mib(tmp_path: Path) -> None:
    size = limits.MAX_MESSAGE_BYTES + 100_000

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec(BLOB, {"size_bytes": size}, targets=["node-a"]))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            digest = await node.result(task.task_id, {"blob": blob(size)})
            receipt = (await node.expect("result_receipt")).result_receipt
            assert receipt.sha256 == digest
            final = await alice.wait_final(study.id)
            assert final.state is StudyState.COMPLETED
            document = await alice.results(study.id)  # itself over 4 MiB: chunked too
            assert document["pooled"] == {"sizes": {"node-a": size}}
            assert document["nodes"][0]["result"]["blob"] == blob(size)
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_ends_the_stream_on_a_result_with_a_bad_digest(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec(targets=["node-a"]))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            await node.send(
                node_link_pb2.NodeMessage(
                    result_chunk=node_link_pb2.ResultChunk(
                        task_id=task.task_id,
                        chunk=common_pb2.PayloadChunk(
                            index=0,
                            count=1,
                            data=b'{"slept":0}',
                            sha256=hashlib.sha256(b"something else").digest(),
                            content_type="application/json",
                        ),
                    )
                )
            )
            ended = await node.expect_end()
            assert ended.code is grpc.StatusCode.DATA_LOSS
            unchanged = await alice.get(study.id)
            assert node_status(unchanged, "node-a").state is NodeTaskState.RECEIVED
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_records_refusals_and_failures_and_fails_below_min_nodes(
    tmp_path: Path,
) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        nodes = {n: FakeNode(server.address, pki.tls(n), n) for n in ("node-a", "node-b", "node-c")}
        alice = Caller(server.address, pki.tls("alice"))
        try:
            for node in nodes.values():
                await node.open()
            study = await alice.submit(spec(min_nodes=3))
            tasks = {
                n: (await node.expect("task_assignment")).task_assignment
                for n, node in nodes.items()
            }
            await nodes["node-a"].complete(tasks["node-a"])
            await nodes["node-b"].ack(tasks["node-b"].task_id)
            await nodes["node-b"].outcome(
                tasks["node-b"].task_id,
                ErrorCode.POLICY_REFUSED,
                "analysis not allowed by site policy",
            )
            await nodes["node-c"].ack(tasks["node-c"].task_id)
            await nodes["node-c"].progress(tasks["node-c"].task_id, 0.25)
            running = await alice.wait_node_state(study.id, "node-c", NodeTaskState.RUNNING)
            assert running.state is StudyState.RUNNING
            assert node_status(running, "node-c").fraction == pytest.approx(0.25)
            await nodes["node-c"].outcome(tasks["node-c"].task_id, ErrorCode.INTERNAL, "x" * 1000)
            final = await alice.wait_final(study.id)
            assert final.state is StudyState.FAILED
            assert final.state_reason == (
                "1 of 3 nodes contributed, min_nodes is 3: node-b refused (POLICY_REFUSED), "
                "node-c failed (INTERNAL)"
            )
            b = node_status(final, "node-b")
            assert (b.state, b.error_code) == (NodeTaskState.REFUSED, ErrorCode.POLICY_REFUSED)
            assert b.reason == "analysis not allowed by site policy"
            c = node_status(final, "node-c")
            assert (c.state, c.error_code) == (NodeTaskState.FAILED, ErrorCode.INTERNAL)
            assert len(c.reason) == limits.MAX_OUTCOME_MESSAGE_CHARS
            label = {"analysis": "test.sleep 1.0.0"}
            registry = server.metrics.registry
            assert metric(registry, "ehds_coordinator_tasks_refused_total", label) == 1
            assert metric(registry, "ehds_coordinator_tasks_failed_total", label) == 1
            assert metric(registry, "ehds_coordinator_tasks_completed_total", label) == 1
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await alice.results(study.id)
            assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        finally:
            for node in nodes.values():
                await node.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_times_out_tasks_at_the_deadline_and_cancels_them(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec(targets=["node-a", "node-b"], deadline_seconds=1))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            cancel = (await node.expect("cancel_task", timeout=3)).cancel_task
            assert cancel.task_id == task.task_id
            final = await alice.wait_final(study.id)
            assert final.state is StudyState.FAILED
            a = node_status(final, "node-a")
            assert (a.state, a.error_code) == (NodeTaskState.TIMED_OUT, ErrorCode.DEADLINE_EXCEEDED)
            b = node_status(final, "node-b")
            assert b.state is NodeTaskState.TIMED_OUT
            assert "did not connect" in b.reason
            assert final.state_reason.startswith("0 of 2 nodes contributed, min_nodes is 1")
            # A late result is acknowledged (the node may drop it) but not used.
            digest = await node.result(task.task_id, {"slept": 0})
            assert (await node.expect("result_receipt")).result_receipt.sha256 == digest
            assert node_status(await alice.get(study.id), "node-a").state is NodeTaskState.TIMED_OUT
        finally:
            await node.close()
            await alice.close()

    async def seed(server: CoordinatorServer, pki: Pki) -> None:
        # node-b must exist to be a target: it connected once before.
        once = FakeNode(server.address, pki.tls("node-b"), "node-b")
        await once.open()
        await once.close()
        await body(server, pki)

    run(tmp_path, seed)


def test_coordinator_cancel_reaches_running_and_disconnected_nodes(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        a = FakeNode(server.address, pki.tls("node-a"), "node-a")
        b = FakeNode(server.address, pki.tls("node-b"), "node-b")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await a.open()
            await b.open()
            study = await alice.submit(spec(min_nodes=2))
            task_a = (await a.expect("task_assignment")).task_assignment
            task_b = (await b.expect("task_assignment")).task_assignment
            await a.ack(task_a.task_id)
            await a.progress(task_a.task_id)
            await b.ack(task_b.task_id)
            await alice.wait_node_state(study.id, "node-b", NodeTaskState.RECEIVED)
            await b.close()  # away when the study is cancelled

            cancelled = await alice.cancel(study.id, "wrong cohort")
            assert cancelled.state is StudyState.CANCELLED
            assert cancelled.state_reason == "study cancelled by alice: wrong cohort"
            cancel = (await a.expect("cancel_task")).cancel_task
            assert cancel.task_id == task_a.task_id
            assert "wrong cohort" in cancel.reason
            assert {s.state for s in cancelled.nodes} == {NodeTaskState.CANCELLED}
            # Cancelling again is not an error.
            assert (await alice.cancel(study.id)).state is StudyState.CANCELLED

            b = FakeNode(server.address, pki.tls("node-b"), "node-b")
            await b.open()
            cancel = (await b.expect("cancel_task")).cancel_task
            assert cancel.task_id == task_b.task_id
            await b.close()
            # Only once: the next connect has nothing to cancel...
            b = FakeNode(server.address, pki.tls("node-b"), "node-b")
            await b.open()
            await b.quiet(0.2)
            # ...unless the node still lists the task as in flight.
            await b.heartbeat(0, [task_b.task_id])
            assert (await b.expect("cancel_task")).cancel_task.task_id == task_b.task_id
        finally:
            await a.close()
            await b.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_ignores_messages_about_other_nodes_tasks(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        a = FakeNode(server.address, pki.tls("node-a"), "node-a")
        b = FakeNode(server.address, pki.tls("node-b"), "node-b")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await a.open()
            await b.open()
            study = await alice.submit(spec(min_nodes=2))
            task_a = (await a.expect("task_assignment")).task_assignment
            await b.expect("task_assignment")
            # node-b speaks about node-a's task, and about a task that does not exist.
            await b.outcome(task_a.task_id, ErrorCode.POLICY_REFUSED)
            await b.result(task_a.task_id, {"slept": 9})
            await b.ack("no-such-task")
            await b.quiet(0.3)  # no receipt for a task that is not its own
            unchanged = await alice.get(study.id)
            assert node_status(unchanged, "node-a").state is NodeTaskState.DISPATCHED
        finally:
            await a.close()
            await b.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_replaces_the_stream_of_a_node_that_connects_again(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        first = FakeNode(server.address, pki.tls("node-a"), "node-a")
        second = FakeNode(server.address, pki.tls("node-a"), "node-a")
        try:
            await first.open()
            await second.open()
            ended = await first.expect_end()
            assert ended.code is grpc.StatusCode.ABORTED
            assert len(server.dispatcher.streams) == 1
            await second.hang_up()
            ended = await second.expect_end()
            assert ended.code is grpc.StatusCode.OK
        finally:
            await first.close()
            await second.close()
        await asyncio.sleep(0.1)
        assert metric(server.metrics.registry, "ehds_coordinator_connected_nodes") == 0
        assert metric(server.metrics.registry, "ehds_coordinator_stream_connects_total") == 2

    run(tmp_path, body)


def test_coordinator_closes_the_stream_of_a_silent_node(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        try:
            welcome = await node.open()
            assert welcome.heartbeat_interval.ToTimedelta().total_seconds() == pytest.approx(0.1)
            ended = await node.expect_end(timeout=3)
            assert ended.code is grpc.StatusCode.UNAVAILABLE
            assert "heartbeat" in ended.details
        finally:
            await node.close()

    run(tmp_path, body, heartbeat_interval_seconds=0.1, missed_heartbeats=1)


def test_coordinator_role_checks(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        as_researcher = FakeNode(server.address, pki.tls("alice"), "alice")
        node_as_researcher = Caller(server.address, pki.tls("node-a"))
        researcher = Caller(server.address, pki.tls("alice"))
        try:
            with pytest.raises(StreamEnded) as ended:
                await as_researcher.open()
            assert ended.value.code is grpc.StatusCode.PERMISSION_DENIED
            error = await _error(node_as_researcher.submit(spec()))
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "researcher" in (error.details() or "")
            error = await _error(researcher.list_nodes())
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            error = await _error(node_as_researcher.list_nodes())
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        finally:
            await as_researcher.close()
            await node_as_researcher.close()
            await researcher.close()

    run(tmp_path, body)


async def _error(awaitable: Awaitable[object]) -> grpc.aio.AioRpcError:
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def test_coordinator_metrics_move_with_a_study(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec(targets=["node-a"]))
            await node.complete((await node.expect("task_assignment")).task_assignment)
            await alice.wait_final(study.id)
            text = await asyncio.to_thread(_scrape, server.health_port)
        finally:
            await node.close()
            await alice.close()
        label = 'analysis="test.sleep 1.0.0"'
        assert "ehds_coordinator_connected_nodes 1.0" in text
        assert f"ehds_coordinator_tasks_dispatched_total{{{label}}} 1.0" in text
        assert f"ehds_coordinator_tasks_completed_total{{{label}}} 1.0" in text
        assert f"ehds_coordinator_task_latency_seconds_count{{{label}}} 1.0" in text
        assert "ehds_coordinator_studies_submitted_total 1.0" in text
        assert "ehds_coordinator_stream_connects_total 1.0" in text

    run(tmp_path, body)


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def test_coordinator_completes_a_study_whose_results_arrive_together(tmp_path: Path) -> None:
    """Results committed in one grouped transaction must each count towards completion."""

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        names = ("node-a", "node-b", "node-c")
        nodes = [FakeNode(server.address, pki.tls(name), name) for name in names]
        alice = Caller(server.address, pki.tls("alice"))
        try:
            for node in nodes:
                await node.open()
            for _ in range(3):
                study = await alice.submit(spec(min_nodes=3))
                tasks = [(await n.expect("task_assignment")).task_assignment for n in nodes]
                await asyncio.gather(*(n.ack(t.task_id) for n, t in zip(nodes, tasks, strict=True)))
                await asyncio.gather(
                    *(n.result(t.task_id, {"slept": 0}) for n, t in zip(nodes, tasks, strict=True))
                )
                for node in nodes:
                    await node.expect("result_receipt")
                final = await alice.wait_final(study.id, timeout=3)
                assert final.state is StudyState.COMPLETED
        finally:
            for node in nodes:
                await node.close()
            await alice.close()

    run(tmp_path, body)
