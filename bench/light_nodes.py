"""Many light nodes in one process, for the 1,000-node benchmark (bench_thousand_nodes.py).

    .venv/bin/python -m bench.light_nodes SPEC.json     (started by the benchmark)

Why not 1,000 real node agents: each is a Python process with its own CDM and state
database, ~160 MB resident, and the machine running the benchmark has 2 cores. What the benchmark
measures is the coordinator: its memory per connected node and its time to run one study
across all of them. For that a node only has to look like one on the wire, so each light
node here is exactly that and nothing more:

* its own gRPC channel, with its own client certificate (mutual TLS, identity from the
  certificate as for a real node), and its own TCP connection: channels never share a
  subchannel (``grpc.use_local_subchannel_pool``), so the coordinator holds one TLS session
  and one HTTP/2 connection per node, as in production;
* the real protocol through ``ehds.federation.serde``: Hello with a profile whose
  capabilities name the analyses below, Heartbeat 0 right after Welcome and then one per
  Welcome interval (listing the tasks in flight), TaskAck on every TaskAssignment, the
  result as ResultChunks of canonical JSON that the analysis' ``aggregate`` accepts, a
  TaskOutcome(CANCELLED) on CancelTask, and the task forgotten on its ResultReceipt;
* a lost stream is opened again after a pause, as a node agent would (with a new Hello).

No data is read: test.sleep answers ``{"slept": seconds}`` at once, person_count answers
the full grid of cells with fixed counts. Results are computed where the analysis would
run, after the ack, so what the coordinator sees is the order of a real node.

The parent drives it through stdin, one command per line: ``connect K`` opens the next K
nodes of SPEC's list (at most ``connect_concurrency`` handshakes at a time) and prints
``welcomed TOTAL`` once all of them have had their Welcome; ``stats`` prints counters;
``quit`` (or end of input) closes every channel and exits. Everything goes to stdout, which
the parent sends to a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio

from ehds.analyses.base import canonical_json
from ehds.analyses.person_count import SEXES, PersonCountParameters
from ehds.analyses.testing import SleepParameters
from ehds.core.netconfig import Keepalive, TlsFiles
from ehds.federation import serde, transport
from ehds.federation.chunks import split_payload
from ehds.federation.model import (
    AnalysisRef,
    CancelTask,
    CoordinatorMessage,
    ErrorCode,
    Heartbeat,
    Hello,
    NodeMessage,
    NodeProfile,
    ProtocolVersion,
    ResultChunk,
    ResultReceipt,
    SoftwareInfo,
    TaskAck,
    TaskAssignment,
    TaskOutcome,
    Welcome,
)
from ehds.federation.v1 import node_link_pb2, node_link_pb2_grpc
from ehds.federation.version import PROTOCOL_VERSION

SLEEP: Final = AnalysisRef("test.sleep", "1.0.0")
PERSON_COUNT: Final = AnalysisRef("person_count", "1.0.0")
CONTENT_TYPE: Final = "application/json"
RECONNECT_PAUSE_S: Final = (0.5, 2.0)
WELCOME_TIMEOUT_S: Final = 60.0
CANCELLED_MESSAGE: Final = "task cancelled by the coordinator"
UNKNOWN_MESSAGE: Final = "analysis not supported by this node"
PROFILE: Final = NodeProfile(
    software=SoftwareInfo("ehds-bench-light-node", "0"),
    cdm_version="v5.4",
    vocabulary_version="bench",
    engine="none",
    capabilities=(PERSON_COUNT, SLEEP),
    policy_version="bench-1",
)

Stream = grpc.aio.StreamStreamCall[node_link_pb2.NodeMessage, node_link_pb2.CoordinatorMessage]


@dataclass(frozen=True)
class NodeFiles:
    name: str
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Spec:
    """What the parent writes to SPEC.json."""

    address: str
    ca: Path
    nodes: list[NodeFiles]
    keepalive: Keepalive
    connect_concurrency: int

    @classmethod
    def load(cls, path: Path) -> Spec:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            address=str(raw["address"]),
            ca=Path(raw["ca"]),
            nodes=[
                NodeFiles(str(n["name"]), Path(n["certificate"]), Path(n["key"]))
                for n in raw["nodes"]
            ],
            keepalive=Keepalive(
                time_seconds=float(raw["keepalive_time_seconds"]),
                timeout_seconds=float(raw["keepalive_timeout_seconds"]),
            ),
            connect_concurrency=int(raw["connect_concurrency"]),
        )


@dataclass
class Counters:
    welcomes: int = 0
    assignments: int = 0
    results: int = 0
    receipts: int = 0
    cancels: int = 0
    stream_errors: int = 0
    last_error: str = ""
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def error(self, text: str) -> None:
        self.stream_errors += 1
        self.last_error = text
        kind = text.split(":", 1)[0]
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def line(self) -> str:
        kinds = ",".join(f"{k}={v}" for k, v in sorted(self.errors_by_kind.items()))
        return (
            f"stats welcomes={self.welcomes} assignments={self.assignments} "
            f"results={self.results} receipts={self.receipts} cancels={self.cancels} "
            f"stream_errors={self.stream_errors} [{kinds}] last_error={self.last_error!r}"
        )


def result_of(assignment: TaskAssignment, index: int) -> bytes | None:
    """The JSON a real node would release for ``assignment``; None for an unknown analysis.

    person_count: every sex x age band cell, at or above the minimum cell count (a count
    that depends on the node, so that the pooled sums are not all the same number).
    """
    if assignment.analysis == SLEEP:
        sleep = SleepParameters.model_validate_json(assignment.parameters)
        return canonical_json({"slept": sleep.seconds})
    if assignment.analysis == PERSON_COUNT:
        params = PersonCountParameters.model_validate_json(assignment.parameters)
        threshold = max(1, assignment.min_cell_count)
        cells = [
            {"sex": sex, "age_band": band, "count": threshold + index % 7, "suppressed": False}
            for sex in SEXES
            for band in params.band_labels()
        ]
        return canonical_json({"cells": cells, "min_cell_count": threshold})
    return None


class LightNode:
    """One node: one channel, one stream at a time, reopened when it ends."""

    def __init__(self, index: int, files: NodeFiles, spec: Spec, counters: Counters) -> None:
        self.index = index
        self.name = files.name
        self._spec = spec
        self._counters = counters
        # The node's own certificate, exactly as a node agent loads it.
        self._credentials = transport.client_credentials(
            TlsFiles(certificate=files.certificate, key=files.key, ca=spec.ca)
        )
        self._options = [
            *transport.channel_options(spec.keepalive),
            # One TCP connection per node: never share a subchannel with another channel.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.welcomed = asyncio.Event()
        self._in_flight: set[str] = set()
        self._write_lock = asyncio.Lock()

    async def run(self) -> None:
        """Hold a stream until cancelled; open a new one after a pause when it ends."""
        while True:
            channel = grpc.aio.secure_channel(
                self._spec.address, self._credentials, options=self._options
            )
            try:
                await self._session(channel)
                self._counters.error("ENDED: the coordinator ended the stream")
            except grpc.aio.AioRpcError as exc:
                self._counters.error(f"{exc.code().name}: {exc.details()}")
            except (TimeoutError, serde.ProtocolViolation, ValueError) as exc:
                self._counters.error(f"{type(exc).__name__}: {exc}")
            finally:
                await channel.close()
            await asyncio.sleep(random.uniform(*RECONNECT_PAUSE_S))

    async def _write(self, call: Stream, message: NodeMessage) -> None:
        # gRPC allows one write in flight per call; heartbeats and results share the stream.
        async with self._write_lock:
            await call.write(serde.encode_node_message(message))

    async def _session(self, channel: grpc.aio.Channel) -> None:
        call: Stream = node_link_pb2_grpc.NodeLinkStub(channel).Connect()
        await self._write(call, Hello(ProtocolVersion(*PROTOCOL_VERSION), PROFILE))
        welcome = await asyncio.wait_for(self._read(call), WELCOME_TIMEOUT_S)
        if not isinstance(welcome, Welcome):
            raise ValueError(f"expected Welcome, got {type(welcome).__name__}")
        self._counters.welcomes += 1
        self.welcomed.set()
        beats = asyncio.create_task(self._heartbeats(call, welcome))
        try:
            while (message := await self._read(call)) is not None:
                await self._handle(call, message)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            call.cancel()

    async def _read(self, call: Stream) -> CoordinatorMessage | None:
        """The next message of a kind this version knows; None at the end of the stream."""
        while True:
            received = await call.read()
            if received is grpc.aio.EOF:
                return None
            assert isinstance(received, node_link_pb2.CoordinatorMessage)
            message = serde.decode_coordinator_message(received)
            if message is not None:
                return message

    async def _heartbeats(self, call: Stream, welcome: Welcome) -> None:
        interval = max(0.05, welcome.heartbeat_interval.total_seconds())
        seq = 0
        while True:
            await self._write(call, Heartbeat(seq, tuple(sorted(self._in_flight))))
            seq += 1
            await asyncio.sleep(interval)

    async def _handle(self, call: Stream, message: CoordinatorMessage) -> None:
        match message:
            case TaskAssignment():
                self._counters.assignments += 1
                self._in_flight.add(message.task_id)
                await self._write(call, TaskAck(message.task_id))
                payload = result_of(message, self.index)
                if payload is None:
                    self._in_flight.discard(message.task_id)
                    await self._write(
                        call,
                        TaskOutcome(message.task_id, ErrorCode.ANALYSIS_UNKNOWN, UNKNOWN_MESSAGE),
                    )
                    return
                for chunk in split_payload(payload, CONTENT_TYPE):
                    await self._write(call, ResultChunk(message.task_id, chunk))
                self._counters.results += 1
            case ResultReceipt():
                self._counters.receipts += 1
                self._in_flight.discard(message.task_id)
            case CancelTask():
                self._counters.cancels += 1
                if message.task_id in self._in_flight:
                    self._in_flight.discard(message.task_id)
                    await self._write(
                        call,
                        TaskOutcome(message.task_id, ErrorCode.CANCELLED, CANCELLED_MESSAGE),
                    )
            case Welcome():
                raise ValueError("a second Welcome on the same stream")


class Fleet:
    """This process's light nodes, opened in batches on the parent's command."""

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self.counters = Counters()
        self._nodes: list[LightNode] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._handshakes = asyncio.Semaphore(spec.connect_concurrency)

    async def connect(self, count: int) -> int:
        """Open the next ``count`` nodes; the number welcomed once all of them are."""
        start = len(self._nodes)
        batch = [
            LightNode(start + offset, files, self._spec, self.counters)
            for offset, files in enumerate(self._spec.nodes[start : start + count])
        ]
        await asyncio.gather(*(self._open(node) for node in batch))
        return sum(node.welcomed.is_set() for node in self._nodes)

    async def _open(self, node: LightNode) -> None:
        async with self._handshakes:
            self._nodes.append(node)
            self._tasks.append(asyncio.create_task(node.run(), name=node.name))
            await node.welcomed.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def say(line: str) -> None:
    print(line, flush=True)


async def serve(spec: Spec) -> None:
    fleet = Fleet(spec)
    commands = await _commands()
    pending: set[asyncio.Task[None]] = set()

    async def connect(count: int) -> None:
        say(f"welcomed {await fleet.connect(count)}")

    try:
        while line := (await commands.readline()).decode().strip():
            verb, _, argument = line.partition(" ")
            if verb == "connect":
                # In the background: the parent may ask for stats while nodes connect.
                task = asyncio.create_task(connect(int(argument)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            elif verb == "stats":
                say(fleet.counters.line())
            elif verb == "quit":
                break
            else:
                say(f"error unknown command {line!r}")
    finally:
        for task in pending:
            task.cancel()
        await fleet.close()
        say(fleet.counters.line())
        say("bye")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.light_nodes SPEC.json", file=sys.stderr)
        return 2
    spec = Spec.load(Path(argv[0]))
    say(f"light nodes: {len(spec.nodes)} to {spec.address}")
    asyncio.run(serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
