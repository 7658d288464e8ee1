"""Test harness for the node agent: a fake coordinator on real grpc.aio with mutual TLS, a TCP
forwarder that can go silent, an HTTP CONNECT proxy, and analyses that block, fail or record.

Governance as a real coordinator does it (protocol 1.3): the fake coordinator signs every
assignment with the key of its certificate (``central``, issued by the test PKI) and sends
that certificate in Welcome; test policies pin a test HDAB key, and assignments carry a permit
that HDAB signed for ``alice`` on both test nodes. `assignment` builds an unsigned assignment;
`Session.send` signs it unless it already carries a signature (a test that forges one sets
its own).

Everything runs in the test's own event loop (`asyncio.run` in a sync test), bounded by
timeouts, and is closed on exit so that no socket or thread outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import yaml
from cryptography.hazmat.primitives import serialization

from ehds.analyses.base import (
    Analysis,
    AnalysisParameters,
    ComputeContext,
    DisclosureRefusedError,
    JsonObject,
)
from ehds.analyses.person_count import PersonCount
from ehds.analyses.registry import Registry
from ehds.analyses.testing import BlobAnalysis, SleepAnalysis
from ehds.audit import AuditEntry
from ehds.core.netconfig import Keepalive, TlsFiles
from ehds.core.signing import Signer
from ehds.federation import transport
from ehds.federation.assignment_signing import signing_bytes
from ehds.federation.chunks import AssembledPayload, PayloadAssembler
from ehds.federation.model import (
    AnalysisRef,
    AuditRef,
    CoordinatorMessage,
    Heartbeat,
    Hello,
    NodeMessage,
    ProtocolVersion,
    ResultChunk,
    SoftwareInfo,
    TaskAssignment,
    Welcome,
)
from ehds.federation.serde import decode_node_message, encode_coordinator_message
from ehds.federation.v1 import node_link_pb2, node_link_pb2_grpc
from ehds.federation.version import PROTOCOL_VERSION
from ehds.node.agent import NodeAgent
from ehds.node.config import NodeConfig, load_node_config
from ehds.node.metrics import NodeMetrics
from ehds.node.policy import SitePolicy, load_site_policy
from ehds.node.state import NodeState
from ehds.permits import Permit, issue_permit
from ehds.pki.authority import generate_key
from ehds.pki.pem import private_key_pem

WAIT_S = 10.0
M = TypeVar("M")

DEFAULT_ANALYSES = (
    ("person_count", "1.0.0"),
    ("test.sleep", "1.0.0"),
    ("test.blob", "1.0.0"),
    ("test.gate", "1.0.0"),
    ("test.fail", "1.0.0"),
    ("test.slow_query", "1.0.0"),
)

HDAB_NAME = "test-hdab"
PERMIT_ID = "permit-7"
RESEARCHER = "alice"
PERMIT_NODES = ("hospital-a", "hospital-b")
PERMIT_ANALYSES = (
    *sorted({name for name, _ in DEFAULT_ANALYSES}),
    "test.forbidden",
    "test.refuse",
    "test.unknown",
    "ghost",
)
COORDINATOR_REF = AuditRef("coordinator central", 41, "c0" * 32)
"""The coordinator audit entry the fake coordinator's assignments point to."""


# --------------------------------------------------------------------------- governance


