"""What the database really holds: tables, columns with their engine types, row counts.

Read through ``information_schema`` (DuckDB and PostgreSQL both implement it), so that the
checks are built for the columns that exist; the missing ones are reported by ``cdmTable``
and ``cdmField`` instead of failing every query that names them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import Tier, table_tier

_INTEGER = {"integer", "int", "int4", "int8", "int2", "bigint", "smallint", "tinyint", "hugeint",
            "ubigint", "uinteger", "usmallint", "utinyint", "uhugeint"}  # fmt: skip
_FLOAT = ("double", "real", "float", "decimal", "numeric")
_TEXT = ("varchar", "character varying", "text", "character", "char", "string", "bpchar")


def type_family(data_type: str) -> str:
    """An engine's column type as one of integer, float, text, date, datetime, other."""
    low = data_type.strip().lower()
    if low in _INTEGER:
        return "integer"
    if low.startswith(_FLOAT):
        return "float"
    if low.startswith(_TEXT):
        return "text"
    if low == "date":
        return "date"
    if low.startswith("timestamp"):
        return "datetime"
    return "other"


@dataclass(frozen=True)
class LiveSchema:
    columns: dict[str, dict[str, str]]  # table -> column -> engine data type
    rows: dict[str, int]  # row count of every existing table probed

    def has_table(self, table: str) -> bool:
        return table in self.columns

    def has_column(self, table: str, column: str) -> bool:
        return column in self.columns.get(table, {})

    def family(self, table: str, column: str) -> str:
        return type_family(self.columns[table][column])

    def row_count(self, table: str) -> int:
        return self.rows.get(table, 0)


def probe(conn: sa.Connection, db: CdmDatabase, tables: Iterable[str]) -> LiveSchema:
    """Columns of ``tables`` (each looked up in the schema its tier maps to) and row counts."""
    wanted = {name: db.schemas.physical(table_tier(name)) for name in tables}
    schemas = sorted(set(wanted.values()))
    query = sa.text(
        "SELECT table_schema, table_name, column_name, data_type "
        "FROM information_schema.columns WHERE table_schema IN :schemas"
    ).bindparams(sa.bindparam("schemas", expanding=True))
    columns: dict[str, dict[str, str]] = {}
    for schema, table, column, data_type in conn.execute(query, {"schemas": schemas}):
        name = str(table).lower()
        if wanted.get(name) == schema:
            columns.setdefault(name, {})[str(column).lower()] = str(data_type)
    rows = {
        name: int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {db.qualified(name)}")).scalar_one())
        for name in columns
        if table_tier(name) is Tier.CDM
    }
    return LiveSchema(columns, rows)
