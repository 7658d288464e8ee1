"""NodeLink.Connect over a real gRPC server: one bidirectional stream carries the conversation.

The channel is insecure because this test is about the protocol, not the transport: mTLS and
node identity are tested with the transport layer. Every wait is bounded (RPC deadline, queue
timeouts, pytest timeout), and the server and its thread pool are always shut down.
"""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ehds.federation import limits
from ehds.federation.v1 import common_pb2, node_link_pb2, node_link_pb2_grpc
from ehds.federation.version import PROTOCOL_VERSION

RPC_TIMEOUT_S = 20.0
TASK_ID = "t-1"
NODE_NAME = "test-node"  # from the client certificate, in real life


class EchoCoordinator(node_link_pb2_grpc.NodeLinkServicer):
    """Just enough coordinator to exercise the stream: welcomes, assigns one task, reassembles
    and verifies the chunked result, answers with a receipt."""

    def Connect(  # noqa: N802 (the name gRPC generated from the .proto)
        self,
        request_iterator: Iterator[node_link_pb2.NodeMessage],
        context: grpc.ServicerContext,
    ) -> Iterator[node_link_pb2.CoordinatorMessage]:
        chunks: list[bytes] = []
        for message in request_iterator:
            kind = message.WhichOneof("body")
            if kind == "hello":
                hello = message.hello
                if hello.protocol_version.major != PROTOCOL_VERSION[0]:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "protocol major differs")
                yield node_link_pb2.CoordinatorMessage(
                    welcome=node_link_pb2.Welcome(
                        node_name=NODE_NAME,
                        protocol_version=common_pb2.ProtocolVersion(
                            major=PROTOCOL_VERSION[0],
                            minor=min(hello.protocol_version.minor, PROTOCOL_VERSION[1]),
                        ),
                        heartbeat_interval=Duration(seconds=15),
                    )
                )
                yield node_link_pb2.CoordinatorMessage(
                    task_assignment=node_link_pb2.TaskAssignment(
                        task_id=TASK_ID,
                        study_id="st-1",
                        analysis=common_pb2.AnalysisRef(name="cohort_count", version="1.0.0"),
                        parameters=b'{"min_age":18}',
                        deadline=Timestamp(seconds=4_102_444_800),
                        min_cell_count=10,
                    )
                )
            elif kind == "result_chunk":
                result = message.result_chunk
                if result.chunk.index != len(chunks):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunk out of order")
                chunks.append(result.chunk.data)
                if result.chunk.index + 1 == result.chunk.count:
                    digest = hashlib.sha256(b"".join(chunks)).digest()
                    if digest != result.chunk.sha256:
                        context.abort(grpc.StatusCode.DATA_LOSS, "result digest mismatch")
                    yield node_link_pb2.CoordinatorMessage(
                        result_receipt=node_link_pb2.ResultReceipt(
                            task_id=result.task_id, sha256=digest
                        )
                    )
            # Heartbeat, TaskAck, TaskProgress and unknown kinds need no answer here.


