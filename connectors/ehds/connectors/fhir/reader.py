"""Finding and streaming FHIR sources: bulk-export NDJSON (plain or gzip) and Bundles.

Nothing is loaded whole. NDJSON is read in blocks of about ``BLOCK_BYTES`` cut at a line end,
so a worker process gets a block of complete lines and its first line number (the main
process never splits or parses lines: it only reads and decompresses). A Bundle is a single
JSON document; ``iter_bundle_entries`` walks its top-level object with the standard library's
``raw_decode`` and yields the ``entry`` elements one by one, holding at most one entry (and a
read block) in memory.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

from ehds.core.errors import InputError

BLOCK_BYTES: Final = 1 << 20
"""The size of an NDJSON block shipped to a worker (about a thousand Synthea resources)."""

NDJSON_SUFFIXES: Final = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
BUNDLE_SUFFIXES: Final = (".json", ".json.gz")


class FhirSourceError(InputError):
    """A FHIR source path is missing or is not an NDJSON or Bundle file."""


@dataclass(frozen=True)
class SourceFile:
    """One input file; ``name`` (its path relative to the argument that named it) prefixes
    every location (``name:line``)."""

    path: Path
    name: str
    kind: str  # "ndjson" | "bundle"


@dataclass(frozen=True)
class LineBlock:
    """Complete NDJSON lines of one file; ``first_line`` is the 1-based number of the first."""

    source: str
    first_line: int
    data: bytes


@dataclass(frozen=True)
class EntryBlock:
    """Parsed Bundle entries: (location, entry) pairs, or a location and a parse failure."""

    source: str
    entries: list[tuple[str, Any]]
    """A resource dict, None for an entry without one, or the raw text of a single-resource
    file."""
    failure: tuple[str, str] | None = None  # (location, detail) when the Bundle is malformed


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if name.endswith(BUNDLE_SUFFIXES):
        return "bundle"
    return None


def find_sources(paths: Iterable[Path]) -> list[SourceFile]:
    """The FHIR files named by ``paths``: files as given, folders searched recursively for
    ``*.ndjson[.gz]``/``*.jsonl[.gz]`` and ``*.json[.gz]`` (other files in a folder are ignored;
    a file given by name must have one of those suffixes)."""
    found: list[SourceFile] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                kind = _kind(file)
                if kind is not None:
                    found.append(SourceFile(file, file.relative_to(path).as_posix(), kind))
        elif path.is_file():
            kind = _kind(path)
            if kind is None:
                expected = ", ".join(NDJSON_SUFFIXES + BUNDLE_SUFFIXES)
                raise FhirSourceError(f"{path}: not a FHIR source (expected {expected})")
            found.append(SourceFile(path, path.name, kind))
        else:
            raise FhirSourceError(f"{path}: no such file or folder")
    return found


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in ``.gz``."""
    if path.name.lower().endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def iter_line_blocks(source: SourceFile, block_bytes: int = BLOCK_BYTES) -> Iterator[LineBlock]:
    """The file's lines in blocks of whole lines (the last line may lack its newline)."""
    line = 1
    carry = b""
    with open_binary(source.path) as stream:
        while True:
            chunk = stream.read(block_bytes)
            if not chunk:
                break
            data = carry + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            block, carry = data[: cut + 1], data[cut + 1 :]
            yield LineBlock(source.name, line, block)
            line += block.count(b"\n")
    if carry:
        yield LineBlock(source.name, line, carry)


def split_lines(block: LineBlock) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for the non-blank lines of a block."""
    number = block.first_line
    for line in block.data.split(b"\n"):
        if line.strip():
            yield number, line
        number += 1


class BundleFormatError(Exception):
    """The Bundle's JSON is malformed at ``where`` (an entry index or 'top level')."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where
        self.detail = detail


class NotABundleError(Exception):
    """The ``.json`` file holds a single resource, not a Bundle."""


_WHITESPACE: Final = " \t\n\r"


class _Cursor:
    """A read position over a text stream that is read in blocks as parsing needs."""

    def __init__(self, stream: IO[str], block_chars: int) -> None:
        self._stream = stream
        self._block = block_chars
        self.text = ""
        self.pos = 0
        self.eof = False
        self._decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self._stream.read(self._block)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._fill():
                return ""

    def take(self, where: str, *expected: str) -> str:
        char = self.peek()
        if char not in expected or not char:
            raise BundleFormatError(where, f"expected one of {' '.join(expected)}")
        self.pos += 1
        return char

    def value(self, where: str) -> Any:
        """The next JSON value; reads more until it is complete."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if not self._fill():
                    raise BundleFormatError(where, "malformed or truncated JSON") from None
                continue
            if end >= len(self.text) and not self.eof and self._fill():
                continue  # a number or literal may continue in the next block
            self.pos = end
            return value


def iter_bundle_entries(
    stream: IO[str], block_chars: int = BLOCK_BYTES
) -> Iterator[tuple[int, Any]]:
    """(index, entry) for each element of a Bundle's top-level ``entry`` array, streaming.

    Raises ``NotABundleError`` when the top-level ``resourceType`` is not ``Bundle`` (checked when
    it comes before ``entry``, as every server writes it) and ``BundleFormatError`` on malformed
    JSON (entries yielded before it stand)."""
    cursor = _Cursor(stream, block_chars)
    cursor.take("top level", "{")
    if cursor.peek() == "}":
        return
    while True:
        key = cursor.value("top level")
        if not isinstance(key, str):
            raise BundleFormatError("top level", "expected a member name")
        cursor.take("top level", ":")
        if key == "entry":
            cursor.take("entry", "[")
            index = 0
            if cursor.peek() == "]":
                cursor.pos += 1
            else:
                while True:
                    yield index, cursor.value(f"entry/{index}")
                    if cursor.take(f"entry/{index}", ",", "]") == "]":
                        break
                    index += 1
        else:
            value = cursor.value(key)
            if key == "resourceType" and value != "Bundle":
                raise NotABundleError(str(value))
        if cursor.take("top level", ",", "}") == "}":
            return


def iter_entry_blocks(source: SourceFile, batch: int = 500) -> Iterator[EntryBlock]:
    """A Bundle file's entries' resources in blocks of ``batch``, located ``name:entry/<i>``.
    A file holding a single resource (not a Bundle) yields that resource, read whole."""
    entries: list[tuple[str, Any]] = []
    try:
        with open_binary(source.path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as stream:
            for index, entry in iter_bundle_entries(stream):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                entries.append((f"{source.name}:entry/{index}", resource))
                if len(entries) >= batch:
                    yield EntryBlock(source.name, entries)
                    entries = []
    except NotABundleError:
        with open_binary(source.path) as raw:
            yield EntryBlock(
                source.name, [(f"{source.name}:1", raw.read().decode("utf-8", "replace"))]
            )
        return
    except BundleFormatError as error:
        yield EntryBlock(source.name, entries, (f"{source.name}:{error.where}", error.detail))
        return
    except UnicodeDecodeError:
        yield EntryBlock(source.name, entries, (f"{source.name}:top level", "not valid UTF-8"))
        return
    if entries:
        yield EntryBlock(source.name, entries)
