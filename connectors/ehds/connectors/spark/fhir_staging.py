"""FHIR bulk-export NDJSON and Bundles to staged rows, on Spark.

Spark reads the NDJSON files (``spark.read.text``; Hadoop decompresses ``.gz``, which makes a
gzip file one task, while a large plain file may be split between tasks) and each task maps
its lines with the FHIR connector's own ``stage_block`` (``map_line`` per line) inside
``mapInArrow``, so that validation, mapping, rejections and read counts are exactly the
embedded connector's. The wide rows (see ``staged_batches``) are written once under
``STAGE/target=<table>/``.

Locations: ``<name>:<line>`` as the embedded connector gives them (``name``: the file's path
relative to the folder argument) when a task reads a file from its start, which is always the
case for gzip files and for files smaller than a Spark split (128 MiB); a task that reads a
later split of a large plain file gives ``<name>@<byte offset>:<n>``, the n-th line after that
byte offset (Spark does not count lines across splits).

Bundles are single JSON documents: a task streams each one from its path with the connector's
own reader (``iter_entry_blocks``), so Bundle files must be readable by the executors under
the same path (always so in local mode; a shared file system on a cluster).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final, cast
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)
from pyspark.sql import types as T  # noqa: N812

from ehds.connectors.fhir.reader import SourceFile, find_sources
from ehds.connectors.spark.staged_batches import BATCH_ROWS, TARGET, BatchBuilder, output_schema
from ehds.core.errors import InputError

NDJSON: Final = "ndjson"
BUNDLE: Final = "bundle"
BLOCK_LINES: Final = 1_000


class FhirSourceError(InputError):
    """No FHIR file among the sources."""


def _local_path(uri: str) -> str:
    """A file URI as Spark's ``_metadata.file_path`` gives it, as a plain path."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("file", "") else uri


def _read_ndjson(spark: SparkSession, files: list[SourceFile]) -> DataFrame:
    frame = spark.read.text([str(f.path.resolve()) for f in files])
    return frame.select(
        F.col("value"),
        F.col("_metadata.file_path").alias("file_path"),
        F.col("_metadata.file_block_start").alias("block_start"),
        F.lit(NDJSON).alias("kind"),
    )


def _bundle_rows(spark: SparkSession, files: list[SourceFile]) -> DataFrame:
    schema = T.StructType(
        [
            T.StructField("value", T.StringType()),
            T.StructField("file_path", T.StringType()),
            T.StructField("block_start", T.LongType()),
            T.StructField("kind", T.StringType()),
        ]
    )
    rows = [(None, str(f.path.resolve()), 0, BUNDLE) for f in files]
    return spark.createDataFrame(rows, schema).repartition(max(1, min(len(rows), 64)))


class _Lines:
    """Consecutive NDJSON lines of one file split, shipped to ``stage_block`` as a block."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.source = ""
        self.next_line = 1
        self.lines: list[str] = []

    def start(self, key: tuple[str, int], name: str) -> None:
        self.key = key
        self.source = name if key[1] == 0 else f"{name}@{key[1]}"
        self.next_line = 1
        self.lines = []


def map_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    tables: tuple[str, ...],
    names: Mapping[str, str],
    validate: bool,
) -> Iterator[pa.RecordBatch]:
    """One task: its lines (in file order) and Bundles to wide staged batches."""
    # In the task: the connector's modules load in the Python worker.
    from ehds.connectors.fhir.pipeline import stage_block  # noqa: PLC0415
    from ehds.connectors.fhir.reader import LineBlock, iter_entry_blocks  # noqa: PLC0415
    from ehds.connectors.staging import StagingWriter  # noqa: PLC0415

    builder = BatchBuilder(tables)
    # BatchBuilder has StagingWriter's add/reject/count_read, which is all stage_block uses.
    sink = cast(StagingWriter, builder)
    pending = _Lines()

    def flush() -> None:
        if pending.lines:
            data = "\n".join(pending.lines).encode("utf-8")
            stage_block(LineBlock(pending.source, pending.next_line, data), sink, validate=validate)
            pending.next_line += len(pending.lines)
            pending.lines = []

    for batch in batches:
        columns = batch.to_pydict()
        for value, uri, start, kind in zip(
            columns["value"],
            columns["file_path"],
            columns["block_start"],
            columns["kind"],
            strict=True,
        ):
            path = _local_path(uri)
            name = names.get(path, Path(path).name)
            if kind == BUNDLE:
                for block in iter_entry_blocks(SourceFile(Path(path), name, BUNDLE)):
                    stage_block(block, sink, validate=validate)
                continue
            if pending.key != (path, start):
                flush()
                pending.start((path, start), name)
            pending.lines.append(value)
            if len(pending.lines) >= BLOCK_LINES:
                flush()
        if builder.pending() >= BATCH_ROWS:
            yield from builder.drain()
    flush()
    yield from builder.drain(final=True)


def find_inputs(sources: Sequence[Path]) -> list[SourceFile]:
    """The FHIR files of ``sources``, found as the embedded connector finds them."""
    found = find_sources(sources)
    if not found:
        raise FhirSourceError(
            "no FHIR file (*.ndjson[.gz], *.jsonl[.gz], *.json[.gz]) in "
            + ", ".join(str(s) for s in sources)
        )
    return found


def stage_fhir(
    spark: SparkSession,
    files: Sequence[SourceFile],
    stage_dir: Path,
    *,
    tables: tuple[str, ...],
    validate: bool = True,
) -> None:
    """Map every input record once and write the wide staged rows to ``stage_dir``."""
    ndjson = [f for f in files if f.kind == NDJSON]
    bundles = [f for f in files if f.kind == BUNDLE]
    frames = []
    if ndjson:
        frames.append(_read_ndjson(spark, ndjson))
    if bundles:
        frames.append(_bundle_rows(spark, bundles))
    if not frames:
        raise FhirSourceError("no FHIR input files")
    frame = functools.reduce(DataFrame.unionByName, frames)
    names = {str(f.path.resolve()): f.name for f in files}
    mapper = functools.partial(map_partition, tables=tables, names=names, validate=validate)
    staged = frame.mapInArrow(mapper, output_schema(tables))
    staged.write.mode("overwrite").partitionBy(TARGET).parquet(str(stage_dir.resolve()))


def read_staged(spark: SparkSession, stage_dir: Path, target: str) -> DataFrame:
    """The staged rows of ``target`` (an OMOP table, ``quarantine`` or ``read_count``)."""
    wide = spark.read.parquet(str(stage_dir.resolve()))
    return wide.where(F.col(TARGET) == target).select(f"{target}.*")
