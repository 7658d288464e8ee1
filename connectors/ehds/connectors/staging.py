"""The staging area: what a connector writes, and all the commit reads.

A connector maps source records to **staged rows** (OMOP columns plus source keys and
source codes, see ``staged_schema``) and writes them as Parquet parts, one folder per OMOP
table, without touching the target database::

    STAGE/condition_occurrence/part-<part>-<n>.parquet     staged rows
    STAGE/_quarantine/part-<part>-<n>.parquet              rejections (``REJECTION_SCHEMA``)
    STAGE/_counts/part-<part>.json                         records read per source type

Parts are independent files, so worker processes stage in parallel (each with its own
``StagingArea.writer(part)``), and a SQL connector may produce a whole table at once
(``add_parquet``). Rows are typed when written: a value of the wrong type fails here, named by
table and column, not deep in the commit.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from ehds.connectors.ids import (
    CODE_SUFFIX,
    KEY,
    KEY_SUFFIX,
    SOURCE,
    VOCAB_SUFFIX,
    concept_columns,
    fk_columns,
    id_column,
    omop_table,
)
from ehds.connectors.rejection import QUARANTINE_DIR, REJECTION_SCHEMA, Rejection
from ehds.core.errors import InputError

FLUSH_ROWS = 50_000
COUNTS_DIR = "_counts"


class StagingError(InputError):
    """A staged row or file does not fit the staged schema of its table."""


def arrow_type(column: sa.Column[object]) -> pa.DataType:
    """The Arrow type of a model column (the types the staged Parquet carries)."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return pa.timestamp("us")
    if isinstance(kind, sa.Date):
        return pa.date32()
    if isinstance(kind, sa.Integer):
        return pa.int64() if isinstance(kind, sa.BigInteger) else pa.int32()
    if isinstance(kind, sa.Double | sa.Float | sa.Numeric):
        return pa.float64()
    return pa.string()


@cache
def staged_schema(table: str) -> pa.Schema:
    """The columns a staged row of ``table`` may carry: the OMOP columns but the id column,
    ``_key`` (required), ``_source``, ``<fk>__key`` per FK column and ``X__vocab``/``X__code``
    per concept column."""
    model = omop_table(table)
    own = id_column(table)
    fields = [pa.field(KEY, pa.string(), nullable=False), pa.field(SOURCE, pa.string())]
    fields += [pa.field(c.name, arrow_type(c)) for c in model.columns if c.name != own]
    fields += [pa.field(fk + KEY_SUFFIX, pa.string()) for fk in fk_columns(table)]
    for concept in concept_columns(table):
        fields += [
            pa.field(concept + VOCAB_SUFFIX, pa.string()),
            pa.field(concept + CODE_SUFFIX, pa.string()),
        ]
    return pa.schema(fields)


def _schema_for(table: str) -> pa.Schema:
    if table == QUARANTINE_DIR:
        return REJECTION_SCHEMA
    try:
        return staged_schema(table)
    except InputError as exc:
        raise StagingError(f"staging: {exc}") from None


@dataclass(frozen=True)
class StagingArea:
    """A stage folder. Picklable (a path): a worker process opens its own writer on it."""

    root: Path

    def writer(self, part: str) -> StagingWriter:
        """A writer whose files are named after ``part`` (unique per writer in a run)."""
        if not part or any(ch in part for ch in "/\\") or part.startswith("."):
            raise StagingError(f"staging part name {part!r}: must be a plain, non-empty name")
        return StagingWriter(self, part)

    def add_parquet(self, table: str, data: Path | pa.Table, *, part: str | None = None) -> Path:
        """Stage a whole table made elsewhere (a DuckDB ``COPY ... TO``, an Arrow table).

        Its columns must be a subset of ``staged_schema(table)`` (``_key`` required); each is
        cast to the staged type (a failing cast is an error naming the column). ``table`` may
        also be ``_quarantine`` (columns of ``REJECTION_SCHEMA``). Returns the staged file."""
        schema = _schema_for(table)
        given = data.schema if isinstance(data, pa.Table) else _parquet_schema(data)
        unknown = [name for name in given.names if name not in schema.names]
        if unknown:
            raise StagingError(
                f"staged {table}: column {unknown[0]!r} is not a staged column of {table} "
                f"({len(unknown)} unknown: {', '.join(unknown[:5])})"
            )
        required = [f.name for f in schema if not f.nullable and f.name not in given.names]
        if required:
            raise StagingError(f"staged {table}: required column {required[0]!r} is missing")
        target = pa.schema([schema.field(name) for name in given.names])
        folder = self.root / table
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"part-{part or uuid.uuid4().hex}.parquet"
        if isinstance(data, pa.Table):
            pq.write_table(_cast(data, target, table), out)
            return out
        if given == target:
            if data.resolve() != out.resolve():
                shutil.copyfile(data, out)
            return out
        source = pq.ParquetFile(data)
        with pq.ParquetWriter(out, target) as sink:
            for batch in source.iter_batches(batch_size=FLUSH_ROWS):
                sink.write_table(_cast(pa.Table.from_batches([batch]), target, table))
        return out

    def tables(self) -> list[str]:
        """OMOP tables with at least one staged part."""
        if not self.root.is_dir():
            return []
        return sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and not d.name.startswith("_") and any(d.glob("*.parquet"))
        )

    def parts(self, table: str) -> list[Path]:
        """The staged Parquet parts of ``table`` (or ``_quarantine``), sorted."""
        return sorted((self.root / table).glob("*.parquet"))

    def read_counts(self) -> dict[str, int]:
        """Records read per source type, summed over every writer's counts."""
        totals: dict[str, int] = {}
        for path in sorted((self.root / COUNTS_DIR).glob("*.json")):
            for source_type, n in json.loads(path.read_text(encoding="utf-8")).items():
                totals[source_type] = totals.get(source_type, 0) + int(n)
        return totals

    def write_counts(self, part: str, counts: Mapping[str, int]) -> None:
        """Persist read counts under ``part`` (what ``StagingWriter.close`` does); for SQL
        connectors that stage with ``add_parquet`` and count with a query."""
        folder = self.root / COUNTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"part-{part}.json").write_text(json.dumps(dict(counts)), encoding="utf-8")


