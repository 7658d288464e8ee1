"""Splitting a payload into `PayloadChunk`s and putting it back together.

Why: gRPC refuses messages over 4 MiB and the protocol never raises that limit (see
`PayloadChunk` in `common.proto`), so a result travels as chunks of at most
`MAX_CHUNK_BYTES`. Both ends use this module so that the rules are applied identically: chunks
in order from index 0, the same count in every chunk, the content type in the first, the SHA-256
of the whole payload in the last, and a re-send starting over at index 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ehds.core.errors import InputError
from ehds.federation.limits import MAX_CHUNK_BYTES
from ehds.federation.model import PayloadChunk

__all__ = [
    "AssembledPayload",
    "PayloadAssembler",
    "PayloadDigestError",
    "PayloadError",
    "split_payload",
]

SHA256_BYTES = 32


class PayloadError(InputError):
    """The peer's chunks break the chunking rules; the receiver ends the stream
    (INVALID_ARGUMENT) and the sender starts the payload over after reconnecting."""


class PayloadDigestError(PayloadError):
    """The reassembled payload does not match the digest in its last chunk: bytes were lost or
    altered on the way (the receiver answers DATA_LOSS)."""


@dataclass(frozen=True)
class AssembledPayload:
    data: bytes
    sha256: bytes
    content_type: str


def split_payload(data: bytes, content_type: str) -> list[PayloadChunk]:
    """`data` as chunks of at most MAX_CHUNK_BYTES; an empty payload is one empty chunk."""
    count = max(1, -(-len(data) // MAX_CHUNK_BYTES))
    digest = hashlib.sha256(data).digest()
    view = memoryview(data)
    return [
        PayloadChunk(
            index=index,
            count=count,
            data=bytes(view[index * MAX_CHUNK_BYTES : (index + 1) * MAX_CHUNK_BYTES]),
            sha256=digest if index == count - 1 else b"",
            content_type=content_type if index == 0 else "",
        )
        for index in range(count)
    ]


class PayloadAssembler:
    """Reassembles one payload (one per task or per download) from chunks received in order.

    A chunk with index 0 always starts the payload over, dropping a partial copy: that is how a
    sender re-sends after a reconnect. Any other rule broken raises `PayloadError` and drops the
    partial copy too. `max_bytes` bounds the memory a peer can make this hold.
    """

    def __init__(self, *, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._count = 0
        self._content_type = ""
        self._hash = hashlib.sha256()

    @property
    def in_progress(self) -> bool:
        """Whether a payload has started and not yet completed."""
        return self._count > 0

    def reset(self) -> None:
        self._parts = []
        self._size = 0
        self._count = 0
        self._content_type = ""
        self._hash = hashlib.sha256()

    def add(self, chunk: PayloadChunk) -> AssembledPayload | None:
        """The payload once `chunk` completes it, else None; `PayloadError` if a rule is broken."""
        try:
            return self._add(chunk)
        except PayloadError:
            self.reset()
            raise

    def _add(self, chunk: PayloadChunk) -> AssembledPayload | None:
        if chunk.count < 1:
            raise PayloadError(f"chunk count is {chunk.count} (expected at least 1)")
        if chunk.index >= chunk.count:
            raise PayloadError(f"chunk index {chunk.index} is not below its count {chunk.count}")
        if len(chunk.data) > MAX_CHUNK_BYTES:
            raise PayloadError(
                f"chunk {chunk.index} has {len(chunk.data)} bytes (at most {MAX_CHUNK_BYTES})"
            )
        if chunk.index == 0:
            self.reset()
            self._count = chunk.count
            self._content_type = chunk.content_type
        elif not self.in_progress:
            raise PayloadError(f"chunk {chunk.index} arrived before chunk 0")
        elif chunk.index != len(self._parts):
            raise PayloadError(
                f"chunk {chunk.index} arrived out of order (expected chunk {len(self._parts)})"
            )
        elif chunk.count != self._count:
            raise PayloadError(
                f"chunk {chunk.index} says the payload has {chunk.count} chunks "
                f"(chunk 0 said {self._count})"
            )
        self._size += len(chunk.data)
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise PayloadError(f"payload exceeds {self._max_bytes} bytes")
        self._parts.append(chunk.data)
        self._hash.update(chunk.data)
        if chunk.index < self._count - 1:
            return None
        digest = self._hash.digest()
        if len(chunk.sha256) != SHA256_BYTES:
            raise PayloadError(
                f"last chunk carries a {len(chunk.sha256)}-byte digest "
                f"(expected a {SHA256_BYTES}-byte SHA-256)"
            )
        if chunk.sha256 != digest:
            raise PayloadDigestError("payload does not match the SHA-256 in its last chunk")
        payload = AssembledPayload(b"".join(self._parts), digest, self._content_type)
        self.reset()
        return payload
