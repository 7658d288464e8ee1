"""Staged rows built inside a Spark task, as Arrow batches of one wide schema.

Why one wide schema: a mapping function (FHIR's ``map_line``) turns one source record into
rows of several OMOP tables, a rejection, or both, and Spark's ``mapInArrow`` returns a single
schema. So every output row carries a ``target`` (the OMOP table, ``quarantine`` or
``read_count``) and one struct column per target, of which only the target's is set. The job
writes these rows once, partitioned by ``target``, and reads each table back as ``T.*``: the
source is parsed and mapped once, however many tables it feeds. The structs are typed by the
framework's ``staged_schema``, converted here exactly as ``StagingWriter`` converts rows
(``pa.Table.from_pylist``), so that Spark and the embedded pipeline stage the same values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa
from pyspark.sql import types as T  # noqa: N812  (Spark's own convention)

from ehds.connectors.rejection import REJECTION_SCHEMA, Rejection
from ehds.connectors.spark.spark_types import arrow_schema_to_spark
from ehds.connectors.staging import StagingError, staged_schema

TARGET: Final = "target"
QUARANTINE: Final = "quarantine"
READ_COUNT: Final = "read_count"
READ_COUNT_SCHEMA: Final = pa.schema([("source_type", pa.string()), ("n", pa.int64())])

BATCH_ROWS: Final = 10_000


def _nullable(schema: pa.Schema) -> pa.StructType:
    """Spark declares every field nullable; the Arrow struct says the same."""
    return pa.struct([pa.field(f.name, f.type, nullable=True) for f in schema])


def target_structs(tables: Sequence[str]) -> dict[str, pa.StructType]:
    """The struct type of each target column, in output order."""
    structs = {t: _nullable(staged_schema(t)) for t in tables}
    structs[QUARANTINE] = _nullable(REJECTION_SCHEMA)
    structs[READ_COUNT] = _nullable(READ_COUNT_SCHEMA)
    return structs


def output_schema(tables: Sequence[str]) -> T.StructType:
    """The Spark schema of the wide rows (``mapInArrow``'s return type)."""
    fields = [T.StructField(TARGET, T.StringType(), True)]
    for name, struct in target_structs(tables).items():
        fields.append(T.StructField(name, arrow_schema_to_spark(pa.schema(struct), name), True))
    return T.StructType(fields)


@dataclass
class BatchBuilder:
    """Collects one task's staged rows, rejections and read counts; ``drain`` yields them as
    wide batches (``BATCH_ROWS`` rows at most, one target per batch)."""

    tables: Sequence[str]
    _structs: dict[str, pa.StructType] = field(init=False)
    _rows: dict[str, list[Mapping[str, object]]] = field(init=False)
    _counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._structs = target_structs(self.tables)
        self._rows = {name: [] for name in self._structs}

    def add(self, table: str, row: Mapping[str, object]) -> None:
        rows = self._rows.get(table)
        if rows is None or table in (QUARANTINE, READ_COUNT):
            raise StagingError(f"staging on Spark: table {table!r} is not one this job stages")
        rows.append(row)

    def reject(self, rejection: Rejection) -> None:
        self._rows[QUARANTINE].append(rejection.as_row())

    def count_read(self, source_type: str, n: int = 1) -> None:
        self._counts[source_type] = self._counts.get(source_type, 0) + n

    def pending(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def drain(self, *, final: bool = False) -> Iterator[pa.RecordBatch]:
        """The rows collected so far (and, when ``final``, the read counts)."""
        if final:
            self._rows[READ_COUNT].extend(
                {"source_type": k, "n": v} for k, v in sorted(self._counts.items())
            )
            self._counts.clear()
        for name, rows in self._rows.items():
            for start in range(0, len(rows), BATCH_ROWS):
                yield self._batch(name, rows[start : start + BATCH_ROWS])
            rows.clear()

    def _batch(self, name: str, rows: list[Mapping[str, object]]) -> pa.RecordBatch:
        struct = self._structs[name]
        names = {f.name for f in struct}
        for row in rows:
            if not names.issuperset(row):
                unknown = sorted(set(row) - names)
                raise StagingError(
                    f"staged {name}: column {unknown[0]!r} is not a staged column of {name}"
                )
        schema = pa.schema(list(struct))
        try:
            values = pa.Table.from_pylist(list(rows), schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StagingError(
                f"staged {name}: a value does not fit its column's type ({type(exc).__name__})"
            ) from None
        n = len(rows)
        arrays: list[pa.Array] = [pa.array([name] * n, pa.string())]
        for other, other_struct in self._structs.items():
            if other == name:
                arrays.append(
                    pa.StructArray.from_arrays(
                        [c.combine_chunks() for c in values.columns], fields=list(struct)
                    )
                )
            else:
                arrays.append(pa.nulls(n, other_struct))
        return pa.RecordBatch.from_arrays(arrays, names=[TARGET, *self._structs])
