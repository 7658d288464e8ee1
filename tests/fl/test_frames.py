"""Length-prefixed JSON frames: round trip, clean EOF, and every malformed shape refused."""

from __future__ import annotations

import asyncio
import io
import struct

import pytest

from ehds.fl import frames
from ehds.fl.frames import (
    FrameError,
    encode_frame,
    read_frame,
    read_frame_async,
    write_frame,
)


def test_frames_round_trip_in_order_then_none_at_eof() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"op": "push", "messages": [{"node": "a", "message": "AAE="}]})
    write_frame(stream, {"op": "done", "summary": {"x": 1.5, "ü": None}})
    stream.seek(0)
    assert read_frame(stream) == {"op": "push", "messages": [{"node": "a", "message": "AAE="}]}
    assert read_frame(stream) == {"op": "done", "summary": {"x": 1.5, "ü": None}}
    assert read_frame(stream) is None


def test_prefix_is_big_endian_length_of_utf8_json() -> None:
    data = encode_frame({"a": "é"})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert data[4:].decode("utf-8") == '{"a":"é"}'


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00",  # cut inside the prefix
        struct.pack(">I", 10) + b"{}",  # cut inside the body
        struct.pack(">I", 2) + b"[]",  # not an object
        struct.pack(">I", 2) + b"\xff\xfe",  # not UTF-8
        struct.pack(">I", 3) + b"{x}",  # not JSON
    ],
)
def test_malformed_frames_are_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(data))


def test_oversized_frames_are_refused_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(struct.pack(">I", frames.MAX_FRAME_BYTES + 1)))
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", 16)
    with pytest.raises(FrameError):
        encode_frame({"payload": "x" * 32})


def test_non_finite_numbers_are_not_written() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode_frame({"loss": float("nan")})


def test_async_reader_and_writer_match_the_sync_ones() -> None:
    async def scenario() -> list[object]:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame({"op": "wait", "timeout": None}))
        reader.feed_data(encode_frame({"op": "pull"}))
        reader.feed_eof()
        got: list[object] = [await read_frame_async(reader), await read_frame_async(reader)]
        got.append(await read_frame_async(reader))
        truncated = asyncio.StreamReader()
        truncated.feed_data(encode_frame({"op": "x"})[:-1])
        truncated.feed_eof()
        with pytest.raises(FrameError):
            await read_frame_async(truncated)
        return got

    assert asyncio.run(scenario()) == [{"op": "wait", "timeout": None}, {"op": "pull"}, None]
