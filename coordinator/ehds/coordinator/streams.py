"""The live NodeLink streams: one `NodeSession` per connected node, and the registry of them.

Why a queue per stream and no thread: the coordinator must hold thousands of streams in one
process. A session is a small object with an asyncio queue of outgoing messages; the stream's
handler coroutine writes whatever appears in it. Pushing a task to a node is therefore a
`put_nowait`, and dispatching a study to a thousand nodes awaits nothing per node.

Closing a stream from elsewhere (a revocation, a newer stream of the same node, missed
heartbeats, shutdown) sets the session's close status and wakes the writer, which ends the RPC
with that status before writing anything else. The status is a protocol-neutral `CloseCode`;
the gRPC adapter maps it to a gRPC status code (this module does not import grpc).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Final

from ehds.federation.chunks import PayloadAssembler
from ehds.federation.model import CoordinatorMessage, NodeProfile, ProtocolVersion

__all__ = ["CloseCode", "CloseStatus", "NodeSession", "NodeStreams"]

MAX_OPEN_PAYLOADS: Final = 64
"""Results a node may be sending at once (partial payloads held in memory)."""


class CloseCode(Enum):
    """How a stream ends; names match gRPC status codes."""

    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class CloseStatus:
    code: CloseCode
    details: str


class _Wakeup:
    """Queued to wake the writer when the session is closed."""


_WAKEUP: Final = _Wakeup()


class NodeSession:
    """One open NodeLink stream of one node."""

    __slots__ = (
        "_close",
        "_queue",
        "assemblers",
        "audit_head",
        "certificate_pem",
        "connected_at",
        "dirty",
        "last_seen",
        "last_seen_monotonic",
        "name",
        "profile",
        "reconciled",
        "version",
    )

    def __init__(
        self,
        name: str,
        profile: NodeProfile,
        version: ProtocolVersion,
        certificate_pem: bytes | None,
    ) -> None:
        self.name = name
        self.profile = profile
        self.version = version
        self.certificate_pem = certificate_pem
        self.connected_at = datetime.now(UTC)
        self.last_seen = self.connected_at
        self.last_seen_monotonic = time.monotonic()
        # last_seen changed since it was last written to the database.
        self.dirty = False
        # The first Heartbeat after connect reconciles in-flight tasks; later ones do not.
        self.reconciled = False
        self.assemblers: dict[str, PayloadAssembler] = {}
        # (seq, hash) of the node's audit chain head last recorded in the coordinator's chain.
        self.audit_head: tuple[int, str] | None = None
        self._queue: asyncio.Queue[CoordinatorMessage | _Wakeup] = asyncio.Queue()
        self._close: CloseStatus | None = None

    @property
    def closed(self) -> CloseStatus | None:
        return self._close

    def seen(self) -> None:
        self.last_seen = datetime.now(UTC)
        self.last_seen_monotonic = time.monotonic()
        self.dirty = True

    def send(self, message: CoordinatorMessage) -> bool:
        """Queue ``message``; False if the stream is closing (the message is dropped: whatever
        it carried is re-sent when the node reconnects)."""
        if self._close is not None:
            return False
        self._queue.put_nowait(message)
        return True

    def close(self, code: CloseCode, details: str) -> None:
        """End the stream with this status (the first close wins)."""
        if self._close is None:
            self._close = CloseStatus(code, details)
            self._queue.put_nowait(_WAKEUP)

    async def next_outgoing(self) -> CoordinatorMessage | CloseStatus:
        """The next message to write, or the close status once the session is closed (even
        with messages still queued)."""
        while True:
            status = self._status()
            if status is not None:
                return status
            item = await self._queue.get()
            status = self._status()
            if status is not None:
                return status
            if not isinstance(item, _Wakeup):
                return item

    def _status(self) -> CloseStatus | None:
        return self._close

    def assembler(self, task_id: str, max_bytes: int) -> PayloadAssembler | None:
        """The assembler of ``task_id``'s result; None if the node has too many open."""
        assembler = self.assemblers.get(task_id)
        if assembler is None:
            if len(self.assemblers) >= MAX_OPEN_PAYLOADS:
                return None
            assembler = self.assemblers[task_id] = PayloadAssembler(max_bytes=max_bytes)
        return assembler


class NodeStreams:
    """Connected nodes by name: at most one live session per node."""

    def __init__(self) -> None:
        self._sessions: dict[str, NodeSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[NodeSession]:
        return iter(list(self._sessions.values()))

    def get(self, name: str) -> NodeSession | None:
        return self._sessions.get(name)

    def register(self, session: NodeSession) -> NodeSession | None:
        """Make ``session`` the node's live stream; returns the one it replaces (the caller
        closes it: a node reconnecting after a network cut often finds its old stream still
        open here, half-dead)."""
        previous = self._sessions.get(session.name)
        self._sessions[session.name] = session
        return previous

    def unregister(self, session: NodeSession) -> bool:
        """Forget ``session`` if it is still the node's live one; False if a newer one is."""
        if self._sessions.get(session.name) is session:
            del self._sessions[session.name]
            return True
        return False

    def profiles(self) -> dict[str, NodeProfile]:
        """A copy, safe to hand to the database thread."""
        return {name: session.profile for name, session in self._sessions.items()}

    def names(self) -> frozenset[str]:
        return frozenset(self._sessions)

    def send(self, name: str, message: CoordinatorMessage) -> bool:
        session = self._sessions.get(name)
        return session is not None and session.send(message)
