"""The Parquet layout for CDMs too large for one database file.

    ROOT/
      _ehds_layout.json          {"layout": "ehds-omop-parquet", "version": 1, "cdm_version": "5.4"}
      person/part-00000.parquet
      condition_occurrence/part-00000.parquet
      condition_occurrence/part-00001.parquet
      concept/...

One folder per table, lower-case table names, any number of ``*.parquet`` files inside (Spark
and the connectors write several), columns named and typed as the OMOP v5.4 models say. A
missing folder is an empty table. Spark reads this layout (``spark.read.parquet(ROOT/table)``);
``ehds omop load --from ROOT`` loads it into DuckDB or PostgreSQL; :func:`export_layout`
writes it from any CDM database.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.schema.models import metadata

LAYOUT_NAME = "ehds-omop-parquet"
LAYOUT_VERSION = 1
MARKER = "_ehds_layout.json"


def is_layout(root: Path) -> bool:
    return (root / MARKER).is_file()


def table_dir(root: Path, table: str) -> Path:
    return root / table.lower()


def table_files(root: Path, table: str) -> list[Path]:
    """The Parquet files of ``table``, in name order; empty when the table is absent."""
    folder = table_dir(root, table)
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def write_marker(root: Path, cdm_version: str = "5.4") -> None:
    root.mkdir(parents=True, exist_ok=True)
    marker = {"layout": LAYOUT_NAME, "version": LAYOUT_VERSION, "cdm_version": cdm_version}
    (root / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def export_layout(db: CdmDatabase, root: Path) -> dict[str, int]:
    """Write every non-empty table of a DuckDB CDM to the layout; returns rows per table."""
    if db.backend is not Backend.DUCKDB:
        raise NotImplementedError("export from PostgreSQL: load it into DuckDB first")
    write_marker(root)
    counts: dict[str, int] = {}
    conn = duckdb.connect(str(db.duckdb_path), read_only=True)
    try:
        for table in metadata.sorted_tables:
            qualified = db.qualified(table.name)
            row = conn.execute(f"SELECT count(*) FROM {qualified}").fetchone()
            rows = int(row[0]) if row else 0
            if rows == 0:
                continue
            folder = table_dir(root, table.name)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / "part-00000.parquet"
            conn.execute(f"COPY {qualified} TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
            counts[table.name] = rows
    finally:
        conn.close()
    return counts
