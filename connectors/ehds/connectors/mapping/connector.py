"""``MappingConnector``: run a checked mapping with DuckDB and stage its output.

Each OMOP table's compiled query is copied by DuckDB straight to Parquet and handed to the
staging area (``add_parquet``); Python never touches a row, so a mapping runs at DuckDB's speed.
A mapping with errors is refused before anything is staged; a source that lacks a column the
mapping reads has that mapping's rows quarantined (``csv.missing_column``) while every other
mapping loads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb

from ehds.connectors.mapping.check import CheckResult, MappingKey, check_mapping
from ehds.connectors.mapping.compile import compile_missing_column_rejects, compile_table
from ehds.connectors.mapping.model import Mapping, TableMapping
from ehds.connectors.mapping.parser import sql_string
from ehds.connectors.mapping.sources import create_view, quote_identifier
from ehds.connectors.rejection import QUARANTINE_DIR
from ehds.connectors.staging import StagingArea
from ehds.core.errors import InputError


class MappingRunError(InputError):
    """DuckDB failed while evaluating a mapping (typically a ``CAST`` in an expression that
    meets a value it cannot convert: write ``TRY_CAST``, or let the mapper convert)."""


class MappingConnector:
    """The CSV/Parquet mapping connector (``ehds etl csv``)."""

    name = "csv"

    def __init__(self, mapping: Mapping, check: CheckResult | None = None) -> None:
        self.mapping = mapping
        self.tables: tuple[str, ...] = tuple(mapping.table_names())
        self._check = check

    def describe(self) -> str:
        return f"mapping {self.mapping.name} ({self.mapping.path})"

    def check(self) -> CheckResult:
        """Check once (the CLI prints the warnings before running)."""
        if self._check is None:
            self._check = check_mapping(self.mapping)
        return self._check

    def stage(self, area: StagingArea) -> None:
        result = self.check()
        result.raise_fatal()
        con = duckdb.connect()
        try:
            for name, source in self.mapping.sources.items():
                create_view(con, name, source.file)
            counts = {
                name: int(str(_scalar(con, f"SELECT count(*) FROM {quote_identifier(name)}")))
                for name in sorted({t.source for t in self.mapping.tables})
            }
            with tempfile.TemporaryDirectory(prefix="ehds-mapping-") as scratch:
                for table in self.tables:
                    self._stage_table(con, area, Path(scratch), table, result.missing_columns)
        finally:
            con.close()
        area.write_counts(f"mapping-{self.mapping.name}", counts)

    def _stage_table(
        self,
        con: duckdb.DuckDBPyConnection,
        area: StagingArea,
        scratch: Path,
        table: str,
        missing: dict[MappingKey, tuple[str, ...]],
    ) -> None:
        entries = [e for e in self.mapping.tables if e.table == table]
        runnable: list[TableMapping] = []
        for entry in entries:
            lacking = missing.get((entry.table, entry.index))
            if lacking is None:
                runnable.append(entry)
                continue
            sql = compile_missing_column_rejects(self.mapping, entry, lacking, "duckdb")
            part = f"mapping-{table}-{entry.index}-missing"
            area.add_parquet(
                QUARANTINE_DIR, _copy(con, sql, scratch / f"{part}.parquet", table), part=part
            )
        if not runnable:
            return
        query = compile_table(self.mapping, runnable, "duckdb")
        staged = _copy(con, query.sql, scratch / f"{table}.parquet", table)
        area.add_parquet(table, staged, part=f"mapping-{table}")
        rejected = _copy(con, query.reject_sql, scratch / f"{table}-rejected.parquet", table)
        area.add_parquet(QUARANTINE_DIR, rejected, part=f"mapping-{table}-rejected")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    row = con.execute(sql).fetchone()
    return None if row is None else row[0]


def _copy(con: duckdb.DuckDBPyConnection, sql: str, out: Path, table: str) -> Path:
    """Run ``sql`` into the Parquet file ``out``. DuckDB's message is not repeated: it may
    quote the source value that failed."""
    try:
        con.execute(f"COPY ({sql}) TO {sql_string(str(out))} (FORMAT parquet)")
    except duckdb.Error as exc:
        raise MappingRunError(
            f"mapping of {table}: DuckDB failed evaluating an expression ({type(exc).__name__}); "
            "a CAST that meets a bad value stops the run: use TRY_CAST, or map the text column "
            "and let the mapper convert it (bad values are then quarantined)"
        ) from None
    return out
