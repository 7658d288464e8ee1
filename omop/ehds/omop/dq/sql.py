"""SQL fragments shared by the checks, valid in DuckDB and PostgreSQL alike.

Every identifier is double-quoted (the specification has a field named ``offset``); the
checked table is aliased ``t``. The one place the engines differ is testing whether text holds
a number or a date (DuckDB has ``TRY_CAST``; PostgreSQL before 16 has only regular
expressions), in :func:`text_not_of_type`.
"""

from __future__ import annotations

from ehds.omop.database import Backend

_PG_PATTERNS = {
    "integer": r"^\s*[+-]?[0-9]+\s*$",
    "float": r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$",
    "date": r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}\s*$",
    "datetime": (
        r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?\s*$"
    ),
}
_DUCKDB_TYPES = {"integer": "BIGINT", "float": "DOUBLE", "date": "DATE", "datetime": "TIMESTAMP"}


def ident(name: str) -> str:
    return f'"{name}"'


def col(field: str, alias: str = "t") -> str:
    return f"{alias}.{ident(field)}"


def count_rows(predicate: str) -> str:
    return f"SUM(CASE WHEN {predicate} THEN 1 ELSE 0 END)"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def in_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(literal(v) for v in values) + ")"


def text_not_of_type(expr: str, datatype: str, backend: Backend) -> str:
    """True when the text ``expr`` does not read as a value of the spec ``datatype``."""
    if backend is Backend.DUCKDB:
        return f"TRY_CAST({expr} AS {_DUCKDB_TYPES[datatype]}) IS NULL"
    return f"CAST({expr} AS TEXT) !~ {literal(_PG_PATTERNS[datatype])}"


def standalone(violated: str, denominator: str, table_sql: str) -> str:
    """One check as its own query, as the report shows it."""
    return (
        f"SELECT {violated} AS num_violated_rows,\n"
        f"       {denominator} AS num_denominator_rows\n"
        f"FROM {table_sql} AS t"
    )
