"""Data permits at the coordinator: the register (PermitApi), studies only under a permit that
allows them (each refusal with its reason code), who sees which studies, and the roles each
API admits."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from coordinator_harness import (
    BLOB,
    SLEEP,
    Caller,
    FakeNode,
    Pki,
    rpc_error,
    run,
    spec,
)

from ehds.coordinator.server import CoordinatorServer
from ehds.federation.model import StudyState
from ehds.federation.v1 import study_api_pb2
from ehds.pki.identity import Role

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def _connect_once(server: CoordinatorServer, pki: Pki, *names: str) -> None:
    for name in names:
        node = FakeNode(server.address, pki.tls(name), name)
        try:
            await node.open()
        finally:
            await node.close()


def test_coordinator_registers_permits_checked_against_trusted_hdab_keys(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        alice = Caller(server.address, pki.tls("alice"))
        bob = Caller(server.address, pki.tls("bob"))
        ops = Caller(server.address, pki.tls("ops"))
        auditor = Caller(server.address, pki.tls("audit"))
        node = Caller(server.address, pki.tls("node-a"))
        try:
            document = pki.permit("FI-2026-042", holders=("alice", "bob"), nodes=("node-a",))
            info = await alice.register_permit(document)
            assert (info.id, info.issuer, info.holders) == (
                "FI-2026-042",
                "test-hdab",
                ("alice", "bob"),
            )
            assert info.registered_by == "researcher alice"
            assert info.document == document
            # The same permit again, even re-formatted: a no-op.
            assert await bob.register_permit(document) == info
            compact = json.dumps(json.loads(document), separators=(",", ":")).encode()
            assert (await ops.register_permit(compact)).registered_by == "researcher alice"
            # Another document under a registered id is refused.
            other = pki.permit("FI-2026-042", holders=("alice",), nodes=("node-b",))
            error = await rpc_error(alice.register_permit(other))
            assert error.code() is grpc.StatusCode.ALREADY_EXISTS

            refusals = [
                (alice, pki.permit("P-bob", holders=("bob",)), DENIED, "permit.not_holder"),
                (ops, b"", INVALID, "permit.missing"),
                (ops, b"{not json", INVALID, "permit.malformed"),
                (ops, pki.permit("P-rogue", issuer="rogue-hdab"), INVALID, "permit.untrusted"),
                (ops, document.replace(b"node-a", b"node-z"), INVALID, "permit.bad_signature"),
                (
                    ops,
                    pki.permit("P-later", valid_from=datetime.now(UTC) + timedelta(days=1)),
                    INVALID,
                    "permit.not_yet_valid",
                ),
                (
                    ops,
                    pki.permit(
                        "P-old",
                        valid_from=datetime.now(UTC) - timedelta(days=9),
                        valid_until=datetime.now(UTC) - timedelta(days=1),
                    ),
                    INVALID,
                    "permit.expired",
                ),
            ]
            for caller, bad, code, reason in refusals:
                error = await rpc_error(caller.register_permit(bad))
                assert error.code() is code, reason
                assert (error.details() or "").startswith(reason), error.details()
            for caller in (auditor, node):
                error = await rpc_error(caller.register_permit(document))
                assert error.code() is DENIED

            # Researchers see the permits they hold; operators and auditors all of them.
            assert [p.id for p in await alice.list_permits()] == ["FI-2026-042", "permit-1"]
            assert [p.id for p in await bob.list_permits()] == ["FI-2026-042", "permit-2"]
            everything = ["FI-2026-042", "permit-1", "permit-2"]
            assert [p.id for p in await ops.list_permits()] == everything
            assert [p.id for p in await auditor.list_permits()] == everything
            assert (await bob.get_permit("FI-2026-042")).nodes == ("node-a",)
            for missing in ("permit-1", "nope", "../etc"):
                error = await rpc_error(bob.get_permit(missing))
                assert error.code() is grpc.StatusCode.NOT_FOUND
            assert (await auditor.get_permit("permit-1")).holders == ("alice",)
            assert (await rpc_error(node.list_permits())).code() is DENIED
        finally:
            for caller in (alice, bob, ops, auditor, node):
                await caller.close()

    run(tmp_path, body)


def test_coordinator_accepts_a_study_only_under_a_permit_that_allows_it(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a", "node-b", "node-c")
        alice = Caller(server.address, pki.tls("alice"))
        ops = Caller(server.address, pki.tls("ops"))
        try:
            await ops.register_permit(
                pki.permit("narrow", holders=("alice",), nodes=("node-a", "node-b"))
            )
            await ops.register_permit(
                pki.permit("blob-only", holders=("alice",), analyses=("test.blob",))
            )
            soon = datetime.now(UTC) + timedelta(seconds=1)
            await ops.register_permit(pki.permit("short", holders=("alice",), valid_until=soon))
            cases = [
                (spec(permit="unknown"), INVALID, "spec.data_permit_id: permit.missing: "),
                (spec(permit="permit-2"), DENIED, "spec.data_permit_id: permit.not_holder: "),
                (
                    spec(permit="blob-only"),
                    INVALID,
                    "spec.data_permit_id: permit.analysis_not_covered: ",
                ),
                (
                    spec(permit="narrow", targets=["node-a", "node-c"]),
                    INVALID,
                    "spec.data_permit_id: permit.node_not_covered: ",
                ),
            ]
            for bad, code, message in cases:
                error = await rpc_error(alice.submit(bad))
                assert error.code() is code, message
                assert (error.details() or "").startswith(message), error.details()
            # No targets: the permit's nodes (that have connected), not every node.
            study = await alice.submit(spec(permit="narrow"))
            assert [s.node_name for s in study.nodes] == ["node-a", "node-b"]
            blob = await alice.submit(spec(BLOB, {"size_bytes": 10}, permit="blob-only"))
            assert len(blob.nodes) == 3
            assert (await alice.submit(spec(permit="short"))).state is StudyState.SUBMITTED
            await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
            error = await rpc_error(alice.submit(spec(permit="short")))
            assert (error.details() or "").startswith("spec.data_permit_id: permit.expired: ")
            listed = await alice.studies.List(study_api_pb2.ListStudiesRequest(), timeout=5)
            assert len(listed.studies) == 3  # nothing refused was stored
        finally:
            await alice.close()
            await ops.close()

    run(tmp_path, body)


def test_coordinator_shows_studies_to_their_permit_holders_only(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        bob = Caller(server.address, pki.tls("bob"))
        # A third researcher, co-holder of alice's "shared" permit.
        carol = Caller(server.address, pki.issue(Role.RESEARCHER, "carol"))
        ops = Caller(server.address, pki.tls("ops"))
        auditor = Caller(server.address, pki.tls("audit"))
        node = Caller(server.address, pki.tls("node-a"))
        try:
            await ops.register_permit(pki.permit("shared", holders=("alice", "carol")))
            mine = await alice.submit(spec(permit="permit-1"))
            shared = await alice.submit(spec(permit="shared"))
            theirs = await bob.submit(spec(permit="permit-2"))

            # bob holds neither of alice's permits: every call says NOT_FOUND, as for nothing.
            missing = study_api_pb2.GetStudyRequest(study_id="no-such-study")
            expected = (await rpc_error(bob.studies.Get(missing, timeout=5))).details()
            for call in (
                bob.get(mine.id),
                bob.cancel(mine.id),
                bob.results(shared.id),
                bob.wait_final(shared.id),
            ):
                error = await rpc_error(call)
                assert error.code() is grpc.StatusCode.NOT_FOUND
                assert (error.details() or "").replace(mine.id, "no-such-study").replace(
                    shared.id, "no-such-study"
                ) == expected
            listed = await bob.studies.List(study_api_pb2.ListStudiesRequest(), timeout=5)
            assert [s.id for s in listed.studies] == [theirs.id]

            # carol co-holds "shared": she sees it (and may cancel it), not alice's other one.
            assert (await carol.get(shared.id)).submitted_by == "alice"
            listed = await carol.studies.List(study_api_pb2.ListStudiesRequest(), timeout=5)
            assert [s.id for s in listed.studies] == [shared.id]
            assert (await rpc_error(carol.get(mine.id))).code() is grpc.StatusCode.NOT_FOUND
            assert (await carol.cancel(shared.id)).state is StudyState.CANCELLED

            # Operators and auditors read every study; they submit, cancel and fetch nothing.
            for reader in (ops, auditor):
                listed = await reader.studies.List(study_api_pb2.ListStudiesRequest(), timeout=5)
                assert {s.id for s in listed.studies} == {mine.id, shared.id, theirs.id}
                assert (await reader.get(theirs.id)).id == theirs.id
                assert (await reader.wait_final(shared.id)).state is StudyState.CANCELLED
                for call in (
                    reader.submit(spec()),
                    reader.cancel(mine.id),
                    reader.results(mine.id),
                ):
                    assert (await rpc_error(call)).code() is DENIED
            # A node's certificate opens nothing in StudyApi.
            for call in (node.get(mine.id), node.submit(spec()), node.cancel(mine.id)):
                error = await rpc_error(call)
                assert error.code() is DENIED
                assert "node node-a may not call StudyApi" in (error.details() or "")
            # Nor in AdminApi or AuditApi; researchers neither.
            assert (await rpc_error(node.list_nodes())).code() is DENIED
            assert (await rpc_error(alice.list_nodes())).code() is DENIED
            assert (await rpc_error(ops.export_audit())).code() is DENIED
        finally:
            for caller in (alice, bob, carol, ops, auditor, node):
                await caller.close()

    run(tmp_path, body)


def test_coordinator_keeps_showing_a_researcher_the_studies_they_submitted(
    tmp_path: Path,
) -> None:
    """A study submitted before permits existed (a database from an older version) stays
    visible to its submitter."""

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        await _connect_once(server, pki, "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            study = await alice.submit(spec(SLEEP))
            await server.database.call(lambda: _forget_permit(server, "permit-1"))
            assert (await alice.get(study.id)).id == study.id
        finally:
            await alice.close()

    run(tmp_path, body)


def _forget_permit(server: CoordinatorServer, permit_id: str) -> None:
    with server.database.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE studies SET data_permit_id = 'legacy' WHERE data_permit_id = ?", (permit_id,)
        )
