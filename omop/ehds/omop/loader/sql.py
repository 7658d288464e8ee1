"""Writing SQL text safely, and reading one row back.

Names and paths come from files (headers, archive members): they are always quoted, never
pasted. DuckDB 2 refuses new work on a connection whose last result is not drained, so a
single row is read with ``fetchall`` rather than ``fetchone``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def first_row(
    conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()
) -> tuple[Any, ...] | None:
    rows = conn.execute(sql, list(params)).fetchall()
    return tuple(rows[0]) if rows else None
