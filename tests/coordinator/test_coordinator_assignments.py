"""Signed task assignments (protocol 1.3): the Welcome carries the coordinator's certificate,
every TaskAssignment carries the permit, a nonce, an expiry and the coordinator's audit entry,
signed with the coordinator's key over `assignment_signing.signing_bytes`, and every re-send
is byte-identical to the first sending."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path

from coordinator_harness import (
    Caller,
    FakeNode,
    Pki,
    run,
    spec,
)

from ehds.audit import AuditEntry
from ehds.coordinator.server import CoordinatorServer
from ehds.core.signing import load_public_key, verify_signature
from ehds.federation import serde
from ehds.federation.assignment_signing import signing_bytes
from ehds.federation.model import TaskAssignment
from ehds.federation.v1 import node_link_pb2


def _decode(message: node_link_pb2.CoordinatorMessage) -> TaskAssignment:
    decoded = serde.decode_coordinator_message(message)
    assert isinstance(decoded, TaskAssignment)
    return decoded


def test_coordinator_signs_assignments_with_the_key_of_its_welcome_certificate(
    tmp_path: Path,
) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        old = FakeNode(server.address, pki.tls("node-b"), "node-b")
        alice = Caller(server.address, pki.tls("alice"))
        auditor = Caller(server.address, pki.tls("audit"))
        try:
            welcome = await node.open(minor=3)
            certificate = pki.tls("coordinator").certificate.read_bytes()
            assert welcome.coordinator_certificate == certificate
            # Sent whatever the version (a node before 1.3 ignores it).
            assert (await old.open(minor=2)).coordinator_certificate == certificate
            public_key = load_public_key(welcome.coordinator_certificate)

            study = await alice.submit(spec(targets=["node-a"]))
            again = await alice.submit(spec(targets=["node-a"]))
            first = _decode(await node.expect("task_assignment"))
            second = _decode(await node.expect("task_assignment"))
            for assignment, submitted in ((first, study), (second, again)):
                assert assignment.study_id == submitted.id
                assert verify_signature(public_key, signing_bytes(assignment), assignment.signature)
                assert assignment.permit == (await alice.get_permit("permit-1")).document
                assert assignment.data_permit_id == "permit-1"
                assert assignment.requested_by == "alice"
                assert re.fullmatch(r"[0-9a-f]{32}", assignment.nonce)
                assert assignment.expires_at == assignment.deadline
                assert submitted.created_at is not None
                assert assignment.deadline == submitted.created_at + timedelta(seconds=30)
            assert first.nonce != second.nonce

            # Any change breaks the signature.
            for changed in (
                dataclasses.replace(first, parameters=b'{"seconds":9.0}'),
                dataclasses.replace(first, requested_by="bob"),
                dataclasses.replace(first, nonce=second.nonce),
                dataclasses.replace(first, permit=first.permit + b" "),
                dataclasses.replace(first, expires_at=second.expires_at),
            ):
                assert not verify_signature(public_key, signing_bytes(changed), first.signature)

            # The audit reference names the coordinator's entry that dispatched the task.
            ref = first.coordinator_audit_ref
            assert ref is not None
            assert ref.chain == "coordinator coordinator"
            entries = {e.seq: e for e in map(AuditEntry.parse, await auditor.export_audit())}
            dispatched = entries[ref.seq]
            assert (dispatched.action, dispatched.hash) == ("task.dispatched", ref.hash)
            assert dispatched.subject == f"task {first.task_id}"
        finally:
            await node.close()
            await old.close()
            await alice.close()
            await auditor.close()

    run(tmp_path, body)


def test_coordinator_resends_an_assignment_byte_for_byte(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        alice = Caller(server.address, pki.tls("alice"))
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        try:
            await node.open(minor=3)
            await alice.submit(spec(targets=["node-a"]))
            sent = (await node.expect("task_assignment")).SerializeToString()

            # Never acknowledged: sent again when the node reconnects.
            await node.close()
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open(minor=3)
            resent = await node.expect("task_assignment")
            assert resent.SerializeToString() == sent

            # Acknowledged, then lost by the node: sent again after its first heartbeat.
            await node.ack(resent.task_assignment.task_id)
            await node.quiet(0.2)
            await node.close()
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            await node.open(minor=3)
            await node.heartbeat(0, in_flight=[])
            assert (await node.expect("task_assignment")).SerializeToString() == sent
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)