@dataclass(frozen=True)
class Hdab:
    """A health data access body for tests: an in-memory P-256 key that signs permits."""

    name: str
    signer: Signer
    public_pem: bytes

    @classmethod
    def create(cls, name: str) -> Hdab:
        signer = Signer.from_pem(private_key_pem(generate_key()))
        pem = signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(name, signer, pem)

    def write_public_key(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.pub.pem"
        path.write_bytes(self.public_pem)
        return path

    def permit(
        self,
        *,
        permit_id: str = PERMIT_ID,
        holders: Sequence[str] = (RESEARCHER,),
        nodes: Sequence[str] = PERMIT_NODES,
        analyses: Sequence[str] = PERMIT_ANALYSES,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        issuer: str | None = None,
    ) -> bytes:
        """A permit document signed by this HDAB (valid from an hour ago for a day)."""
        now = datetime.now(UTC)
        return issue_permit(
            self.signer,
            Permit(
                id=permit_id,
                issuer=issuer or self.name,
                holders=tuple(holders),
                purpose="node tests",
                nodes=tuple(nodes),
                analyses=tuple(analyses),
                valid_from=valid_from or now - timedelta(hours=1),
                valid_until=valid_until or now + timedelta(days=1),
                issued_at=now - timedelta(hours=1),
            ),
        )


TEST_HDAB = Hdab.create(HDAB_NAME)
"""The HDAB every test policy pins (a test-only key, generated per test process)."""

OTHER_HDAB = Hdab.create("other-hdab")
"""An HDAB no test policy trusts."""


@functools.cache
def default_permit() -> bytes:
    """TEST_HDAB's permit for alice on both test nodes and every test analysis."""
    return TEST_HDAB.permit()


# --------------------------------------------------------------------------- analyses


class NoParameters(AnalysisParameters):
    pass


class GateAnalysis(Analysis[NoParameters]):
    """Blocks until ``gate`` opens (or the task is cancelled); counts its runs."""

    name = "test.gate"
    version = "1.0.0"
    parameters = NoParameters

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.runs = 0

    def compute(self, params: NoParameters, ctx: ComputeContext) -> JsonObject:
        self.runs += 1
        self.started.set()
        while not self.gate.wait(0.02):
            ctx.check_cancelled()
        return {"opened": True}

    def aggregate(self, params: NoParameters, node_results: Mapping[str, JsonObject]) -> JsonObject:
        return {}


class FailingAnalysis(Analysis[NoParameters]):
    """Fails with an exception whose text stands for a row value that must never leave."""

    name = "test.fail"
    version = "1.0.0"
    parameters = NoParameters
    SECRET = "patient 4711 born 1950-02-03"

    def __init__(self) -> None:
        self.runs = 0

    def compute(self, params: NoParameters, ctx: ComputeContext) -> JsonObject:
        self.runs += 1
        raise RuntimeError(self.SECRET)

    def aggregate(self, params: NoParameters, node_results: Mapping[str, JsonObject]) -> JsonObject:
        return {}


class RecordingAnalysis(Analysis[NoParameters]):
    """Allowed by no test policy: proves that a refused analysis never runs."""

    name = "test.forbidden"
    version = "1.0.0"
    parameters = NoParameters

    def __init__(self) -> None:
        self.runs = 0

    def compute(self, params: NoParameters, ctx: ComputeContext) -> JsonObject:
        self.runs += 1
        return {"ran": True}

    def aggregate(self, params: NoParameters, node_results: Mapping[str, JsonObject]) -> JsonObject:
        return {}


class RefusingAnalysis(Analysis[NoParameters]):
    """Its disclosure control always refuses (a rule, its threshold, never a value)."""

    name = "test.refuse"
    version = "1.0.0"
    parameters = NoParameters

    def compute(self, params: NoParameters, ctx: ComputeContext) -> JsonObject:
        raise DisclosureRefusedError("small_population", "the population is below the threshold")

    def aggregate(self, params: NoParameters, node_results: Mapping[str, JsonObject]) -> JsonObject:
        return {}


class SlowQueryAnalysis(Analysis[NoParameters]):
    """One long SQL statement in the CDM's engine: only an interrupt stops it early."""

    name = "test.slow_query"
    version = "1.0.0"
    parameters = NoParameters

    def __init__(self) -> None:
        self.query_started = threading.Event()

    def compute(self, params: NoParameters, ctx: ComputeContext) -> JsonObject:
        import sqlalchemy as sa

        with ctx.cdm.connect(read_only=True) as conn:
            self.query_started.set()
            value = conn.execute(
                sa.text("SELECT count(*) FROM range(100000000000) AS t(i) WHERE i % 7 = 3")
            ).scalar_one()
        return {"value": int(value)}

    def aggregate(self, params: NoParameters, node_results: Mapping[str, JsonObject]) -> JsonObject:
        return {}


@dataclass
class LocalAnalyses:
    gate: GateAnalysis = field(default_factory=GateAnalysis)
    fail: FailingAnalysis = field(default_factory=FailingAnalysis)
    forbidden: RecordingAnalysis = field(default_factory=RecordingAnalysis)
    slow_query: SlowQueryAnalysis = field(default_factory=SlowQueryAnalysis)
    refuse: RefusingAnalysis = field(default_factory=RefusingAnalysis)

    def registry(self) -> Registry:
        return Registry(
            [
                PersonCount(),
                SleepAnalysis(),
                BlobAnalysis(),
                self.gate,
                self.fail,
                self.forbidden,
                self.slow_query,
                self.refuse,
            ]
        )


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Pki:
    root: Path

    def tls(self, name: str) -> TlsFiles:
        issued = self.root / "issued"
        return TlsFiles(
            certificate=issued / f"{name}.pem", key=issued / f"{name}.key", ca=issued / "ca.pem"
        )


def write_policy(
    path: Path,
    analyses: tuple[tuple[str, str], ...] = DEFAULT_ANALYSES,
    *,
    version: str = "test-policy-1",
    min_cell_count: int = 5,
    manual: Sequence[str] = (),
    researchers: Sequence[str] = (),
    retention_days: int | None = None,
    hdabs: Sequence[Hdab] = (TEST_HDAB,),
) -> Path:
    """A policy allowing ``analyses``, released automatically except those named in
    ``manual``, pinning ``hdabs`` (their public keys written to ``hdab/`` beside it)."""
    keys = [
        {
            "name": hdab.name,
            "public_key": f"hdab/{hdab.write_public_key(path.parent / 'hdab').name}",
        }
        for hdab in hdabs
    ]
    document: dict[str, Any] = {
        "version": version,
        "min_cell_count": min_cell_count,
        "hdab_keys": keys,
        "analyses": [
            {
                "name": name,
                "version": analysis_version,
                "release": "manual" if name in manual else "auto",
            }
            for name, analysis_version in analyses
        ],
    }
    if researchers:
        document["researchers"] = list(researchers)
    if retention_days is not None:
        document["retention_days"] = retention_days
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def write_node_config(
    folder: Path,
    *,
    pki: Pki,
    cdm: Path,
    address: str,
    node: str = "hospital-a",
    policy: str = "policy.yaml",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    tls = pki.tls(node)
    document: dict[str, Any] = {
        "coordinator": {"address": address},
        "tls": {"certificate": str(tls.certificate), "key": str(tls.key), "ca": str(tls.ca)},
        "cdm": {"url": str(cdm)},
        "policy": policy,
        "state": "state/node.db",
        "health": {"host": "127.0.0.1", "port": 0},
        "keepalive": {"time_seconds": 1.0, "timeout_seconds": 1.0},
        "reconnect": {
            "initial_seconds": 0.05,
            "max_seconds": 0.2,
            "handshake_timeout_seconds": 5.0,
        },
        "max_concurrent_tasks": 4,
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def assignment(
    task_id: str,
    analysis: str,
    parameters: bytes = b"{}",
    *,
    version: str = "1.0.0",
    deadline: timedelta | datetime = timedelta(seconds=60),
    min_cell_count: int = 1,
    permit: bytes | None = None,
    requested_by: str = RESEARCHER,
    nonce: str = "",
    expires_at: datetime | None = None,
) -> TaskAssignment:
    """An unsigned assignment under the default permit (`Session.send` signs it); the nonce
    defaults to one derived from the task id, the expiry to the deadline."""
    when = deadline if isinstance(deadline, datetime) else datetime.now(UTC) + deadline
    return TaskAssignment(
        task_id=task_id,
        study_id=f"study-{task_id}",
        analysis=AnalysisRef(analysis, version),
        parameters=parameters,
        deadline=when,
        min_cell_count=min_cell_count,
        data_permit_id=PERMIT_ID,
        requested_by=requested_by,
        permit=default_permit() if permit is None else permit,
        nonce=nonce or f"nonce-{task_id}",
        expires_at=expires_at or when,
        coordinator_audit_ref=COORDINATOR_REF,
    )


# --------------------------------------------------------------------------- fake coordinator


class _Close:
    pass


@dataclass(frozen=True)
class _Abort:
    code: grpc.StatusCode
    details: str


@dataclass
class Session:
    """One stream as the fake coordinator sees it."""

    peer: str
    # Signs an unsigned assignment on its way out (the coordinator's key).
    sign: Callable[[TaskAssignment], TaskAssignment] = lambda message: message
    protocol: ProtocolVersion | None = None
    received: list[NodeMessage] = field(default_factory=list)
    inbox: asyncio.Queue[NodeMessage | None] = field(default_factory=asyncio.Queue)
    outbox: asyncio.Queue[CoordinatorMessage | _Close | _Abort] = field(
        default_factory=asyncio.Queue
    )
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, message: CoordinatorMessage) -> None:
        if isinstance(message, TaskAssignment) and not message.signature:
            message = self.sign(message)
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(_Close())

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.outbox.put_nowait(_Abort(code, details))

    async def next(
        self,
        kind: type[M],
        where: Callable[[M], bool] = lambda message: True,
        timeout: float = WAIT_S,
    ) -> M:
        """The next message of ``kind`` matching ``where``; others are skipped (kept in
        ``received``)."""

        async def wait() -> M:
            while True:
                message = await self.inbox.get()
                if message is None:
                    raise AssertionError(f"stream ended while waiting for {kind.__name__}")
                if isinstance(message, kind) and where(message):
                    return message

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            seen = [type(m).__name__ for m in self.received[-20:]]
            raise AssertionError(
                f"no {kind.__name__} within {timeout} s; last received: {seen}"
            ) from None

    async def result(self, task_id: str, timeout: float = WAIT_S) -> tuple[AssembledPayload, int]:
        """The next complete result of ``task_id`` and its number of chunks."""
        assembler = PayloadAssembler()
        while True:
            chunk = await self.next(ResultChunk, lambda m: m.task_id == task_id, timeout)
            payload = assembler.add(chunk.chunk)
            if payload is not None:
                return payload, chunk.chunk.count


class FakeCoordinator(node_link_pb2_grpc.NodeLinkServicer):
    """Answers Hello with Welcome; everything else is up to the test, through `Session`."""

    def __init__(
        self,
        *,
        heartbeat_interval: timedelta = timedelta(milliseconds=200),
        coordinator_time: Callable[[], datetime | None] = lambda: datetime.now(UTC),
        node_name: str | None = None,
        insecure: bool = False,
        certificate: bytes | None = None,
    ) -> None:
        """``certificate``: the PEM sent in Welcome instead of the signing key's own."""
        self.heartbeat_interval = heartbeat_interval
        self.coordinator_time = coordinator_time
        self.node_name = node_name
        self.insecure = insecure
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.all_sessions: list[Session] = []
        self._signer: Signer | None = None
        self.certificate = certificate

    def use_pki(self, pki: Pki) -> None:
        """Sign with the key of the PKI's coordinator certificate (done by
        `coordinator_server`)."""
        tls = pki.tls("central")
        self._signer = Signer.from_file(tls.key)
        if self.certificate is None:
            self.certificate = tls.certificate.read_bytes()

    def sign(self, message: TaskAssignment) -> TaskAssignment:
        """``message`` signed as the coordinator signs assignments."""
        assert self._signer is not None, "the fake coordinator has no key (use_pki)"
        unsigned = dataclasses.replace(message, signature="")
        return dataclasses.replace(message, signature=self._signer.sign(signing_bytes(unsigned)))

    def _peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        if self.insecure:
            for key, value in context.invocation_metadata() or ():
                if key == "x-ehds-insecure-identity":
                    return str(value)
            return ""
        identity = transport.peer_identity(context)
        return "" if identity is None else f"{identity.role.value}/{identity.name}"

    async def next_session(self, timeout: float = WAIT_S) -> Session:
        try:
            return await asyncio.wait_for(self.sessions.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no new stream within {timeout} s") from None

    async def Connect(  # noqa: N802 (name generated from the .proto)
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[node_link_pb2.CoordinatorMessage]:
        session = Session(peer=self._peer(context), sign=self.sign)
        self.all_sessions.append(session)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    message = decode_node_message(raw)
                    if message is None:
                        continue
                    session.received.append(message)
                    if isinstance(message, Hello):
                        session.protocol = message.protocol_version
                        session.send(self._welcome(message, session))
                        # Handed to the test only now, so that whatever it sends follows Welcome.
                        self.sessions.put_nowait(session)
                    session.inbox.put_nowait(message)
            except Exception:  # the node went away mid-read
                pass
            finally:
                session.inbox.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                get = asyncio.ensure_future(session.outbox.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                item = get.result()
                if isinstance(item, _Close):
                    return
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.details)
                yield encode_coordinator_message(item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            session.ended.set()

    def _welcome(self, hello: Hello, session: Session) -> Welcome:
        ours = ProtocolVersion(*PROTOCOL_VERSION)
        minor = min(hello.protocol_version.minor, ours.minor)
        name = self.node_name or session.peer.partition("/")[2]
        # A 1.0 stream has no coordinator_time (the field came with 1.1).
        time = self.coordinator_time() if minor >= 1 else None
        return Welcome(
            node_name=name,
            protocol_version=ProtocolVersion(ours.major, minor),
            heartbeat_interval=self.heartbeat_interval,
            coordinator_software=SoftwareInfo("fake-coordinator", "0"),
            coordinator_time=time,
            # Protocol 1.3: the certificate of the key that signs assignments.
            coordinator_certificate=(self.certificate or b"") if minor >= 3 else b"",
        )


@contextlib.asynccontextmanager
async def coordinator_server(
    pki: Pki,
    servicer: FakeCoordinator,
    *,
    port: int = 0,
    keepalive: Keepalive | None = None,
) -> AsyncIterator[int]:
    """The fake coordinator on 127.0.0.1 with mutual TLS (plaintext if ``servicer.insecure``);
    yields the bound port."""
    keepalive = keepalive or Keepalive(time_seconds=0.2, timeout_seconds=1.0)
    servicer.use_pki(pki)
    server = grpc.aio.server(options=transport.server_options(keepalive))
    node_link_pb2_grpc.add_NodeLinkServicer_to_server(servicer, server)
    address = f"127.0.0.1:{port}"
    if servicer.insecure:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, transport.server_credentials(pki.tls("central")))
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(grace=None)


# --------------------------------------------------------------------------- the node


@dataclass
class RunningNode:
    agent: NodeAgent
    state: NodeState
    config: NodeConfig
    task: asyncio.Task[None]

    @property
    def metrics(self) -> NodeMetrics:
        return self.agent.metrics


@contextlib.asynccontextmanager
async def running_node(
    config_path: Path,
    *,
    registry: Registry,
    protocol_version: ProtocolVersion | None = None,
    insecure: bool = False,
    policy: SitePolicy | None = None,
    retention_sweep_seconds: float = 3600.0,
) -> AsyncIterator[RunningNode]:
    """A `NodeAgent` running in this event loop; stopped (and its state closed) on exit."""
    config = load_node_config(config_path)
    policy = policy or load_site_policy(config.policy)
    state = NodeState.open(config.state)
    try:
        agent = NodeAgent(
            config,
            policy,
            state,
            registry=registry,
            protocol_version=protocol_version,
            insecure=insecure,
            shutdown_grace_seconds=5.0,
            retention_sweep_seconds=retention_sweep_seconds,
        )
        task = asyncio.create_task(agent.run())
        try:
            yield RunningNode(agent, state, config, task)
        finally:
            agent.stop()
            await asyncio.wait_for(task, WAIT_S)
    finally:
        state.close()


async def eventually(check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- network faults


@dataclass
class _Pipe:
    writers: list[asyncio.StreamWriter]
    thawed: asyncio.Event = field(default_factory=asyncio.Event)


class _Relay:
    """Shared plumbing of the forwarder and the proxy: accept, connect upstream, pipe bytes."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pipes: list[_Pipe] = []
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _relay(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        pipe = _Pipe([client[1], upstream[1]])
        pipe.thawed.set()
        self._pipes.append(pipe)
        self.connections += 1

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                await pipe.thawed.wait()  # frozen: hold the bytes, send no FIN, no RST
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.gather(copy(client[0], upstream[1]), copy(upstream[0], client[1]))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pipe.writers:
                w.close()

    def freeze(self) -> None:
        """Existing connections go silent; new ones still pass."""
        for pipe in self._pipes:
            pipe.thawed.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pipe in self._pipes:
            for w in pipe.writers:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()


class Forwarder(_Relay):
    """A plain TCP forwarder to 127.0.0.1:``target_port`` that `freeze` can silence."""

    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        await self._relay((reader, writer), upstream)


class ConnectProxy(_Relay):
    """A minimal HTTP CONNECT proxy; ``requests`` records every CONNECT target."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        self.requests.append(f"{method} {target}")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        host, _, port = target.rpartition(":")
        upstream = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await self._relay((reader, writer), upstream)


R = TypeVar("R", bound=_Relay)


@contextlib.asynccontextmanager
async def relay(relay: R) -> AsyncIterator[R]:
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


# --------------------------------------------------------------------------- scenarios

Scenario = Callable[[FakeCoordinator, "RunningNode", Session], Awaitable[None]]
SCENARIO_TIMEOUT_S = 25.0


def run_scenario(
    tmp_path: Path,
    pki: Pki,
    cdm: Path,
    scenario: Scenario,
    *,
    analyses: LocalAnalyses | None = None,
    coordinator: FakeCoordinator | None = None,
    policy: Mapping[str, Any] | None = None,
) -> None:
    """Write a policy (``policy``: `write_policy` options), start the fake coordinator and a
    node, wait until the node is welcomed, run ``scenario``, and take everything down."""
    analyses = analyses or LocalAnalyses()
    coordinator = coordinator or FakeCoordinator()
    write_policy(tmp_path / "policy.yaml", **(policy or {}))

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=analyses.registry()) as node:
                session = await coordinator.next_session()
                await session.next(Heartbeat)  # welcomed: the first heartbeat follows Welcome
                await scenario(coordinator, node, session)

    asyncio.run(asyncio.wait_for(main(), SCENARIO_TIMEOUT_S))


def audit_entries(state: NodeState) -> list[AuditEntry]:
    """The node's chain as parsed entries."""
    return [AuditEntry.parse(line) for line in state.audit_lines()]
