"""Helpers of the connector tests: a tiny in-memory connector (rows given per table, staged as
is) and the row readers that compare a Spark job's layout with an embedded run's database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ehds.connectors.rejection import Rejection
from ehds.connectors.staging import StagingArea
from ehds.omop.parquet_layout import table_files


@dataclass
class ListConnector:
    rows: Mapping[str, Sequence[Mapping[str, object]]]
    rejections: Sequence[Rejection] = ()
    read: Mapping[str, int] = field(default_factory=dict)
    name: str = "test"
    tables: tuple[str, ...] = ("person", "visit_occurrence", "condition_occurrence", "death")

    def describe(self) -> str:
        return "in-memory rows"

    def stage(self, area: StagingArea) -> None:
        with area.writer("0") as writer:
            for table, rows in self.rows.items():
                for row in rows:
                    writer.add(table, row)
            for rejection in self.rejections:
                writer.reject(rejection)
            for source_type, n in self.read.items():
                writer.count_read(source_type, n)


def layout_rows(root: Path, table: str) -> list[tuple[object, ...]]:
    """Every row of ``table`` in a Parquet CDM layout, sorted (empty when the table is absent)."""
    files = table_files(root, table)
    if not files:
        return []
    names = ", ".join(f"'{f}'" for f in files)
    with duckdb.connect() as con:
        sql = f"SELECT * FROM read_parquet([{names}]) ORDER BY ALL"
        return [tuple(r) for r in con.execute(sql).fetchall()]


def db_rows(db: Path, table: str) -> list[tuple[object, ...]]:
    """Every row of ``cdm.table`` in a DuckDB CDM file, sorted: to compare with a layout."""
    with duckdb.connect(str(db), read_only=True) as con:
        return [tuple(r) for r in con.execute(f"SELECT * FROM cdm.{table} ORDER BY ALL").fetchall()]
