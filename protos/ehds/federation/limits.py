"""Sizes both ends of the federation protocol enforce (see `PayloadChunk` in `common.proto`).

gRPC refuses a received message over 4 MiB by default. The protocol never raises that limit on
either side: a payload that could be larger (a result) travels as chunks, and anything sent in a
single message (parameters, reasons) has a bound well below it.
"""

from __future__ import annotations

from typing import Final

_MIB: Final = 1024 * 1024

MAX_MESSAGE_BYTES: Final = 4 * _MIB
"""gRPC's default receive limit, left as it is on every channel and server."""

MAX_CHUNK_BYTES: Final = 1 * _MIB
"""Most data bytes in one `PayloadChunk`: room for the envelope, and heartbeats can interleave."""

MAX_PARAMETERS_BYTES: Final = 1 * _MIB
"""Most bytes of a study's canonical-JSON parameters (checked by `StudyApi.Submit`)."""

MAX_OUTCOME_MESSAGE_CHARS: Final = 256
"""Longest `TaskOutcome.message`: a short fixed text, never data."""
