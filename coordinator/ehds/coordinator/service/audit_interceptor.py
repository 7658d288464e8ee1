"""Every RPC leaves an entry in the coordinator's audit chain: who called what, when, with what
outcome, and a digest of what they sent.

Why an interceptor and not a line in each handler: a handler that forgets is a hole in the
trail, and the calls that matter most for an audit are the ones a handler refuses early
(unauthenticated, wrong role, a permit refused). Wrapping every method of every service once,
at the server, leaves none out, including services added later.

What is written, per call (action ``rpc <Service>/<Method>``, actor the caller's identity as
`Access.actor` reads it, or "unauthenticated"):

* unary calls: one entry when the call ends, ``detail {"status": <gRPC status name>}`` and
  ``digest`` the SHA-256 of the request message (deterministic protobuf serialisation);
* streaming calls (NodeLink.Connect, StudyApi.Watch and GetResults, AuditApi.Export): one entry
  when the stream starts (``detail {"phase": "start"}``, with the request digest for a unary
  request) and one when it ends (``{"phase": "end", "status": ...}``).

The entries go through the DatabaseWorker like every write, queued without awaiting their
commit: the call does not wait for the audit, and the loop never blocks on SQL. Changes of
state are audited separately, in their own transaction (`state/transitions.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from ehds.audit import payload_digest
from ehds.coordinator.service.access import Access

__all__ = ["AuditInterceptor", "AuditSink", "rpc_action"]

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

OK: Final = grpc.StatusCode.OK.name

_Streaming = Callable[[Any, Context], AsyncIterator[Any]]
"""A streaming behaviour on grpc.aio (an async generator; the grpc stubs type it for the
synchronous server)."""


class AuditSink(Protocol):
    """Where the interceptor's entries go (`Governance.audit_rpc`)."""

    def audit_rpc(
        self, actor: str, action: str, *, digest: str = "", detail: dict[str, Any] | None = None
    ) -> object: ...


def rpc_action(method: str) -> str:
    """``/ehds.federation.v1.StudyApi/Submit`` -> ``rpc StudyApi/Submit``."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"rpc {service.rsplit('.', 1)[-1]}/{name}"


def _digest(request: object) -> str:
    if isinstance(request, Message):
        return payload_digest(request.SerializeToString(deterministic=True))
    return ""


def _status(context: Context, error: BaseException | None) -> str:
    """The status the call ended with: the one set (by abort or set_code), else OK, or
    CANCELLED / UNKNOWN for a call cancelled or failed with an exception."""
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    if error is not None:
        return grpc.StatusCode.UNKNOWN.name
    return OK


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """``sink`` records the entries; ``access`` names the caller."""

    def __init__(self, sink: Callable[[], AuditSink | None], access: Access) -> None:
        # A callable: the sink exists only once the server has started.
        self._sink = sink
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # not a method of ours: grpc answers UNIMPLEMENTED
        action = rpc_action(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(action, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(action, cast(_Streaming, handler.unary_stream), unary_request=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(action, cast(_Streaming, handler.stream_stream), unary_request=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(action, handler.stream_unary, unary_request=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - every handler has one of the four

    def _write(self, actor: str, action: str, digest: str, detail: dict[str, Any]) -> None:
        sink = self._sink()
        if sink is None:
            log.warning(
                "audit entry %s by %s not written: the coordinator is not started", action, actor
            )
            return
        sink.audit_rpc(actor, action, digest=digest, detail=detail)

    def _unary(
        self, action: str, behaviour: Callable[..., Any], *, unary_request: bool = True
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            actor = self._access.actor(context)
            digest = _digest(request) if unary_request else ""
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._write(actor, action, digest, {"status": _status(context, error)})

        return call

    def _stream(self, action: str, behaviour: _Streaming, *, unary_request: bool) -> _Streaming:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            actor = self._access.actor(context)
            digest = _digest(request) if unary_request else ""
            self._write(actor, action, digest, {"phase": "start"})
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._write(actor, action, "", {"phase": "end", "status": _status(context, error)})

        return call
