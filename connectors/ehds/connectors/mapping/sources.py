"""Open a mapping's source files in DuckDB, as views named after the sources.

CSV files are read with every column as text (``all_varchar``) and the delimiter given or
implied by the file name (``,``; tab for ``.tsv``), never sniffed, so that DuckDB and Spark read
the same file the same way; typing happens per value in the compiled query, where a bad value
rejects one row instead of failing the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from ehds.connectors.mapping.model import Source, SourceFile
from ehds.connectors.mapping.parser import sql_string


@dataclass(frozen=True)
class SourceColumns:
    """The columns of a source as DuckDB reads it (name → DuckDB type), or why it cannot be read."""

    columns: dict[str, str]
    error: str | None = None


def csv_delimiter(source: SourceFile) -> str:
    written = source.options.get("delimiter")
    if isinstance(written, str):
        return "\t" if written in ("\\t", "tab") else written
    return "\t" if source.path.name.lower().endswith((".tsv", ".tsv.gz")) else ","


def duckdb_reader(source: SourceFile) -> str:
    """The table function that reads ``source`` (``read_csv(...)``/``read_parquet(...)``)."""
    path = sql_string(str(source.path))
    if source.format == "parquet":
        return f"read_parquet({path})"
    args = [
        path,
        "all_varchar = true",
        "header = true",
        f"delim = {sql_string(csv_delimiter(source))}",
    ]
    quote = source.options.get("quote")
    if isinstance(quote, str):
        args.append(f"quote = {sql_string(quote)}")
    encoding = source.options.get("encoding")
    if isinstance(encoding, str):
        args.append(f"encoding = {sql_string(encoding)}")
    nulls = source.options.get("null_values")
    if isinstance(nulls, tuple):
        args.append(f"nullstr = [{', '.join(sql_string(n) for n in nulls)}]")
    return f"read_csv({', '.join(args)})"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_view(con: duckdb.DuckDBPyConnection, name: str, source: SourceFile) -> None:
    view = quote_identifier(name)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {duckdb_reader(source)}")


def source_columns(con: duckdb.DuckDBPyConnection, source: Source) -> SourceColumns:
    """The header of ``source`` without reading its rows (a DuckDB DESCRIBE)."""
    if not any(ch in str(source.file.path) for ch in "*?[") and not source.file.path.is_file():
        return SourceColumns({}, f"file not found: {source.file.path}")
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {duckdb_reader(source.file)}").fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        return SourceColumns({}, f"cannot read {source.file.path} ({first})")
    return SourceColumns({str(row[0]): str(row[1]) for row in rows})
