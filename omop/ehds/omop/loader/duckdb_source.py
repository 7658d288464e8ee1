"""Discovering the CDM tables of another DuckDB file.

The file is attached READ_ONLY (never opened for writing: it may be a package's data file or
another node's database). OMOP tables are looked for in ``main`` and in schemas named after
the tiers (``cdm``, ``vocab``, ``results``, or the target's own names); tables elsewhere, and
tables that are not OMOP tables (Eunomia ships ``ontime``), are reported and ignored: a
database file legitimately holds other things, unlike a folder of CDM files.

Eunomia's GiBleed file holds twenty broken tables whose only "row" is the CSV header they
were made from, with columns ``column0..N``: such placeholders are treated as empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ehds.omop.loader.errors import SourceError
from ehds.omop.loader.source_tables import DuckDbTable, SourceColumn, duckdb_relation
from ehds.omop.loader.sql import first_row, quote_literal

SOURCE_CATALOG = "__ehds_source"
_PLACEHOLDER_COLUMN = re.compile(r"^column\d+$")
_MAGIC = b"DUCK"


def is_duckdb_file(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(12)
    return head[8:12] == _MAGIC


def attach(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    conn.execute(f"ATTACH {quote_literal(str(path))} AS {SOURCE_CATALOG} (READ_ONLY)")


@dataclass
class DuckDbDiscovery:
    tables: dict[str, DuckDbTable] = field(default_factory=dict)
    placeholders: dict[str, tuple[str, int]] = field(default_factory=dict)
    """table -> (origin, rows it holds: the header line turned into a row)."""
    ignored: list[str] = field(default_factory=list)


def discover_duckdb(path: Path, accept: Iterable[str], schemas: Iterable[str]) -> DuckDbDiscovery:
    """Find the tables named in ``accept`` (lower-case) in the schemas ``main`` and
    ``schemas``, earlier schemas winning when a table is in several."""
    accepted = set(accept)
    preferred = [*dict.fromkeys([*schemas, "main"])]
    conn = duckdb.connect()
    try:
        try:
            attach(conn, path)
        except duckdb.Error as exc:
            raise SourceError(
                f"{path.name}: cannot be opened as a DuckDB database ({type(exc).__name__})"
            ) from None
        rows = conn.execute(
            "SELECT table_schema, table_name, column_name, data_type "
            "FROM information_schema.columns WHERE table_catalog = ? "
            "ORDER BY table_schema, table_name, ordinal_position",
            [SOURCE_CATALOG],
        ).fetchall()
        found: dict[tuple[str, str], list[SourceColumn]] = {}
        for schema, name, column, type_ in rows:
            found.setdefault((str(schema), str(name)), []).append(
                SourceColumn(str(column), str(type_))
            )
        result = DuckDbDiscovery()
        by_table: dict[str, list[tuple[str, str]]] = {}
        for schema, name in found:
            if name.lower() not in accepted or schema.lower() not in preferred:
                result.ignored.append(f"{path.name} {schema}.{name}: not an OMOP CDM table")
                continue
            by_table.setdefault(name.lower(), []).append((schema, name))
        for table, places in sorted(by_table.items()):
            places.sort(key=lambda place: preferred.index(place[0].lower()))
            schema, name = places[0]
            result.ignored.extend(
                f"{path.name} {s}.{n}: {schema}.{name} is loaded instead" for s, n in places[1:]
            )
            columns = found[(schema, name)]
            relation = duckdb_relation(SOURCE_CATALOG, schema, name)
            origin = f"{path.name} {schema}.{name}"
            if all(_PLACEHOLDER_COLUMN.match(c.name) for c in columns):
                row = first_row(conn, f"SELECT count(*) FROM {relation}")
                result.placeholders[table] = (origin, int(row[0]) if row else 0)
                continue
            result.tables[table] = DuckDbTable(table, origin, relation, columns)
        return result
    finally:
        conn.close()
