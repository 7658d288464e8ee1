"""The coordinator's audit chain: every RPC and every change of state leaves a signed entry,
the chain verifies with `ehds.audit.verify_lines` (and a tampered or truncated one does not),
auditors read it through AuditApi, and the nodes' chain heads become anchors in it."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_harness import (
    Caller,
    FakeNode,
    Pki,
    make_config,
    make_pki,
    register_default_permits,
    rpc_error,
    run,
    spec,
)

from ehds.audit import (
    AuditEntry,
    AuditRef,
    anchors_for,
    payload_digest,
    verify_lines,
)
from ehds.coordinator.server import CoordinatorServer
from ehds.coordinator.service.access import INSECURE_IDENTITY_HEADER
from ehds.core.signing import key_id, load_public_key
from ehds.federation import model, serde
from ehds.federation.model import ErrorCode, StudyState
from ehds.federation.v1 import study_api_pb2, study_api_pb2_grpc

CHAIN = "coordinator coordinator"


def _keys(pki: Pki) -> dict[str, Any]:
    public = load_public_key(pki.tls("coordinator").certificate)
    return {key_id(public): public}


def _entries(lines: list[bytes]) -> list[AuditEntry]:
    return [AuditEntry.parse(line) for line in lines]


def _rpc(entries: list[AuditEntry], method: str, actor: str | None = None) -> list[AuditEntry]:
    return [
        e for e in entries if e.action == f"rpc {method}" and (actor is None or e.actor == actor)
    ]


def _db_lines(tmp_path: Path) -> list[bytes]:
    with sqlite3.connect(tmp_path / "coordinator-state.db") as db:
        return [row[0].encode() for row in db.execute("SELECT entry FROM audit_log ORDER BY seq")]


def test_coordinator_audits_every_rpc_and_change_in_a_chain_that_verifies(
    tmp_path: Path,
) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        bob = Caller(server.address, pki.tls("bob"))
        auditor = Caller(server.address, pki.tls("audit"))
        try:
            await node.open(minor=3)
            submitted = spec(targets=["node-a"])
            study = await alice.submit(submitted, request_id="audited-1")
            task = (await node.expect("task_assignment")).task_assignment
            await node.complete(task)
            assert (await alice.wait_final(study.id)).state is StudyState.COMPLETED
            document = await alice.results(study.id)
            error = await rpc_error(bob.get(study.id))
            assert error.code() is grpc.StatusCode.NOT_FOUND
            error = await rpc_error(alice.export_audit())
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED

            lines = await auditor.export_audit()
        finally:
            await node.close()
            await alice.close()
            await bob.close()
            await auditor.close()

        report = verify_lines(lines, keys=_keys(pki))
        assert report.ok, report.problem
        assert report.chain == CHAIN
        assert report.entries == len(lines)
        assert report.signatures_checked == len(lines)
        entries = _entries(lines)
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))

        # Every RPC, with who called, the outcome and a digest of the request.
        request = study_api_pb2.SubmitStudyRequest(
            spec=serde.encode_study_spec(submitted), request_id="audited-1"
        )
        (submit,) = _rpc(entries, "StudyApi/Submit", "researcher alice")
        assert submit.detail == {"status": "OK"}
        assert submit.digest == payload_digest(request.SerializeToString(deterministic=True))
        (denied,) = _rpc(entries, "StudyApi/Get", "researcher bob")
        assert denied.detail == {"status": "NOT_FOUND"}
        assert [e.detail for e in _rpc(entries, "AuditApi/Export", "researcher alice")] == [
            {"phase": "start"},
            {"phase": "end", "status": "PERMISSION_DENIED"},
        ]
        assert len(_rpc(entries, "PermitApi/Register", "operator ops")) == 2
        assert [e.detail for e in _rpc(entries, "StudyApi/Watch", "researcher alice")] == [
            {"phase": "start"},
            {"phase": "end", "status": "OK"},
        ]
        assert [e.detail for e in _rpc(entries, "StudyApi/GetResults")][-1]["status"] == "OK"
        assert _rpc(entries, "NodeLink/Connect", "node node-a")[0].detail == {"phase": "start"}
        assert _rpc(entries, "AuditApi/Export", "auditor audit")[0].detail == {"phase": "start"}

        # Every change of state, with digests of what came in and went out.
        by_action = {e.action: e for e in entries if not e.action.startswith("rpc ")}
        assert by_action["permit.registered"].actor == "operator ops"
        submitted_entry = by_action["study.submitted"]
        assert submitted_entry.subject == f"study {study.id}"
        assert submitted_entry.actor == "researcher alice"
        assert submitted_entry.digest == payload_digest(b'{"seconds":0.0}')
        assert submitted_entry.detail["permit"] == "permit-1"
        assert by_action["task.dispatched"].subject == f"task {task.task_id}"
        assert by_action["task.received"].actor == "node node-a"
        released = by_action["task.released"]
        assert released.digest == "sha256:" + hashlib.sha256(b'{"slept":0}').hexdigest()
        completed = by_action["study.completed"]
        assert completed.subject == f"study {study.id}"
        assert completed.digest.startswith("sha256:")
        assert document["study_id"] == study.id
        assert "node.connected" in by_action

    run(tmp_path, body)


def test_coordinator_audit_chain_shows_a_tampered_or_truncated_log(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, pki)
    refs: list[model.AuditRef] = []

    async def main() -> None:
        async with CoordinatorServer(config) as server:
            await register_default_permits(server, pki)
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            alice = Caller(server.address, pki.tls("alice"))
            try:
                await node.open(minor=3)
                for _ in range(2):
                    await alice.submit(spec(targets=["node-a"]))
                    assignment = (await node.expect("task_assignment")).task_assignment
                    ref = serde.decode_audit_ref(assignment, "coordinator_audit_ref")
                    assert ref is not None
                    refs.append(ref)
            finally:
                await node.close()
                await alice.close()

    asyncio.run(main())
    keys = _keys(pki)
    lines = _db_lines(tmp_path)
    assert verify_lines(lines, keys=keys).ok
    # The anchors a node records (the assignments' refs) match the chain.
    anchors = [AuditRef(r.chain, r.seq, r.hash) for r in refs]
    report = verify_lines(lines, keys=keys, anchors=anchors)
    assert report.ok
    assert report.anchors_checked == 2

    # Someone with database access edits an entry: the entry no longer matches its hash.
    submitted = next(e for e in _entries(lines) if e.action == "study.submitted")
    with sqlite3.connect(tmp_path / "coordinator-state.db") as db:
        db.execute(
            "UPDATE audit_log SET entry = replace(entry, 'researcher alice', 'researcher bobby') "
            "WHERE seq = ?",
            (submitted.seq,),
        )
    tampered = verify_lines(_db_lines(tmp_path), keys=keys)
    assert not tampered.ok
    assert tampered.bad_seq == submitted.seq
    assert "modified" in (tampered.problem or "")

    # ... or drops the tail from the second assignment on: only an anchor can tell.
    truncated = [line for line in lines if AuditEntry.parse(line).seq < anchors[1].seq]
    assert verify_lines(truncated, keys=keys).ok
    report = verify_lines(truncated, keys=keys, anchors=anchors)
    assert not report.ok


def test_coordinator_records_node_audit_heads_as_anchors(tmp_path: Path) -> None:
    def head(seq: int, chain: str = "node node-a") -> model.AuditRef:
        return model.AuditRef(chain, seq, hashlib.sha256(f"{chain} {seq}".encode()).hexdigest())

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        auditor = Caller(server.address, pki.tls("audit"))
        try:
            await node.open(minor=3)
            await node.heartbeat(1, audit_head=head(3))
            await node.heartbeat(2, audit_head=head(3))  # unchanged: not recorded again
            await node.heartbeat(3, audit_head=head(5, "node node-b"))  # not its chain
            study = await alice.submit(spec(targets=["node-a"]))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            await node.outcome(task.task_id, ErrorCode.POLICY_REFUSED, "policy.x: refused", head(4))
            assert (await alice.wait_final(study.id)).state is StudyState.FAILED
            await node.close()
            # A new stream: the head recorded last is known, the same one is not re-recorded.
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open(minor=3)
            await node.heartbeat(1, audit_head=head(4))
            await node.heartbeat(2, audit_head=head(6))
            await asyncio.sleep(0.2)
            lines = await auditor.export_audit()
        finally:
            await node.close()
            await alice.close()
            await auditor.close()
        recorded = [e for e in _entries(lines) if e.action == "node.audit_head"]
        assert [e.subject for e in recorded] == ["node node-a"] * 3
        assert all(e.actor == "node node-a" for e in recorded)
        expected = [AuditRef(h.chain, h.seq, h.hash) for h in (head(3), head(4), head(6))]
        assert anchors_for(lines, "node node-a") == expected
        assert anchors_for(lines, "node node-b") == []
        # The head of an outcome is recorded before the outcome itself.
        actions = [e.action for e in _entries(lines) if not e.action.startswith("rpc ")]
        at = actions.index("task.refused")
        assert actions[at - 1] == "node.audit_head"

    run(tmp_path, body)


def test_coordinator_audits_unauthenticated_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)

    async def main() -> None:
        async with CoordinatorServer(make_config(tmp_path, pki), insecure=True) as server:
            channel = grpc.aio.insecure_channel(server.address)
            stub = study_api_pb2_grpc.StudyApiStub(channel)
            try:
                request = study_api_pb2.GetStudyRequest(study_id="x")
                error = await rpc_error(stub.Get(request, timeout=5))
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED
                error = await rpc_error(
                    stub.Get(
                        request, metadata=((INSECURE_IDENTITY_HEADER, "node/node-a"),), timeout=5
                    )
                )
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            finally:
                await channel.close()

    asyncio.run(main())
    capsys.readouterr()
    entries = _entries(_db_lines(tmp_path))
    gets = [(e.actor, e.detail["status"]) for e in _rpc(entries, "StudyApi/Get")]
    assert gets == [("unauthenticated", "UNAUTHENTICATED"), ("node node-a", "PERMISSION_DENIED")]


def test_coordinator_audits_the_end_of_a_stream_the_caller_cancelled(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        auditor = Caller(server.address, pki.tls("audit"))
        try:
            await node.open(minor=3)
            study = await alice.submit(spec(targets=["node-a"]))
            call = alice.studies.Watch(study_api_pb2.WatchStudyRequest(study_id=study.id))
            await call.read()  # the first snapshot: the stream is open
            call.cancel()
            for _ in range(50):
                lines = await auditor.export_audit()
                watches = _rpc(_entries(lines), "StudyApi/Watch", "researcher alice")
                if len(watches) == 2:
                    break
                await asyncio.sleep(0.05)
            assert [e.detail for e in watches] == [
                {"phase": "start"},
                {"phase": "end", "status": "CANCELLED"},
            ]
        finally:
            await node.close()
            await alice.close()
            await auditor.close()

    run(tmp_path, body)
