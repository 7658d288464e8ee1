"""The node's end of `NodeLink.Connect`: the only node module that touches gRPC or protobuf.

One `CoordinatorLink` is one connection attempt: its own channel (mutual TLS with the node's
certificate, keepalive, the expected server name, the HTTP CONNECT proxy) and one bidirectional
stream on it, with `ehds.federation.serde` translating at the edge so that the agent sends and
receives `ehds.federation.model` dataclasses only.

Why a fresh channel per attempt: gRPC channels reconnect by themselves with their own backoff,
and may share a subchannel (TCP connection) with other channels. The agent owns reconnection
(jittered backoff, a new Hello on every stream), so each attempt starts from a new, private
connection and nothing of a dead one is reused.

Sending never blocks the caller: messages go to a queue drained by one writer task (gRPC allows
one write in flight per call), so heartbeats, acks and result chunks from many tasks interleave
in the order they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import grpc
import grpc.aio

from ehds.core.errors import EhdsError, StateError
from ehds.core.netconfig import Keepalive, TlsFiles
from ehds.federation import transport
from ehds.federation.model import CoordinatorMessage, NodeMessage
from ehds.federation.serde import (
    ProtocolViolation,
    decode_coordinator_message,
    encode_node_message,
)
from ehds.federation.v1 import node_link_pb2, node_link_pb2_grpc
from ehds.node.config import NodeConfig

log = logging.getLogger(__name__)

INSECURE_IDENTITY_HEADER: Final = "x-ehds-insecure-identity"


class _Close:
    """Queued after the last message: half-close the stream."""


_CLOSE: Final = _Close()


class LinkError(StateError):
    """The stream could not be opened or has ended with an error; the agent reconnects.

    ``status`` is the gRPC status name (``UNAVAILABLE``, ``PERMISSION_DENIED``...), or
    ``PROTOCOL`` when the coordinator broke the protocol."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LinkSettings:
    address: str
    tls: TlsFiles
    keepalive: Keepalive
    server_name: str | None = None
    proxy: str | None = None
    # Set only with --insecure: a plaintext channel that names the node in a header instead of
    # a certificate (the coordinator accepts it only when it runs --insecure too).
    insecure_identity: str | None = None

    @classmethod
    def for_node(cls, config: NodeConfig, *, node_name: str, insecure: bool) -> LinkSettings:
        return cls(
            address=config.coordinator.address,
            tls=config.tls,
            keepalive=config.keepalive,
            server_name=config.coordinator.server_name,
            proxy=config.coordinator.proxy,
            insecure_identity=f"node/{node_name}" if insecure else None,
        )

    def channel_options(self) -> list[transport.ChannelOption]:
        options = transport.channel_options(
            self.keepalive, server_name=self.server_name, proxy=self.proxy
        )
        # A private connection per attempt (see the module docstring).
        options.append(("grpc.use_local_subchannel_pool", 1))
        return options


def _status_error(exc: grpc.aio.AioRpcError) -> LinkError:
    code = exc.code()
    details = exc.details() or ""
    return LinkError(f"stream ended: {code.name} {details}".rstrip(), status=code.name)


class CoordinatorLink:
    """One stream to the coordinator; use through `open_link`."""

    def __init__(self, settings: LinkSettings) -> None:
        self._settings = settings
        self._channel: grpc.aio.Channel | None = None
        self._call: (
            grpc.aio.StreamStreamCall[node_link_pb2.NodeMessage, node_link_pb2.CoordinatorMessage]
            | None
        ) = None
        self._outgoing: asyncio.Queue[NodeMessage | _Close] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._write_error: LinkError | None = None

    async def _open(self) -> None:
        settings = self._settings
        options = settings.channel_options()
        metadata: tuple[tuple[str, str], ...] = ()
        if settings.insecure_identity is not None:
            self._channel = grpc.aio.insecure_channel(settings.address, options=options)
            metadata = ((INSECURE_IDENTITY_HEADER, settings.insecure_identity),)
        else:
            credentials = transport.client_credentials(settings.tls)
            self._channel = grpc.aio.secure_channel(settings.address, credentials, options=options)
        stub = node_link_pb2_grpc.NodeLinkStub(self._channel)
        self._call = stub.Connect(metadata=metadata)
        self._writer = asyncio.create_task(self._write_all(), name="ehds-node-link-writer")

    async def _write_all(self) -> None:
        assert self._call is not None
        try:
            while not isinstance(message := await self._outgoing.get(), _Close):
                await self._call.write(encode_node_message(message))
            await self._call.done_writing()
        except grpc.aio.AioRpcError as exc:
            self._write_error = _status_error(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call ended under the writer (InvalidStateError...)
            self._write_error = LinkError(
                f"cannot write to the stream ({type(exc).__name__})", status="UNAVAILABLE"
            )
            self._call.cancel()

    def send(self, message: NodeMessage) -> None:
        """Queue ``message``; sent in order after everything queued before it."""
        self._outgoing.put_nowait(message)

    def finish_sending(self) -> None:
        """Half-close: the coordinator's read ends after what is already queued."""
        self._outgoing.put_nowait(_CLOSE)

    async def receive(self) -> CoordinatorMessage | None:
        """The next message; None when the coordinator ended the stream with status OK.

        Messages of a kind this version does not know are skipped (protocol evolution rule).
        Raises `LinkError` when the stream fails or the coordinator breaks the protocol.
        """
        assert self._call is not None
        while True:
            try:
                received = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                raise _status_error(exc) from None
            if received is grpc.aio.EOF:
                code = await self._call.code()
                if code is grpc.StatusCode.OK:
                    return None
                raise LinkError(
                    f"stream ended: {code.name} {await self._call.details() or ''}".rstrip(),
                    status=code.name,
                )
            assert isinstance(received, node_link_pb2.CoordinatorMessage)
            try:
                message = decode_coordinator_message(received)
            except ProtocolViolation as exc:
                raise LinkError(str(exc), status="PROTOCOL") from None
            if message is not None:
                return message
            log.debug("skipping a coordinator message of a kind this version does not know")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()


@contextlib.asynccontextmanager
async def open_link(settings: LinkSettings) -> AsyncIterator[CoordinatorLink]:
    """A stream to the coordinator, closed (with its channel) on exit.

    Opening does not wait for the connection: a coordinator that cannot be reached shows as a
    `LinkError` (UNAVAILABLE) from the first `receive`.
    """
    link = CoordinatorLink(settings)
    try:
        try:
            await link._open()
        except EhdsError as exc:  # unreadable TLS files
            raise LinkError(str(exc), status="LOCAL") from None
        yield link
    finally:
        await link.close()
