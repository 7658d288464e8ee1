"""Test harness for the coordinator: certificates from `ehds.pki`, an HDAB key and data permits
from `ehds.permits`, a coordinator in the test's own event loop, and raw clients built from the
generated stubs (a fake node speaking NodeLink message by message, a researcher, an operator,
an auditor).

`run` registers two permits before the test body runs: ``permit-1`` held by alice and
``permit-2`` held by bob, both covering the three test nodes and the test analyses.

Every test body runs under `asyncio.run` (pytest-asyncio is not used), every wait is bounded by
`WAIT_S`, and every channel and server is closed on exit so that no socket outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio

from ehds.analyses.base import canonical_json
from ehds.coordinator.config import (
    CoordinatorConfig,
    PermitsConfig,
    RevocationConfig,
    StateConfig,
    StudyDefaults,
)
from ehds.coordinator.server import CoordinatorServer
from ehds.core.netconfig import Listen, TlsFiles
from ehds.core.signing import Signer
from ehds.federation import limits, serde
from ehds.federation.chunks import split_payload
from ehds.federation.model import (
    AnalysisRef,
    AuditRef,
    ErrorCode,
    NodeProfile,
    NodeTaskState,
    PermitInfo,
    SoftwareInfo,
    Study,
    StudySpec,
    TaskOutcome,
    TaskProgress,
    TaskStage,
)
from ehds.federation.transport import client_credentials
from ehds.federation.v1 import (
    admin_api_pb2,
    admin_api_pb2_grpc,
    audit_api_pb2,
    audit_api_pb2_grpc,
    common_pb2,
    node_link_pb2,
    node_link_pb2_grpc,
    permit_api_pb2,
    permit_api_pb2_grpc,
    study_api_pb2,
    study_api_pb2_grpc,
)
from ehds.permits import HdabKeyConfig, Permit, create_hdab_key, issue_permit
from ehds.pki.authority import init_authority
from ehds.pki.identity import Role
from ehds.pki.issue import issue_certificate

WAIT_S: Final = 5.0
SLEEP: Final = AnalysisRef("test.sleep", "1.0.0")
BLOB: Final = AnalysisRef("test.blob", "1.0.0")
VOCABULARY: Final = "v5.0 TEST"
HDAB: Final = "test-hdab"
NODES: Final = ("node-a", "node-b", "node-c")
TEST_ANALYSES: Final = ("test.sleep", "test.blob")


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def issued(self) -> Path:
        return self.root / "issued"

    def tls(self, name: str) -> TlsFiles:
        return TlsFiles(
            certificate=self.issued / f"{name}.pem",
            key=self.issued / f"{name}.key",
            ca=self.issued / "ca.pem",
        )

    def issue(self, role: Role, name: str) -> TlsFiles:
        issue_certificate(self.root, role, name)
        return self.tls(name)

    @property
    def hdab_folder(self) -> Path:
        return self.root / "hdab"

    def hdab_public_key(self, name: str = HDAB) -> Path:
        return self.hdab_folder / f"{name}.pub.pem"

    def permit(
        self,
        permit_id: str = "permit-1",
        *,
        holders: Sequence[str] = ("alice",),
        nodes: Sequence[str] = NODES,
        analyses: Sequence[str] = TEST_ANALYSES,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        issuer: str = HDAB,
        purpose: str = "testing the coordinator",
    ) -> bytes:
        """A permit document signed by the HDAB key ``issuer`` (created on first use)."""
        key = self.hdab_folder / f"{issuer}.key"
        if not key.exists():
            create_hdab_key(self.hdab_folder, issuer)
        now = datetime.now(UTC)
        permit = Permit(
            id=permit_id,
            issuer=issuer,
            holders=tuple(holders),
            purpose=purpose,
            nodes=tuple(nodes),
            analyses=tuple(analyses),
            valid_from=valid_from or now - timedelta(days=1),
            valid_until=valid_until or now + timedelta(days=365),
            issued_at=now - timedelta(days=1),
        )
        return issue_permit(Signer.from_file(key), permit)


def make_pki(tmp_path: Path, nodes: Sequence[str] = NODES) -> Pki:
    pki = Pki(tmp_path / "pki")
    init_authority(pki.root, "test-federation")
    pki.issue(Role.COORDINATOR, "coordinator")
    for name in nodes:
        pki.issue(Role.NODE, name)
    pki.issue(Role.RESEARCHER, "alice")
    pki.issue(Role.RESEARCHER, "bob")
    pki.issue(Role.OPERATOR, "ops")
    pki.issue(Role.AUDITOR, "audit")
    create_hdab_key(pki.hdab_folder, HDAB)
    return pki


def make_config(tmp_path: Path, pki: Pki, **overrides: Any) -> CoordinatorConfig:
    values: dict[str, Any] = {
        "listen": Listen(host="127.0.0.1", port=0),
        "tls": pki.tls("coordinator"),
        "revocation": RevocationConfig(crl=pki.root / "crl.pem", check_interval_seconds=0.05),
        "state": StateConfig(url=f"sqlite:///{tmp_path / 'coordinator-state.db'}"),
        "health": Listen(host="127.0.0.1", port=0),
        "studies": StudyDefaults(deadline_seconds=60),
        "permits": PermitsConfig(
            hdab_keys=(HdabKeyConfig(name=HDAB, public_key=pki.hdab_public_key()),)
        ),
    }
    values.update(overrides)
    return CoordinatorConfig(**values)


def profile(
    capabilities: Sequence[AnalysisRef] = (SLEEP, BLOB), vocabulary: str = VOCABULARY
) -> NodeProfile:
    return NodeProfile(
        software=SoftwareInfo("fake-node", "0.0.1"),
        cdm_version="5.4",
        vocabulary_version=vocabulary,
        engine="duckdb",
        capabilities=tuple(capabilities),
        policy_version="1",
    )


def spec(
    analysis: AnalysisRef = SLEEP,
    parameters: dict[str, Any] | None = None,
    *,
    min_nodes: int = 1,
    deadline_seconds: int = 30,
    targets: Sequence[str] = (),
    title: str = "a test study",
    permit: str = "permit-1",
) -> StudySpec:
    return StudySpec(
        title=title,
        analysis=analysis,
        parameters=canonical_json({"seconds": 0} if parameters is None else parameters),
        min_nodes=min_nodes,
        deadline_seconds=deadline_seconds,
        target_nodes=tuple(targets),
        data_permit_id=permit,
    )


class StreamEnded(Exception):  # noqa: N818 (a test signal, not an error)
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeNode:
    """A node made of the generated stubs: sends exactly what the test says, nothing else."""

    def __init__(self, address: str, tls: TlsFiles, name: str) -> None:
        self.name = name
        self._channel = grpc.aio.secure_channel(address, client_credentials(tls))
        self._stub = node_link_pb2_grpc.NodeLinkStub(self._channel)
        self._call: Any = None
        # Reading is done by a task of its own: cancelling a pending read (a timeout) would
        # cancel the whole RPC in grpc.aio.
        self._inbox: asyncio.Queue[node_link_pb2.CoordinatorMessage | StreamEnded] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def open(
        self,
        *,
        major: int = 1,
        minor: int = 1,
        node_profile: NodeProfile | None = None,
        first: node_link_pb2.NodeMessage | None = None,
    ) -> node_link_pb2.Welcome:
        """Open the stream and send Hello (or ``first``); returns the Welcome."""
        self._call = self._stub.Connect()
        self._reader = asyncio.create_task(self._read(self._call))
        hello = node_link_pb2.NodeMessage(
            hello=node_link_pb2.Hello(
                protocol_version=common_pb2.ProtocolVersion(major=major, minor=minor),
                profile=serde.encode_profile(node_profile or profile()),
            )
        )
        await self.send(first or hello)
        return (await self.expect("welcome")).welcome

    async def send(self, message: node_link_pb2.NodeMessage) -> None:
        await asyncio.wait_for(self._call.write(message), WAIT_S)

    async def _read(self, call: Any) -> None:
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    self._inbox.put_nowait(StreamEnded(await call.code(), await call.details()))
                    return
                self._inbox.put_nowait(message)
        except grpc.aio.AioRpcError as exc:
            self._inbox.put_nowait(StreamEnded(exc.code(), exc.details() or ""))

    async def recv(self, timeout: float = WAIT_S) -> node_link_pb2.CoordinatorMessage:
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, StreamEnded):
            self._inbox.put_nowait(item)  # ended for good
            raise item
        return item

    async def expect(self, kind: str, timeout: float = WAIT_S) -> node_link_pb2.CoordinatorMessage:
        message = await self.recv(timeout)
        assert message.WhichOneof("body") == kind, f"expected {kind}, got {message}"
        return message

    async def expect_end(self, timeout: float = WAIT_S) -> StreamEnded:
        """The status the coordinator ends the stream with (messages before it are skipped)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            try:
                await self.recv(max(0.01, until - loop.time()))
            except StreamEnded as ended:
                return ended

    async def quiet(self, seconds: float = 0.3) -> None:
        """Assert that nothing arrives for ``seconds``."""
        try:
            message = await self.recv(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message}")

    async def heartbeat(
        self, seq: int = 0, in_flight: Sequence[str] = (), audit_head: AuditRef | None = None
    ) -> None:
        heartbeat = node_link_pb2.Heartbeat(seq=seq, in_flight_task_ids=list(in_flight))
        if audit_head is not None:
            heartbeat.audit_head.CopyFrom(serde.encode_audit_ref(audit_head))
        await self.send(node_link_pb2.NodeMessage(heartbeat=heartbeat))

    async def ack(self, task_id: str) -> None:
        await self.send(node_link_pb2.NodeMessage(task_ack=node_link_pb2.TaskAck(task_id=task_id)))

    async def progress(
        self, task_id: str, fraction: float = 0.5, stage: TaskStage = TaskStage.COMPUTING
    ) -> None:
        await self.send(serde.encode_node_message(TaskProgress(task_id, fraction, stage)))

    async def outcome(
        self,
        task_id: str,
        code: ErrorCode,
        message: str = "fixed text",
        audit_head: AuditRef | None = None,
    ) -> None:
        await self.send(serde.encode_node_message(TaskOutcome(task_id, code, message, audit_head)))

    async def result(self, task_id: str, value: dict[str, Any]) -> bytes:
        """Send ``value`` as the task's result (chunked); returns its SHA-256."""
        payload = canonical_json(value)
        await self.send_payload(task_id, payload)
        return hashlib.sha256(payload).digest()

    async def send_payload(self, task_id: str, payload: bytes) -> None:
        for chunk in split_payload(payload, "application/json"):
            await self.send(
                node_link_pb2.NodeMessage(
                    result_chunk=node_link_pb2.ResultChunk(
                        task_id=task_id, chunk=serde.encode_chunk(chunk)
                    )
                )
            )

    async def complete(self, assignment: node_link_pb2.TaskAssignment) -> None:
        """Ack, run (instantly) and report a test.sleep task; waits for the receipt."""
        await self.ack(assignment.task_id)
        digest = await self.result(assignment.task_id, {"slept": 0})
        receipt = (await self.expect("result_receipt")).result_receipt
        assert receipt.task_id == assignment.task_id
        assert receipt.sha256 == digest

    async def hang_up(self) -> None:
        """Half-close (the coordinator ends the stream with OK)."""
        if self._call is not None:
            await self._call.done_writing()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._channel.close()