@pytest.fixture
def coordinator_port() -> Iterator[int]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-node-link") as pool:
        server = grpc.server(pool)
        node_link_pb2_grpc.add_NodeLinkServicer_to_server(EchoCoordinator(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        assert port != 0
        server.start()
        try:
            yield port
        finally:
            server.stop(grace=None).wait(timeout=10)


@pytest.fixture
def stub(coordinator_port: int) -> Iterator[node_link_pb2_grpc.NodeLinkStub]:
    with grpc.insecure_channel(f"127.0.0.1:{coordinator_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield node_link_pb2_grpc.NodeLinkStub(channel)


class Outbox:
    """The node's side of the stream: messages put here are sent in order; close() half-closes."""

    def __init__(self) -> None:
        self._queue: queue.Queue[node_link_pb2.NodeMessage | None] = queue.Queue()

    def put(self, message: node_link_pb2.NodeMessage) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[node_link_pb2.NodeMessage]:
        while (message := self._queue.get(timeout=RPC_TIMEOUT_S)) is not None:
            yield message


def _chunked(task_id: str, payload: bytes) -> list[node_link_pb2.NodeMessage]:
    pieces = [
        payload[start : start + limits.MAX_CHUNK_BYTES]
        for start in range(0, len(payload), limits.MAX_CHUNK_BYTES)
    ]
    last = len(pieces) - 1
    return [
        node_link_pb2.NodeMessage(
            result_chunk=node_link_pb2.ResultChunk(
                task_id=task_id,
                chunk=common_pb2.PayloadChunk(
                    index=index,
                    count=len(pieces),
                    data=piece,
                    sha256=hashlib.sha256(payload).digest() if index == last else b"",
                    content_type="application/octet-stream" if index == 0 else "",
                ),
            )
        )
        for index, piece in enumerate(pieces)
    ]


def _hello(minor: int) -> node_link_pb2.NodeMessage:
    return node_link_pb2.NodeMessage(
        hello=node_link_pb2.Hello(
            protocol_version=common_pb2.ProtocolVersion(major=PROTOCOL_VERSION[0], minor=minor),
            profile=common_pb2.NodeProfile(cdm_version="5.4", engine="duckdb"),
        )
    )


@pytest.mark.timeout(60)
def test_one_stream_carries_hello_task_and_a_chunked_result_over_4_mib(
    stub: node_link_pb2_grpc.NodeLinkStub,
) -> None:
    outbox = Outbox()
    outbox.put(_hello(minor=PROTOCOL_VERSION[1] + 5))  # a newer node: the coordinator's minor wins
    responses = stub.Connect(iter(outbox), timeout=RPC_TIMEOUT_S)

    welcome = next(responses)
    assert welcome.WhichOneof("body") == "welcome"
    assert welcome.welcome.node_name == NODE_NAME
    negotiated = welcome.welcome.protocol_version
    assert (negotiated.major, negotiated.minor) == PROTOCOL_VERSION

    assignment = next(responses).task_assignment
    assert assignment.task_id == TASK_ID
    assert assignment.analysis.name == "cohort_count"

    outbox.put(node_link_pb2.NodeMessage(task_ack=node_link_pb2.TaskAck(task_id=TASK_ID)))
    outbox.put(
        node_link_pb2.NodeMessage(
            heartbeat=node_link_pb2.Heartbeat(seq=0, in_flight_task_ids=[TASK_ID])
        )
    )
    # Larger than gRPC's 4 MiB default, with the defaults in force on both ends.
    payload = bytes(range(256)) * (limits.MAX_MESSAGE_BYTES // 256 + 2048)
    assert len(payload) > limits.MAX_MESSAGE_BYTES
    chunks = _chunked(TASK_ID, payload)
    assert len(chunks) == 5
    for chunk in chunks:
        outbox.put(chunk)

    receipt = next(responses)
    assert receipt.WhichOneof("body") == "result_receipt"
    assert receipt.result_receipt.task_id == TASK_ID
    assert receipt.result_receipt.sha256 == hashlib.sha256(payload).digest()

    outbox.close()  # the node half-closes; the coordinator ends the stream cleanly
    assert list(responses) == []
    assert responses.code() == grpc.StatusCode.OK


@pytest.mark.timeout(60)
def test_a_single_message_over_4_mib_is_refused_so_payloads_must_be_chunked(
    stub: node_link_pb2_grpc.NodeLinkStub,
) -> None:
    outbox = Outbox()
    outbox.put(_hello(minor=PROTOCOL_VERSION[1]))
    responses = stub.Connect(iter(outbox), timeout=RPC_TIMEOUT_S)
    assert next(responses).WhichOneof("body") == "welcome"

    oversized = b"\0" * (limits.MAX_MESSAGE_BYTES + 1)
    outbox.put(
        node_link_pb2.NodeMessage(
            result_chunk=node_link_pb2.ResultChunk(
                task_id=TASK_ID,
                chunk=common_pb2.PayloadChunk(
                    index=0, count=1, data=oversized, sha256=hashlib.sha256(oversized).digest()
                ),
            )
        )
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(responses)
    outbox.close()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
