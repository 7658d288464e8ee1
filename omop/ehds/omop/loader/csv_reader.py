"""One CSV reader for every CSV the loader meets, parametrised by a dialect.

CDM exports (OHDSI ETLs, EunomiaDatasets) are comma-separated, quoted with ``"`` and carry ISO
dates; Athena vocabulary downloads are tab-separated, never quoted (concept names contain
``"``) and carry YYYYMMDD dates. Both are read by DuckDB's ``read_csv`` with explicit column
types (no sniffing: a sniffer guesses, a loader must not) and ``store_rejects``, whose
``reject_errors`` table gives the exact line and column of every value that fails to parse.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ehds.omop.loader.sql import first_row, quote_literal

_HEADER_LIMIT = 1 << 20


@dataclass(frozen=True)
class CsvDialect:
    delimiter: str = ","
    quote: str | None = '"'
    date_format: str | None = None
    """strftime format of DATE columns; None reads ISO dates (with or without a time)."""
    date_hint: str = "YYYY-MM-DD"
    """How the format is shown in error messages."""


CDM_DIALECT = CsvDialect()
ATHENA_DIALECT = CsvDialect(delimiter="\t", quote=None, date_format="%Y%m%d", date_hint="YYYYMMDD")


@dataclass(frozen=True)
class RejectTables:
    """Names of the temporary tables DuckDB fills with the rows it could not parse."""

    errors: str
    scans: str


@dataclass(frozen=True)
class Reject:
    line: int
    column: str | None
    error_type: str


def read_header(path: Path, dialect: CsvDialect) -> list[str] | None:
    """The column names of the first line, or None for an empty file. Only the header is
    read here; rows are never parsed in Python."""
    with path.open("rb") as handle:
        first = handle.readline(_HEADER_LIMIT)
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        return None
    if dialect.quote is None:
        return text.split(dialect.delimiter)
    return next(csv.reader([text], delimiter=dialect.delimiter, quotechar=dialect.quote))


def read_csv_sql(
    path: Path,
    columns: Sequence[tuple[str, str]],
    dialect: CsvDialect,
    rejects: RejectTables | None = None,
    *,
    ignore_errors: bool = False,
) -> str:
    """``read_csv(...)`` for a table function position. ``columns`` are (name, DuckDB type)
    in file order; the header line is skipped, its names having been read already."""
    struct = ", ".join(f"{quote_literal(name)}: {quote_literal(type_)}" for name, type_ in columns)
    options = [
        "header = true",
        "auto_detect = false",
        f"delim = {quote_literal(dialect.delimiter)}",
        f"quote = {quote_literal(dialect.quote or '')}",
        f"escape = {quote_literal(dialect.quote or '')}",
        f"columns = {{{struct}}}",
    ]
    if dialect.date_format:
        options.append(f"dateformat = {quote_literal(dialect.date_format)}")
    if ignore_errors:
        options.append("ignore_errors = true")
    if rejects:
        options += [
            "store_rejects = true",
            f"rejects_table = {quote_literal(rejects.errors)}",
            f"rejects_scan = {quote_literal(rejects.scans)}",
        ]
    return f"read_csv({quote_literal(str(path))}, {', '.join(options)})"


def first_reject(conn: duckdb.DuckDBPyConnection, rejects: RejectTables) -> Reject | None:
    """The earliest rejected line, then drop the reject tables. Only line, column name and
    error type are read: ``csv_line`` and ``error_message`` quote the data."""
    row = first_row(
        conn,
        f"SELECT line, column_name, CAST(error_type AS VARCHAR) FROM {rejects.errors} "
        # A short or long row also fails casts, shifted: report the row's shape first.
        "ORDER BY line, CAST(error_type AS VARCHAR) = 'CAST', column_idx LIMIT 1",
    )
    conn.execute(f"DROP TABLE IF EXISTS {rejects.errors}")
    conn.execute(f"DROP TABLE IF EXISTS {rejects.scans}")
    if row is None:
        return None
    return Reject(int(row[0]), None if row[1] is None else str(row[1]), str(row[2]))
