"""A larger bulk export from a small one: every patient replicated with new ids.

``replicate(src_dir, out_dir, copies)`` writes each NDJSON file of ``src_dir`` to ``out_dir``
``copies`` times over. Copy 0 is the source unchanged; in copy ``k`` every UUID in the text
(resource ids, ``Patient/<id>`` and ``urn:uuid:<id>`` references, conditional references'
identifiers) becomes ``uuid5(NAMESPACE, "<k>:<uuid>")``, so references stay consistent within a
copy, copies never share an id, and the output is the same on every run. Used by
``bench/bench_fhir.py`` and the demo; lines are streamed, nothing is loaded whole.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final, cast

from ehds.connectors.fhir.reader import NDJSON_SUFFIXES, FhirSourceError, open_binary

NAMESPACE: Final = uuid.UUID("6f1c2d0e-4a57-5b8e-9c3d-2e8f1a0b7c64")
UUID_PATTERN: Final = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def _renamer(copy: int) -> Callable[[re.Match[bytes]], bytes]:
    cache: dict[bytes, bytes] = {}

    def rename(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        new = cache.get(old)
        if new is None:
            new = str(uuid.uuid5(NAMESPACE, f"{copy}:{old.decode('ascii').lower()}")).encode()
            cache[old] = new
        return new

    return rename


def replicate(src_dir: Path, out_dir: Path, copies: int, *, compress: bool = True) -> list[Path]:
    """Write ``copies`` copies of every NDJSON file of ``src_dir`` (same names, ``.ndjson.gz``
    when ``compress`` else ``.ndjson``) into ``out_dir``; returns the files written."""
    if copies < 1:
        raise FhirSourceError(f"copies must be at least 1, got {copies}")
    sources = sorted(
        p for p in src_dir.iterdir() if p.is_file() and p.name.lower().endswith(NDJSON_SUFFIXES)
    )
    if not sources:
        raise FhirSourceError(f"{src_dir}: no NDJSON files to replicate")
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / (_stem(source) + (".gz" if compress else "")) for source in sources]
    with contextlib.ExitStack() as stack:
        sinks = [stack.enter_context(_open_out(target, compress)) for target in targets]
        for copy in range(copies):
            rename = _renamer(copy)  # one cache per copy: memory stays that of one copy's ids
            for source, sink in zip(sources, sinks, strict=True):
                with open_binary(source) as stream:
                    for raw in stream:
                        if not raw.strip():
                            continue
                        line = raw if raw.endswith(b"\n") else raw + b"\n"
                        sink.write(line if copy == 0 else UUID_PATTERN.sub(rename, line))
    return targets


def _stem(source: Path) -> str:
    return source.name[: -len(".gz")] if source.name.lower().endswith(".gz") else source.name


def _open_out(path: Path, compress: bool) -> IO[bytes]:
    if compress:
        return cast(IO[bytes], gzip.open(path, "wb", compresslevel=1))
    return path.open("wb")
