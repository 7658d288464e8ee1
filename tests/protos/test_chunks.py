"""`ehds.federation.chunks`: payloads split under gRPC's 4 MiB limit and reassembled exactly.

Why: a chunking bug either loses result bytes or lets a peer make the receiver accept a
payload out of order or altered; the boundaries (exactly one chunk, one byte over) are where
such bugs live.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from ehds.core.errors import InputError
from ehds.federation.chunks import (
    AssembledPayload,
    PayloadAssembler,
    PayloadDigestError,
    PayloadError,
    split_payload,
)
from ehds.federation.limits import MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES
from ehds.federation.model import PayloadChunk
from ehds.federation.serde import encode_chunk

JSON = "application/json"


def _assemble(chunks: list[PayloadChunk]) -> AssembledPayload:
    assembler = PayloadAssembler()
    for chunk in chunks[:-1]:
        assert assembler.add(chunk) is None
    payload = assembler.add(chunks[-1])
    assert payload is not None
    assert not assembler.in_progress
    return payload


@pytest.mark.parametrize(
    ("size", "count"),
    [
        (0, 1),
        (1, 1),
        (MAX_CHUNK_BYTES - 1, 1),
        (MAX_CHUNK_BYTES, 1),
        (MAX_CHUNK_BYTES + 1, 2),
        (2 * MAX_CHUNK_BYTES, 2),
        (MAX_MESSAGE_BYTES + 1, 5),
    ],
)
def test_split_and_assemble_at_the_boundaries(size: int, count: int) -> None:
    data = os.urandom(size)
    chunks = split_payload(data, JSON)
    assert len(chunks) == count
    assert [c.index for c in chunks] == list(range(count))
    assert all(c.count == count for c in chunks)
    assert all(len(c.data) == MAX_CHUNK_BYTES for c in chunks[:-1])
    assert 0 < len(chunks[-1].data) <= MAX_CHUNK_BYTES or size == 0
    assert [c.content_type for c in chunks] == [JSON] + [""] * (count - 1)
    digest = hashlib.sha256(data).digest()
    assert [c.sha256 for c in chunks] == [b""] * (count - 1) + [digest]
    # Each chunk fits in one gRPC message with room to spare.
    assert all(encode_chunk(c).ByteSize() < MAX_MESSAGE_BYTES // 2 for c in chunks)
    assert _assemble(chunks) == AssembledPayload(data, digest, JSON)


def test_an_empty_payload_is_one_empty_chunk() -> None:
    (chunk,) = split_payload(b"", "text/plain")
    assert chunk == PayloadChunk(0, 1, b"", hashlib.sha256(b"").digest(), "text/plain")
    assert _assemble([chunk]).data == b""


def test_chunk_zero_restarts_and_replaces_a_partial_copy() -> None:
    first = split_payload(os.urandom(2 * MAX_CHUNK_BYTES + 10), JSON)
    second = split_payload(b"a shorter payload sent after a reconnect", "text/plain")
    assembler = PayloadAssembler()
    assert assembler.add(first[0]) is None
    assert assembler.add(first[1]) is None
    assert assembler.in_progress
    payload = assembler.add(second[0])
    assert payload is not None
    assert payload.data == b"a shorter payload sent after a reconnect"
    assert payload.content_type == "text/plain"
    # And the assembler takes the next payload from scratch.
    for chunk in first[:-1]:
        assert assembler.add(chunk) is None
    again = assembler.add(first[-1])
    assert again is not None
    assert again.sha256 == first[-1].sha256


def _three_chunks() -> list[PayloadChunk]:
    return split_payload(os.urandom(2 * MAX_CHUNK_BYTES + 1), JSON)


def test_a_chunk_out_of_order_is_rejected() -> None:
    chunks = _three_chunks()
    assembler = PayloadAssembler()
    assembler.add(chunks[0])
    with pytest.raises(PayloadError, match="out of order"):
        assembler.add(chunks[2])
    assert not assembler.in_progress
    with pytest.raises(PayloadError, match="before chunk 0"):
        assembler.add(chunks[1])
    assembler.add(chunks[0])
    assembler.add(chunks[1])
    with pytest.raises(PayloadError, match="out of order"):
        assembler.add(chunks[1])


def test_a_changed_count_is_rejected() -> None:
    chunks = _three_chunks()
    assembler = PayloadAssembler()
    assembler.add(chunks[0])
    with pytest.raises(PayloadError, match="chunk 0 said 3"):
        assembler.add(dataclasses.replace(chunks[1], count=4))


def test_a_bad_digest_is_rejected() -> None:
    chunks = _three_chunks()
    altered = dataclasses.replace(chunks[1], data=bytes(len(chunks[1].data)))
    assembler = PayloadAssembler()
    assembler.add(chunks[0])
    assembler.add(altered)
    with pytest.raises(PayloadDigestError, match="SHA-256") as failure:
        assembler.add(chunks[2])
    assert isinstance(failure.value, PayloadError)
    assert isinstance(failure.value, InputError)
    assert not assembler.in_progress


def test_a_missing_or_short_digest_is_rejected() -> None:
    (chunk,) = split_payload(b"data", JSON)
    with pytest.raises(PayloadError, match="0-byte digest"):
        PayloadAssembler().add(dataclasses.replace(chunk, sha256=b""))
    with pytest.raises(PayloadError, match="3-byte digest"):
        PayloadAssembler().add(dataclasses.replace(chunk, sha256=b"abc"))


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (PayloadChunk(0, 0, b""), "count is 0"),
        (PayloadChunk(3, 3, b""), "index 3 is not below its count 3"),
        (PayloadChunk(0, 2, bytes(MAX_CHUNK_BYTES + 1)), "at most"),
    ],
)
def test_malformed_chunks_are_rejected(chunk: PayloadChunk, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        PayloadAssembler().add(chunk)


def test_max_bytes_bounds_what_a_peer_can_make_the_receiver_hold() -> None:
    chunks = _three_chunks()
    assembler = PayloadAssembler(max_bytes=MAX_CHUNK_BYTES + 10)
    assembler.add(chunks[0])
    with pytest.raises(PayloadError, match="exceeds"):
        assembler.add(chunks[1])
    assert not assembler.in_progress
