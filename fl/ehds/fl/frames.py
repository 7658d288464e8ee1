"""Length-prefixed JSON frames between our processes and Flower's ServerApp / ClientApp hosts.

A frame is a 4-byte big-endian length and that many bytes of one UTF-8 JSON object. The
prefix lets a reader take exactly one message off a pipe without a delimiter that could occur
inside a payload; the size cap stops a confused or hostile peer from making us allocate an
arbitrary amount. Binary payloads travel as base64 strings inside the JSON.

Standard library only: the coordinator and the node agent import this without Flower.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame that is truncated, oversized, or not one JSON object."""


def encode_frame(frame: Mapping[str, Any]) -> bytes:
    """The wire bytes (prefix and body) of one frame."""
    body = json.dumps(frame, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode(
        "utf-8"
    )
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte prefix; FrameError above the cap."""
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"announced frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a frame body; FrameError for anything else."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise FrameError("frame body is not UTF-8 JSON") from error
    if not isinstance(value, dict):
        raise FrameError("frame body is not a JSON object")
    return value


def write_frame(stream: BinaryIO, frame: Mapping[str, Any]) -> None:
    """Write one frame and flush, so the peer sees it without waiting for more."""
    stream.write(encode_frame(frame))
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream (EOF before any prefix byte)."""
    header = _read_exactly(stream, _HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise FrameError("stream ended inside a frame prefix")
    length = frame_length(header)
    body = _read_exactly(stream, length)
    if len(body) < length:
        raise FrameError("stream ended inside a frame body")
    return decode_body(body)


async def read_frame_async(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The asyncio twin of read_frame."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise FrameError("stream ended inside a frame prefix") from error
    length = frame_length(header)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as error:
        raise FrameError("stream ended inside a frame body") from error
    return decode_body(body)


async def write_frame_async(writer: asyncio.StreamWriter, frame: Mapping[str, Any]) -> None:
    """The asyncio twin of write_frame (waits for the transport to drain)."""
    writer.write(encode_frame(frame))
    await writer.drain()


def frame_channel() -> tuple[BinaryIO, BinaryIO]:
    """For a child process fed over stdin/stdout: stdin for frames in, a private copy of
    stdout for frames out, and stdout itself pointed at stderr, so that anything an app
    prints (or a library logs to stdout) lands in the log, never in the middle of a frame."""
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return sys.stdin.buffer, frames_out