def _parquet_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise StagingError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def _cast(data: pa.Table, target: pa.Schema, table: str) -> pa.Table:
    columns = []
    for field_ in target:
        column = data.column(field_.name)
        try:
            columns.append(column.cast(field_.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise StagingError(
                f"staged {table}, column {field_.name!r}: values do not convert to "
                f"{field_.type} ({type(exc).__name__})"
            ) from None
        if not field_.nullable and column.null_count:
            raise StagingError(f"staged {table}, column {field_.name!r}: null values")
    return pa.Table.from_arrays(columns, schema=target)


@dataclass
class StagingWriter:
    """Buffers staged rows, rejections and read counts; writes a Parquet part per table
    every ``FLUSH_ROWS`` rows and at ``close``. One writer per process."""

    area: StagingArea
    part: str
    _rows: dict[str, list[Mapping[str, object]]] = field(default_factory=dict)
    _serial: dict[str, int] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    _closed: bool = False

    def add(self, table: str, row: Mapping[str, object]) -> None:
        """Stage one row of OMOP table ``table`` (keys: columns of ``staged_schema``)."""
        rows = self._rows.get(table)
        if rows is None:
            _schema_for(table)  # fails early, naming the table
            rows = self._rows[table] = []
        rows.append(row)
        if len(rows) >= FLUSH_ROWS:
            self._flush(table)

    def reject(self, rejection: Rejection) -> None:
        self.add(QUARANTINE_DIR, rejection.as_row())

    def count_read(self, source_type: str, n: int = 1) -> None:
        """Count ``n`` records of ``source_type`` read (rejected ones included)."""
        self._counts[source_type] = self._counts.get(source_type, 0) + n

    def close(self) -> None:
        """Write what is buffered and the read counts. Idempotent."""
        if self._closed:
            return
        for table in list(self._rows):
            self._flush(table)
        self.area.write_counts(self.part, self._counts)
        self._closed = True

    def __enter__(self) -> StagingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self, table: str) -> None:
        rows = self._rows.get(table)
        if not rows:
            return
        schema = _schema_for(table)
        names = set(schema.names)
        for row in rows:
            if table != QUARANTINE_DIR and row.get(KEY) is None:
                raise StagingError(f"staged {table}: a row has no {KEY}")
            if not names.issuperset(row):
                unknown = sorted(set(row) - names)
                raise StagingError(
                    f"staged {table}: column {unknown[0]!r} is not a staged column of {table}"
                )
        try:
            data = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StagingError(
                f"staged {table}: a value does not fit its column's type "
                f"({_failing_column(rows, schema) or type(exc).__name__})"
            ) from None
        folder = self.area.root / table
        folder.mkdir(parents=True, exist_ok=True)
        serial = self._serial.get(table, 0)
        self._serial[table] = serial + 1
        pq.write_table(data, folder / f"part-{self.part}-{serial:05d}.parquet")
        self._rows[table] = []


def _failing_column(rows: list[Mapping[str, object]], schema: pa.Schema) -> str | None:
    """The first column whose values Arrow refuses (the error's own text quotes the value)."""
    for field_ in schema:
        try:
            pa.array([row.get(field_.name) for row in rows], type=field_.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return f"column {field_.name!r}, expected {field_.type}"
    return None
