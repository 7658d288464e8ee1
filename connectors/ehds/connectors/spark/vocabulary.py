"""The vocabulary a Spark job resolves codes against: a Parquet CDM layout or a DuckDB CDM file.

Spark reads Parquet, not DuckDB files, so a DuckDB vocabulary is first exported (DuckDB's own
``COPY ... TO parquet``, the tables the job needs only) to the job's scratch folder. The job
registers ``concept``, ``concept_relationship`` and ``source_to_concept_map`` as temporary
views, the relation names of the framework's resolution SQL; a table the source lacks is an
empty view with the model's columns (then every code is unmapped, which the report shows).
The output layout gets a copy of the vocabulary tables unless the caller opts out, so that it
is a complete CDM for `ehds omop load` and for the node's Spark engine.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import duckdb
from pyspark.sql import SparkSession

from ehds.connectors.spark.spark_types import model_schema
from ehds.core.errors import InputError
from ehds.omop.database import CdmDatabase
from ehds.omop.loader.duckdb_source import is_duckdb_file
from ehds.omop.parquet_layout import is_layout, table_dir, table_files
from ehds.omop.schema.layout import VOCAB_TABLES

RESOLUTION_TABLES: Final = ("concept", "concept_relationship", "source_to_concept_map")
"""The vocabulary relations the resolution SQL reads."""


class VocabularySourceError(InputError):
    """``--vocab`` is neither a Parquet CDM layout nor a DuckDB CDM file."""


@dataclass(frozen=True)
class VocabularyFiles:
    """Parquet files per vocabulary table (absent tables: no entry)."""

    description: str
    files: dict[str, list[Path]] = field(default_factory=dict)

    def register(self, spark: SparkSession, tables: Iterable[str] = RESOLUTION_TABLES) -> None:
        """Temporary views named after ``tables``."""
        for table in tables:
            paths = self.files.get(table)
            if paths:
                frame = spark.read.parquet(*[str(p.resolve()) for p in paths])
            else:
                frame = spark.createDataFrame([], model_schema(table))
            frame.createOrReplaceTempView(table)

    def copy_into(self, root: Path) -> list[str]:
        """Copy every vocabulary table's files into the layout at ``root``; returns the
        tables copied."""
        copied: list[str] = []
        for table, paths in sorted(self.files.items()):
            folder = table_dir(root, table)
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            for index, path in enumerate(paths):
                shutil.copyfile(path, folder / f"part-{index:05d}.parquet")
            copied.append(table)
        return copied


def _quote(path: Path) -> str:
    return "'" + str(path.resolve()).replace("'", "''") + "'"


def _from_duckdb(path: Path, scratch: Path, tables: Iterable[str]) -> VocabularyFiles:
    db = CdmDatabase.parse(str(path))
    files: dict[str, list[Path]] = {}
    conn = duckdb.connect(str(path), read_only=True)
    try:
        present = {
            (str(schema), str(name))
            for schema, name in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        }
        for table in tables:
            qualified = db.qualified(table)
            schema, _, name = qualified.rpartition(".")
            if (schema.strip('"'), name.strip('"')) not in present:
                continue
            row = conn.execute(f"SELECT count(*) FROM {qualified}").fetchone()
            if not row or int(row[0]) == 0:
                continue
            target = scratch / table / "part-00000.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            conn.execute(f"COPY {qualified} TO {_quote(target)} (FORMAT parquet, COMPRESSION zstd)")
            files[table] = [target]
    finally:
        conn.close()
    return VocabularyFiles(f"DuckDB file {path}", files)


def open_vocabulary(
    source: Path, scratch: Path, *, tables: Iterable[str] = VOCAB_TABLES
) -> VocabularyFiles:
    """The vocabulary at ``source`` as Parquet files; a DuckDB file's ``tables`` are exported
    to ``scratch`` (a folder the caller removes)."""
    if source.is_dir() and is_layout(source):
        found = {t: table_files(source, t) for t in tables}
        return VocabularyFiles(f"Parquet layout {source}", {t: p for t, p in found.items() if p})
    if source.is_file() and is_duckdb_file(source):
        return _from_duckdb(source, scratch, tables)
    raise VocabularySourceError(
        f"{source}: expected a Parquet CDM layout (a folder with _ehds_layout.json) "
        "or a DuckDB CDM file"
    )
