"""NodeLink.Connect: the gRPC end of a node's long-lived stream.

One handler coroutine per stream writes what the node's `NodeSession` queue yields; one reader
task hands each incoming message to the dispatcher, in order. No thread per stream. The
conversation and its error statuses are those of `node_link.proto`:

* the first message must be Hello (else INVALID_ARGUMENT), within `HELLO_TIMEOUT_S`;
* another major protocol version: FAILED_PRECONDITION; a revoked node or certificate:
  PERMISSION_DENIED;
* a result whose chunks break the rules: INVALID_ARGUMENT, a result whose digest does not match:
  DATA_LOSS (the node reconnects and sends it again from chunk 0);
* the node half-closes: the stream ends with OK.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from ehds.coordinator.dispatch import SHUTDOWN_DETAILS, Dispatcher
from ehds.coordinator.errors import NodeRevokedError, ProtocolVersionError
from ehds.coordinator.service.access import Access, abort_for
from ehds.coordinator.state.worker import WorkerClosedError
from ehds.coordinator.streams import CloseCode, CloseStatus, NodeSession
from ehds.federation import serde
from ehds.federation.chunks import PayloadDigestError, PayloadError
from ehds.federation.model import Hello
from ehds.federation.serde import ProtocolViolation
from ehds.federation.v1 import node_link_pb2, node_link_pb2_grpc
from ehds.pki.identity import Role

__all__ = ["HELLO_TIMEOUT_S", "NodeLinkService"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S: Final = 30.0
"""A node sends Hello as soon as its stream opens; a connection that says nothing is dropped."""


class NodeLinkService(node_link_pb2_grpc.NodeLinkServicer):
    def __init__(self, dispatcher: Dispatcher, access: Access) -> None:
        self._dispatcher = dispatcher
        self._access = access

    async def Connect(  # noqa: N802 (the name gRPC generated from the .proto)
        self,
        request_iterator: AsyncIterator[node_link_pb2.NodeMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[node_link_pb2.CoordinatorMessage]:
        identity, certificate_pem = await self._access.require(context, Role.NODE, "NodeLink")
        if self._dispatcher.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        requests = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(requests), HELLO_TIMEOUT_S)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"no Hello within {HELLO_TIMEOUT_S:.0f} s"
            )
        try:
            hello = serde.decode_node_message(first)
        except ProtocolViolation as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not isinstance(hello, Hello):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on a NodeLink stream must be Hello",
            )
        try:
            session = await self._dispatcher.open_session(identity.name, certificate_pem, hello)
        except (NodeRevokedError, ProtocolVersionError, WorkerClosedError) as exc:
            log.warning("refused a stream of node %s: %s", identity.name, exc)
            await abort_for(context, exc)
        except Exception as exc:  # e.g. the state database is unavailable: logged, INTERNAL
            await abort_for(context, exc)
        reader = asyncio.create_task(
            self._read(session, requests, context), name=f"node-link-read-{identity.name}"
        )
        try:
            while True:
                item = await session.next_outgoing()
                if isinstance(item, CloseStatus):
                    if item.code is not CloseCode.OK:
                        log.info(
                            "ending the stream of node %s: %s %s",
                            session.name,
                            item.code.value,
                            item.details,
                        )
                        await context.abort(grpc.StatusCode[item.code.value], item.details)
                    return
                yield serde.encode_coordinator_message(item)
        finally:
            reader.cancel()
            self._dispatcher.close_session(session)

    async def _read(
        self,
        session: NodeSession,
        requests: AsyncIterator[node_link_pb2.NodeMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            async for pb in requests:
                message = serde.decode_node_message(pb)
                if message is None:
                    session.seen()  # a kind from a newer minor version: skipped
                    continue
                await self._dispatcher.on_node_message(session, message)
                if session.closed is not None:
                    return
            session.close(CloseCode.OK, "")  # the node half-closed
        except asyncio.CancelledError:
            raise
        except PayloadDigestError as exc:
            session.close(CloseCode.DATA_LOSS, str(exc))
        except (PayloadError, ProtocolViolation) as exc:
            session.close(CloseCode.INVALID_ARGUMENT, str(exc))
        except WorkerClosedError:
            session.close(CloseCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        except Exception:
            if session.closed is not None or context.done():
                # The RPC ended first (cancelled by the node, or aborted by the writer): the
                # pending read fails with it; nothing to report.
                log.debug("node %s: stream ended while reading", session.name)
                session.close(CloseCode.UNAVAILABLE, "stream ended")
                return
            log.exception("handling a message of node %s failed", session.name)
            # The node reconnects and re-sends; nothing it sent was acknowledged.
            session.close(CloseCode.UNAVAILABLE, "internal error at the coordinator; reconnect")
