"""The tables a source offers, each able to write the SQL that reads it.

A source table is one OMOP table in one place: a CSV file, a set of Parquet files, or a
table of an attached DuckDB file. Each knows its columns, how to read them (``from_sql``)
and, for the failure path only, how to number its rows so a problem can be located by line
(CSV) or row (Parquet, DuckDB).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ehds.omop.loader.csv_reader import CsvDialect, RejectTables, read_csv_sql
from ehds.omop.loader.errors import Location
from ehds.omop.loader.sql import first_row, quote_identifier, quote_literal

POSITION = "__ehds_position"
"""Column name of the 1-based row number in ``numbered_sql``."""
FILE = "__ehds_file"


@dataclass(frozen=True)
class SourceColumn:
    name: str
    """As the source spells it."""
    type: str | None
    """DuckDB type; None for CSV, whose types come from the target model."""


class SourceTable(ABC):
    def __init__(self, table: str, origin: str, columns: Sequence[SourceColumn]) -> None:
        self.table = table
        self.origin = origin
        self.columns = tuple(columns)

    def location(self) -> Location:
        return Location(self.origin)

    @abstractmethod
    def from_sql(self, read_types: Mapping[str, str], rejects: RejectTables | None) -> str:
        """A FROM item yielding the source columns; ``read_types`` maps source column names
        to DuckDB types where the reader chooses them (CSV)."""

    @abstractmethod
    def numbered_sql(self, read_types: Mapping[str, str]) -> str:
        """A FROM item like ``from_sql`` plus the 1-based position ``POSITION`` and the file
        ``FILE`` (NULL for single-file sources), in source order. Failure path only."""

    @abstractmethod
    def locate(self, conn: duckdb.DuckDBPyConnection, position: int, file: str | None) -> Location:
        """Turn a position from ``numbered_sql`` into a line or row a person can find."""


class CsvTable(SourceTable):
    def __init__(
        self, table: str, origin: str, path: Path, header: Sequence[str], dialect: CsvDialect
    ) -> None:
        super().__init__(table, origin, [SourceColumn(name, None) for name in header])
        self.path = path
        self.dialect = dialect

    def _columns(self, read_types: Mapping[str, str]) -> list[tuple[str, str]]:
        return [(c.name, read_types.get(c.name, "VARCHAR")) for c in self.columns]

    def from_sql(self, read_types: Mapping[str, str], rejects: RejectTables | None) -> str:
        return read_csv_sql(self.path, self._columns(read_types), self.dialect, rejects)

    def numbered_sql(self, read_types: Mapping[str, str]) -> str:
        # Needs a connection with one thread and insertion order preserved (diagnostics).
        reader = read_csv_sql(self.path, self._columns(read_types), self.dialect)
        return f"(SELECT *, row_number() OVER () AS {POSITION}, NULL AS {FILE} FROM {reader})"

    def locate(self, conn: duckdb.DuckDBPyConnection, position: int, file: str | None) -> Location:
        """Line = header + rows before + the line breaks inside quoted fields before."""
        if self.dialect.quote is None:
            return Location(self.origin, line=position + 1)
        names = [quote_identifier(c.name) for c in self.columns]
        joined = f"concat_ws('', {', '.join(names)})"
        breaks = f"length({joined}) - length(replace({joined}, chr(10), ''))"
        text = [(c.name, "VARCHAR") for c in self.columns]
        # Rows before ``position`` are well-formed (it is the first problem); rows after it
        # need not be, hence ignore_errors. Needs a connection that keeps file order.
        reader = read_csv_sql(self.path, text, self.dialect, ignore_errors=True)
        row = first_row(
            conn,
            f"SELECT coalesce(sum(b), 0) FROM (SELECT {breaks} AS b FROM {reader} LIMIT ?)",
            [position - 1],
        )
        extra = int(row[0]) if row else 0
        return Location(self.origin, line=position + 1 + extra)


class ParquetTable(SourceTable):
    def __init__(
        self,
        table: str,
        origin: str,
        files: Sequence[tuple[Path, str]],
        columns: Sequence[SourceColumn],
    ) -> None:
        """``files``: (path, name shown in messages)."""
        super().__init__(table, origin, columns)
        self.files = tuple(files)

    def _reader(self, extra: str = "") -> str:
        paths = ", ".join(quote_literal(str(path)) for path, _ in self.files)
        return f"read_parquet([{paths}], union_by_name = true{extra})"

    def from_sql(self, read_types: Mapping[str, str], rejects: RejectTables | None) -> str:
        return self._reader()

    def numbered_sql(self, read_types: Mapping[str, str]) -> str:
        reader = self._reader(", filename = true, file_row_number = true")
        return f"(SELECT *, file_row_number + 1 AS {POSITION}, filename AS {FILE} FROM {reader})"

    def locate(self, conn: duckdb.DuckDBPyConnection, position: int, file: str | None) -> Location:
        shown = {str(path): name for path, name in self.files}
        return Location(shown.get(file or "", self.origin), row=position)


class DuckDbTable(SourceTable):
    def __init__(
        self, table: str, origin: str, relation: str, columns: Sequence[SourceColumn]
    ) -> None:
        """``relation``: the qualified name in the catalog the source is attached as."""
        super().__init__(table, origin, columns)
        self.relation = relation

    def from_sql(self, read_types: Mapping[str, str], rejects: RejectTables | None) -> str:
        return self.relation

    def numbered_sql(self, read_types: Mapping[str, str]) -> str:
        return (
            f"(SELECT *, row_number() OVER () AS {POSITION}, NULL AS {FILE} FROM {self.relation})"
        )

    def locate(self, conn: duckdb.DuckDBPyConnection, position: int, file: str | None) -> Location:
        return Location(self.origin, row=position)


def duckdb_relation(catalog: str, schema: str, name: str) -> str:
    return ".".join(quote_identifier(part) for part in (catalog, schema, name))