class Caller:
    """A researcher's, operator's or auditor's StudyApi, AdminApi, PermitApi and AuditApi
    stubs (``channel``: another channel than mutual TLS with ``tls``, e.g. a token's)."""

    def __init__(
        self, address: str, tls: TlsFiles | None, channel: grpc.aio.Channel | None = None
    ) -> None:
        if channel is None:
            assert tls is not None
            channel = grpc.aio.secure_channel(address, client_credentials(tls))
        self._channel = channel
        self.studies = study_api_pb2_grpc.StudyApiStub(self._channel)
        self.admin = admin_api_pb2_grpc.AdminApiStub(self._channel)
        self.permits = permit_api_pb2_grpc.PermitApiStub(self._channel)
        self.audit = audit_api_pb2_grpc.AuditApiStub(self._channel)

    async def register_permit(self, document: bytes) -> PermitInfo:
        response = await self.permits.Register(
            permit_api_pb2.RegisterPermitRequest(document=document), timeout=WAIT_S
        )
        return serde.decode_permit(response.permit)

    async def list_permits(self) -> list[PermitInfo]:
        response = await self.permits.List(permit_api_pb2.ListPermitsRequest(), timeout=WAIT_S)
        return [serde.decode_permit(pb) for pb in response.permits]

    async def get_permit(self, permit_id: str) -> PermitInfo:
        response = await self.permits.Get(
            permit_api_pb2.GetPermitRequest(permit_id=permit_id), timeout=WAIT_S
        )
        return serde.decode_permit(response.permit)

    async def export_audit(self, after_seq: int = 0) -> list[bytes]:
        lines: list[bytes] = []
        async for batch in self.audit.Export(
            audit_api_pb2.ExportAuditRequest(after_seq=after_seq), timeout=WAIT_S
        ):
            lines.extend(batch.entries)
        return lines

    async def submit(self, study_spec: StudySpec, request_id: str = "") -> Study:
        response = await self.studies.Submit(
            study_api_pb2.SubmitStudyRequest(
                spec=serde.encode_study_spec(study_spec), request_id=request_id
            ),
            timeout=WAIT_S,
        )
        return serde.decode_study(response.study)

    async def get(self, study_id: str) -> Study:
        response = await self.studies.Get(
            study_api_pb2.GetStudyRequest(study_id=study_id), timeout=WAIT_S
        )
        return serde.decode_study(response.study)

    async def cancel(self, study_id: str, reason: str = "") -> Study:
        response = await self.studies.Cancel(
            study_api_pb2.CancelStudyRequest(study_id=study_id, reason=reason), timeout=WAIT_S
        )
        return serde.decode_study(response.study)

    async def wait_final(self, study_id: str, timeout: float = WAIT_S) -> Study:
        """Follow Watch until the study is final."""
        last: Study | None = None
        call = self.studies.Watch(study_api_pb2.WatchStudyRequest(study_id=study_id))
        try:
            async with asyncio.timeout(timeout):
                async for event in call:
                    last = serde.decode_study(event.study)
        finally:
            call.cancel()
        assert last is not None
        assert last.state.is_final, last
        return last

    async def wait_node_state(
        self, study_id: str, node: str, state: NodeTaskState, timeout: float = WAIT_S
    ) -> Study:
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            study = await self.get(study_id)
            if node_status(study, node).state is state:
                return study
            if loop.time() > until:
                raise AssertionError(f"{node} never reached {state.name}: {study}")
            await asyncio.sleep(0.02)

    async def results(self, study_id: str) -> dict[str, Any]:
        parts = []
        async for chunk in self.studies.GetResults(
            study_api_pb2.GetStudyResultsRequest(study_id=study_id), timeout=WAIT_S
        ):
            parts.append(chunk.chunk)
        assert all(len(part.data) <= limits.MAX_CHUNK_BYTES for part in parts)
        data = b"".join(part.data for part in parts)
        assert parts[-1].sha256 == hashlib.sha256(data).digest()
        document = json.loads(data)
        assert isinstance(document, dict)
        return document

    async def list_nodes(self) -> list[admin_api_pb2.NodeInfo]:
        response = await self.admin.ListNodes(admin_api_pb2.ListNodesRequest(), timeout=WAIT_S)
        return list(response.nodes)

    async def revoke(self, name: str, reason: str = "test") -> admin_api_pb2.NodeInfo:
        response = await self.admin.RevokeNode(
            admin_api_pb2.RevokeNodeRequest(name=name, reason=reason), timeout=WAIT_S
        )
        return response.node

    async def close(self) -> None:
        await self._channel.close()


def node_status(study: Study, node: str) -> Any:
    return next(status for status in study.nodes if status.node_name == node)


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    """The error an RPC ends with (fails the test if it succeeds)."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def metric(registry: Any, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


Body = Callable[[CoordinatorServer, Pki], Awaitable[None]]


async def register_default_permits(server: CoordinatorServer, pki: Pki) -> None:
    """``permit-1`` held by alice, ``permit-2`` held by bob (registered by the operator)."""
    ops = Caller(server.address, pki.tls("ops"))
    try:
        await ops.register_permit(pki.permit("permit-1", holders=("alice",)))
        await ops.register_permit(pki.permit("permit-2", holders=("bob",)))
    finally:
        await ops.close()


def run(tmp_path: Path, body: Body, **config: Any) -> None:
    """``body`` against a fresh coordinator (``config``: overrides of `make_config`), with the
    default permits registered."""
    pki = make_pki(tmp_path)

    async def main() -> None:
        async with CoordinatorServer(make_config(tmp_path, pki, **config)) as server:
            await register_default_permits(server, pki)
            await asyncio.wait_for(body(server, pki), 20)

    asyncio.run(main())
