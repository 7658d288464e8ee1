"""Staging FHIR sources with worker processes: the main process reads, the workers map.

Validation by ``fhir.resources`` costs about 150 µs of CPU per resource, twenty times the JSON
parse, so the work is spread over ``workers`` processes: the main process only reads and
decompresses blocks of whole lines (``reader.iter_line_blocks``) and puts them on a bounded
queue (memory stays bounded: at most ``QUEUE_BLOCKS_PER_WORKER`` blocks per worker wait);
each worker splits its blocks into lines, runs ``records.map_line`` and writes its own staging
part (``fhir-w<n>``), read counts and rejections included. With ``workers=1`` everything runs in
this process (no child, easier to debug).

Workers are started with ``spawn``: the parent may hold threads (DuckDB, a gRPC server in the
node) that ``fork`` would copy in an undefined state.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final

from ehds.connectors.fhir.reader import (
    EntryBlock,
    LineBlock,
    SourceFile,
    iter_entry_blocks,
    iter_line_blocks,
    split_lines,
)
from ehds.connectors.fhir.records import UNKNOWN_TYPE, map_line, map_resource
from ehds.connectors.rejection import Rejection
from ehds.connectors.staging import StagingArea, StagingWriter
from ehds.core.errors import StateError

QUEUE_BLOCKS_PER_WORKER: Final = 2
POLL_S: Final = 1.0

Block = LineBlock | EntryBlock


class FhirWorkerError(StateError):
    """A worker process failed (its traceback names where); nothing was committed."""


def iter_blocks(sources: Sequence[SourceFile]) -> Iterator[Block]:
    """Every source's blocks, in source order."""
    for source in sources:
        if source.kind == "ndjson":
            yield from iter_line_blocks(source)
        else:
            yield from iter_entry_blocks(source)


def stage_block(block: Block, writer: StagingWriter, *, validate: bool) -> None:
    """Map one block's resources into ``writer`` (rows, rejections, read counts)."""
    counts: Counter[str] = Counter()
    if isinstance(block, LineBlock):
        for number, line in split_lines(block):
            rows, rejection, resource_type = map_line(
                line, f"{block.source}:{number}", validate=validate
            )
            counts[resource_type] += 1
            for table, row in rows:
                writer.add(table, row)
            if rejection is not None:
                writer.reject(rejection)
    else:
        for location, resource in block.entries:
            if isinstance(resource, str):
                rows, rejection, resource_type = map_line(resource, location, validate=validate)
            elif isinstance(resource, dict):
                rows, rejection, resource_type = map_resource(resource, location, validate=validate)
            else:
                rows, resource_type = [], UNKNOWN_TYPE
                rejection = Rejection(
                    block.source,
                    location,
                    UNKNOWN_TYPE,
                    None,
                    "fhir.invalid_resource",
                    "the Bundle entry has no resource object",
                )
            counts[resource_type] += 1
            for table, row in rows:
                writer.add(table, row)
            if rejection is not None:
                writer.reject(rejection)
        if block.failure is not None:
            location, detail = block.failure
            counts[UNKNOWN_TYPE] += 1
            writer.reject(
                Rejection(block.source, location, UNKNOWN_TYPE, None, "fhir.invalid_json", detail)
            )
    for resource_type, n in counts.items():
        writer.count_read(resource_type, n)


def stage_sources(
    area: StagingArea, sources: Sequence[SourceFile], *, workers: int, validate: bool
) -> None:
    """Stage every source into ``area``, in this process (``workers <= 1``) or in workers."""
    if workers <= 1:
        with area.writer("fhir-w0") as writer:
            for block in iter_blocks(sources):
                stage_block(block, writer, validate=validate)
        return
    context = multiprocessing.get_context("spawn")
    tasks: multiprocessing.Queue[Block | None] = context.Queue(workers * QUEUE_BLOCKS_PER_WORKER)
    results: multiprocessing.Queue[tuple[str, str | None]] = context.Queue()
    processes = [
        context.Process(
            target=_work,
            args=(area.root, f"fhir-w{n}", validate, tasks, results),
            name=f"fhir-stage-{n}",
            daemon=True,
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for block in iter_blocks(sources):
            _put(tasks, block, processes, results)
        for _ in processes:
            _put(tasks, None, processes, results)
        failures = [error for _, error in (_get(results, processes) for _ in processes) if error]
    finally:
        for process in processes:
            process.join(timeout=POLL_S if process.exitcode is None else None)
            if process.is_alive():
                process.terminate()
                process.join()
        tasks.close()
        results.close()
    if failures:
        raise FhirWorkerError(f"a FHIR staging worker failed:\n{failures[0]}")


def _put(
    tasks: multiprocessing.Queue[Block | None],
    item: Block | None,
    processes: Sequence[BaseProcess],
    results: multiprocessing.Queue[tuple[str, str | None]],
) -> None:
    while True:
        try:
            tasks.put(item, timeout=POLL_S)
            return
        except queue.Full:
            # No worker may end before its sentinel: one that did has failed.
            _check_alive(processes, results, ended_ok=False)


def _get(
    results: multiprocessing.Queue[tuple[str, str | None]], processes: Sequence[BaseProcess]
) -> tuple[str, str | None]:
    while True:
        try:
            return results.get(timeout=POLL_S)
        except queue.Empty:
            _check_alive(processes, results, ended_ok=True)


def _check_alive(
    processes: Sequence[BaseProcess],
    results: multiprocessing.Queue[tuple[str, str | None]],
    *,
    ended_ok: bool,
) -> None:
    for process in processes:
        code = process.exitcode
        if code is None or (ended_ok and code == 0):
            continue
        try:
            _, reported = results.get(timeout=POLL_S)
        except queue.Empty:
            reported = None
        raise FhirWorkerError(
            f"FHIR staging worker {process.name} ended (exit code {code})"
            + (f":\n{reported}" if reported else "")
        )


def _work(
    root: Path,
    part: str,
    validate: bool,
    tasks: multiprocessing.Queue[Block | None],
    results: multiprocessing.Queue[tuple[str, str | None]],
) -> None:
    """A worker's loop: map blocks until the sentinel, then write what is buffered."""
    try:
        with StagingArea(root).writer(part) as writer:
            while (block := tasks.get()) is not None:
                stage_block(block, writer, validate=validate)
    except BaseException:  # reported to the parent, which raises it as FhirWorkerError
        results.put((part, traceback.format_exc(limit=8)))
        raise SystemExit(1) from None
    results.put((part, None))
