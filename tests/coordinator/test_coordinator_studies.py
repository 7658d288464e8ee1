"""StudyApi and AdminApi against a real coordinator: validation, idempotent submission,
visibility, paging, Watch, revocation (by an operator and by the CRL), restart on the same
state file, and the --insecure development mode."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest
from coordinator_harness import (
    SLEEP,
    Caller,
    FakeNode,
    Pki,
    StreamEnded,
    make_config,
    make_pki,
    metric,
    node_status,
    register_default_permits,
    rpc_error,
    run,
    spec,
)

from ehds.coordinator.server import CoordinatorServer
from ehds.coordinator.service.access import INSECURE_IDENTITY_HEADER
from ehds.federation import limits, serde
from ehds.federation.model import AnalysisRef, ErrorCode, NodeTaskState, StudyState
from ehds.federation.transport import INSECURE_WARNING
from ehds.federation.v1 import study_api_pb2, study_api_pb2_grpc
from ehds.pki.revocation import revoke_certificate


async def _connect_once(server: CoordinatorServer, pki: Pki, *names: str) -> None:
    """Make ``names`` known to the coordinator (a node must have connected to be a target)."""
    for name in names:
        node = FakeNode(server.address, pki.tls(name), name)
        try:
            await node.open()
        finally:
            await node.close()


def test_coordinator_refuses_invalid_specs_naming_the_field(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a", "node-b")
        alice = Caller(server.address, pki.tls("alice"))
        cases = [
            (spec(AnalysisRef("nope", "1.0.0")), "spec.analysis: unknown analysis 'nope'"),
            (spec(AnalysisRef("test.sleep", "9.0.0")), "spec.analysis: analysis 'test.sleep'"),
            (spec(parameters={"seconds": "long"}), "spec.parameters.seconds: "),
            (spec(parameters={"seconds": 1, "extra": 2}), "spec.parameters.extra: unknown"),
            (spec(min_nodes=0), "spec.min_nodes: must be at least 1"),
            (spec(min_nodes=3), "spec.min_nodes: 3 is more than the 2 target nodes"),
            (spec(targets=["node-a", "node-c"]), "spec.target_nodes: never connected"),
            (spec(targets=["node-a", "node-z"]), "spec.data_permit_id: permit.node_not_covered"),
            (spec(targets=["node-a", "node-a"]), "spec.target_nodes: 'node-a' is listed twice"),
            (spec(deadline_seconds=10**8), "spec.deadline_seconds: must be between 1 and"),
            (spec(permit=""), "spec.data_permit_id: permit.missing: "),
        ]
        try:
            for bad, message in cases:
                error = await rpc_error(alice.submit(bad))
                assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, message
                assert (error.details() or "").startswith(message), error.details()
            huge = dataclasses.replace(
                spec(), parameters=b'{"seconds": 1' + b" " * limits.MAX_PARAMETERS_BYTES + b"}"
            )
            error = await rpc_error(alice.submit(huge))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert (error.details() or "").startswith("spec.parameters: ")
            # Nothing was stored or dispatched.
            listed = await alice.studies.List(study_api_pb2.ListStudiesRequest(), timeout=5)
            assert list(listed.studies) == []
            assert metric(server.metrics.registry, "ehds_coordinator_studies_submitted_total") == 0
        finally:
            await alice.close()

    run(tmp_path, body)


def test_coordinator_submit_is_idempotent_per_request_id(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        bob = Caller(server.address, pki.tls("bob"))
        try:
            first = await alice.submit(spec(), request_id="req-1")
            again = await alice.submit(spec(), request_id="req-1")
            assert again.id == first.id
            # Parameters are compared canonically: the same study, written differently.
            rewritten = dataclasses.replace(spec(), parameters=b'{ "seconds" : 0.0 }')
            assert (await alice.submit(rewritten, request_id="req-1")).id == first.id
            error = await rpc_error(alice.submit(spec(title="another"), request_id="req-1"))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert (error.details() or "").startswith("request_id: already used for study")
            # request_ids are per researcher.
            assert (await bob.submit(spec(permit="permit-2"), request_id="req-1")).id != first.id
            assert metric(server.metrics.registry, "ehds_coordinator_studies_submitted_total") == 2
        finally:
            await alice.close()
            await bob.close()

    run(tmp_path, body)


def test_coordinator_shows_researchers_their_own_studies_newest_first(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        bob = Caller(server.address, pki.tls("bob"))
        try:
            mine = [(await alice.submit(spec(title=f"study {i}"))).id for i in range(5)]
            theirs = await bob.submit(spec(permit="permit-2"))
            for call in (bob.get(mine[0]), bob.cancel(mine[0]), alice.get(theirs.id)):
                assert (await rpc_error(call)).code() is grpc.StatusCode.NOT_FOUND
            assert (await rpc_error(alice.get("no-such-study"))).code() is grpc.StatusCode.NOT_FOUND

            seen: list[str] = []
            token = ""
            while True:
                page = await alice.studies.List(
                    study_api_pb2.ListStudiesRequest(page_size=2, page_token=token), timeout=5
                )
                assert len(page.studies) <= 2
                assert all(study.spec.parameters == b"" for study in page.studies)
                seen += [study.id for study in page.studies]
                token = page.next_page_token
                if not token:
                    break
            assert seen == list(reversed(mine))
            error = await rpc_error(
                alice.studies.List(study_api_pb2.ListStudiesRequest(page_token="bogus"), timeout=5)
            )
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            # Get carries the parameters, as submitted (canonical).
            assert (await alice.get(mine[0])).spec.parameters == b'{"seconds":0.0}'
        finally:
            await alice.close()
            await bob.close()

    run(tmp_path, body)


def test_coordinator_watch_sends_a_snapshot_per_change_until_final(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec())
            events: list[StudyState] = []

            async def watch() -> None:
                call = alice.studies.Watch(study_api_pb2.WatchStudyRequest(study_id=study.id))
                async for event in call:
                    events.append(serde.decode_study(event.study).state)

            watcher = asyncio.create_task(watch())
            task = (await node.expect("task_assignment")).task_assignment
            await asyncio.sleep(0.1)
            await node.ack(task.task_id)
            await node.progress(task.task_id, 0.5)
            await asyncio.sleep(0.1)
            await node.complete(task)
            await asyncio.wait_for(watcher, 5)
            assert events[0] is StudyState.DISPATCHED
            assert StudyState.RUNNING in events
            assert events[-1] is StudyState.COMPLETED
            error = await rpc_error(
                _drain(alice.studies, "missing"),
            )
            assert error.code() is grpc.StatusCode.NOT_FOUND
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)


async def _drain(stub: study_api_pb2_grpc.StudyApiAsyncStub, study_id: str) -> None:
    async for _ in stub.Watch(study_api_pb2.WatchStudyRequest(study_id=study_id), timeout=5):
        pass


def test_coordinator_revoke_node_ends_its_stream_and_refuses_it(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        a = FakeNode(server.address, pki.tls("node-a"), "node-a")
        b = FakeNode(server.address, pki.tls("node-b"), "node-b")
        alice = Caller(server.address, pki.tls("alice"))
        ops = Caller(server.address, pki.tls("ops"))
        try:
            await a.open()
            await b.open()
            study = await alice.submit(spec(min_nodes=1))
            task_a = (await a.expect("task_assignment")).task_assignment
            await a.ack(task_a.task_id)
            await b.expect("task_assignment")

            info = await ops.revoke("node-b", "key leaked")
            assert info.revoked
            assert not info.connected
            ended = await b.expect_end()
            assert ended.code is grpc.StatusCode.PERMISSION_DENIED
            revoked = node_status(await alice.get(study.id), "node-b")
            assert (revoked.state, revoked.error_code) == (
                NodeTaskState.FAILED,
                ErrorCode.CANCELLED,
            )
            assert revoked.reason == "node revoked: key leaked"
            assert (await ops.revoke("node-b")).revoked  # twice is not an error
            error = await rpc_error(ops.revoke("node-z"))
            assert error.code() is grpc.StatusCode.NOT_FOUND

            await b.close()
            b = FakeNode(server.address, pki.tls("node-b"), "node-b")
            with pytest.raises(StreamEnded) as refused:
                await b.open()
            assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED

            nodes = {n.name: n for n in await ops.list_nodes()}
            assert nodes["node-b"].revoked
            assert nodes["node-a"].connected
            assert not nodes["node-b"].connected
            # No longer a target: a study for "every node" leaves it out.
            later = await alice.submit(spec())
            assert [s.node_name for s in later.nodes] == ["node-a"]
            assert (await a.expect("task_assignment")).task_assignment.study_id == later.id
            error = await rpc_error(alice.submit(spec(targets=["node-b"])))
            assert (error.details() or "").startswith("spec.target_nodes: revoked: node-b")

            await a.complete(task_a)
            assert (await alice.wait_final(study.id)).state is StudyState.COMPLETED
        finally:
            for closing in (a, b):
                await closing.close()
            await alice.close()
            await ops.close()

    run(tmp_path, body)


def test_coordinator_refuses_a_certificate_revoked_by_the_crl(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            await asyncio.to_thread(revoke_certificate, pki.root, "node-a")
            # The CRL is re-read within check_interval_seconds; the live stream is closed.
            ended = await node.expect_end(timeout=3)
            assert ended.code is grpc.StatusCode.PERMISSION_DENIED
            assert ended.details == "certificate revoked"
            await node.close()
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            with pytest.raises(StreamEnded) as refused:
                await node.open()
            assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
            # Not a target for new studies until it connects with a valid certificate.
            await _connect_once(server, pki, "node-b")
            study = await alice.submit(spec())
            assert [status.node_name for status in study.nodes] == ["node-b"]
            error = await rpc_error(alice.submit(spec(targets=["node-a"])))
            assert (error.details() or "").startswith("spec.target_nodes: revoked: node-a")

            await asyncio.to_thread(revoke_certificate, pki.root, "alice")
            await asyncio.sleep(0.3)
            error = await rpc_error(alice.get("anything"))
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_restarted_on_the_same_state_resumes_a_study(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, pki)

    async def main() -> None:
        async with CoordinatorServer(config) as server:
            await register_default_permits(server, pki)
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            alice = Caller(server.address, pki.tls("alice"))
            await node.open()
            await _connect_once(server, pki, "node-b")
            study = await alice.submit(spec(targets=["node-a"]), request_id="r1")
            short = await alice.submit(spec(targets=["node-b"], deadline_seconds=2))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            await alice.wait_node_state(study.id, "node-a", NodeTaskState.RECEIVED)
            await alice.close()
            # The stream ends with the coordinator (the node would reconnect).
            ended = await asyncio.wait_for(asyncio.gather(node.expect_end(), server.stop()), 10)
            assert ended[0].code is grpc.StatusCode.UNAVAILABLE
            await node.close()

        async with CoordinatorServer(config) as server:
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            alice = Caller(server.address, pki.tls("alice"))
            try:
                assert (await alice.get(study.id)).state is StudyState.RUNNING
                await node.open()
                await node.heartbeat(0, [])  # it lost the task (say): sent again
                resent = (await node.expect("task_assignment")).task_assignment
                assert resent.task_id == task.task_id
                await node.complete(resent)
                assert (await alice.wait_final(study.id)).state is StudyState.COMPLETED
                # request_id survives the restart too.
                assert (await alice.submit(spec(targets=["node-a"]), request_id="r1")).id == (
                    study.id
                )
                # The deadline timer of the other study was re-armed at start.
                timed_out = await alice.wait_final(short.id, timeout=5)
                assert node_status(timed_out, "node-b").state is NodeTaskState.TIMED_OUT
            finally:
                await node.close()
                await alice.close()

    asyncio.run(main())


def test_coordinator_insecure_mode_takes_identity_from_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, pki)

    async def main() -> None:
        async with CoordinatorServer(config, insecure=True) as server:
            channel = grpc.aio.insecure_channel(server.address)
            stub = study_api_pb2_grpc.StudyApiStub(channel)
            try:
                request = study_api_pb2.GetStudyRequest(study_id="x")
                error = await rpc_error(stub.Get(request, timeout=5))
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED
                error = await rpc_error(
                    stub.Get(
                        request,
                        metadata=((INSECURE_IDENTITY_HEADER, "researcher/alice"),),
                        timeout=5,
                    )
                )
                assert error.code() is grpc.StatusCode.NOT_FOUND  # authenticated as alice
                error = await rpc_error(
                    stub.Get(
                        request, metadata=((INSECURE_IDENTITY_HEADER, "node/node-a"),), timeout=5
                    )
                )
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            finally:
                await channel.close()

    asyncio.run(main())
    assert INSECURE_WARNING in capsys.readouterr().err


def test_coordinator_serves_the_analysis_registry_it_is_given(tmp_path: Path) -> None:
    """A study of an analysis missing from the coordinator's registry is refused up front."""

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            assert server.analyses.get(SLEEP).name == "test.sleep"
            error = await rpc_error(alice.submit(spec(AnalysisRef("test.nothing", "1.0.0"))))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await alice.close()

    run(tmp_path, body)


def test_coordinator_stops_promptly_with_streams_and_watches_open(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def main() -> None:
        server = CoordinatorServer(make_config(tmp_path, pki))
        await server.start()
        await register_default_permits(server, pki)
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open()
            study = await alice.submit(spec())
            watch = asyncio.create_task(alice.wait_final(study.id, timeout=10))
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await server.stop()
            assert loop.time() - started < 1.5
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await watch
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            assert (await node.expect_end()).code is grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop()  # twice is fine
            await node.close()
            await alice.close()

    asyncio.run(main())
