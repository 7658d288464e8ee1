"""How one source table becomes one model table: which source column feeds which model
column, with what conversion. Built and checked before anything is written, so a wrong
header (unknown column, required column missing, impossible type) fails the load before
the target is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from ehds.omop.loader.casting import (
    Kind,
    TargetColumn,
    check_compatible,
    load_expr,
    target_columns,
)
from ehds.omop.loader.csv_reader import RejectTables
from ehds.omop.loader.errors import (
    Location,
    MalformedRowError,
    MissingColumnError,
    UnknownColumnError,
)
from ehds.omop.loader.source_tables import CsvTable, SourceColumn, SourceTable
from ehds.omop.loader.sql import quote_identifier
from ehds.omop.loader.versions import Upgrade


@dataclass(frozen=True)
class ColumnFeed:
    """A model column and what fills it: a source column, or a constant SQL expression."""

    target: TargetColumn
    source: SourceColumn | None
    constant: str | None = None


@dataclass(frozen=True)
class TablePlan:
    table: str
    source: SourceTable
    feeds: tuple[ColumnFeed, ...]
    primary_key: tuple[str, ...]
    read_types: Mapping[str, str]
    """Source column -> DuckDB type, for readers that take types (CSV)."""
    renamed: tuple[tuple[str, str], ...]
    date_hint: str

    def source_type(self, column: SourceColumn) -> str:
        return column.type or self.read_types.get(column.name, "VARCHAR")

    def target_of(self, source_name: str | None) -> TargetColumn | None:
        for feed in self.feeds:
            if feed.source is not None and feed.source.name == source_name:
                return feed.target
        return None

    def select_sql(
        self, rejects: RejectTables | None = None, *, renumber_duplicate_keys: bool = False
    ) -> tuple[list[str], str]:
        """Target column names and the fast-path SELECT over the source.

        ``renumber_duplicate_keys`` keeps every row and gives each row whose primary key
        repeats an earlier one a fresh id above the source's largest: in the order of the key
        and then of all columns, so that every engine and every run numbers them alike."""
        names: list[str] = []
        exprs: list[str] = []
        for feed in self.feeds:
            names.append(feed.target.name)
            if feed.source is None:
                exprs.append(feed.constant or "NULL")
                continue
            ref = quote_identifier(feed.source.name)
            exprs.append(load_expr(ref, self.source_type(feed.source), feed.target))
        from_sql = self.source.from_sql(self.read_types, rejects)
        select = f"SELECT {', '.join(exprs)} FROM {from_sql}"
        if not renumber_duplicate_keys or not self.renumberable_key:
            return names, select
        quoted = [quote_identifier(name) for name in names]
        aliased = ", ".join(f"{expr} AS {alias}" for expr, alias in zip(exprs, quoted, strict=True))
        key = quote_identifier(self.primary_key[0])
        key_expr = exprs[names.index(self.primary_key[0])]
        order = ", ".join(f"{alias} NULLS FIRST" for alias in quoted)
        plain_from = self.source.from_sql(self.read_types, None)
        outputs = ", ".join(
            "CAST(CASE WHEN __ehds_dup = 1 THEN r." + key + " ELSE m.__ehds_max + row_number() "
            f"OVER (PARTITION BY __ehds_dup = 1 ORDER BY {order}) END AS INTEGER) AS {key}"
            if alias == key
            else f"r.{alias}"
            for alias in quoted
        )
        return names, (
            f"SELECT {outputs} FROM (SELECT *, row_number() OVER "
            f"(PARTITION BY {key} ORDER BY {order}) AS __ehds_dup "
            f"FROM (SELECT {aliased} FROM {from_sql})) AS r, "
            f"(SELECT coalesce(max({key_expr}), 0) AS __ehds_max FROM {plain_from}) AS m"
        )

    def repeated_keys_sql(self) -> str:
        """How many rows repeat an earlier row's primary key (read without reject capture)."""
        feed = next(f for f in self.feeds if f.target.name == self.primary_key[0])
        if feed.source is None:
            return "SELECT 0"
        ref = quote_identifier(feed.source.name)
        key = load_expr(ref, self.source_type(feed.source), feed.target)
        from_sql = self.source.from_sql(self.read_types, None)
        return f"SELECT count(k) - count(DISTINCT k) FROM (SELECT {key} AS k FROM {from_sql})"

    @property
    def renumberable_key(self) -> bool:
        """A single integer surrogate key (every OMOP event id) can be renumbered."""
        if len(self.primary_key) != 1:
            return False
        return any(
            f.target.name == self.primary_key[0] and f.target.kind is Kind.INTEGER
            for f in self.feeds
        )


def plan_table(
    source: SourceTable,
    table: sa.Table,
    upgrade: Upgrade | None,
    date_hint: str,
) -> TablePlan:
    """Match ``source``'s columns (any letter case, 5.3 names when upgrading) to ``table``."""
    csv = isinstance(source, CsvTable)
    header_at = Location(source.origin, line=1) if csv else Location(source.origin)
    targets = {t.name: t for t in target_columns(table)}
    renames = dict(upgrade.renamed.get(source.table, {})) if upgrade else {}
    constants = dict(upgrade.constants.get(source.table, {})) if upgrade else {}
    fed: dict[str, SourceColumn] = {}
    applied: list[tuple[str, str]] = []
    for position, column in enumerate(source.columns, start=1):
        name = column.name.strip().lower()
        if not name:
            raise UnknownColumnError(
                f"column {position} of the header has no name", location=header_at
            )
        target_name = renames.get(name, name)
        if target_name != name:
            applied.append((name, target_name))
        if target_name not in targets:
            raise UnknownColumnError(
                f"table {table.name} has no such column",
                location=header_at,
                column=column.name,
                expected=f"a column of OMOP CDM v5.4 {table.name}",
            )
        if target_name in fed:
            raise MalformedRowError(
                "the column appears twice (letter case and 5.3 names aside)",
                location=header_at,
                column=column.name,
            )
        fed[target_name] = column
    feeds: list[ColumnFeed] = []
    read_types: dict[str, str] = {}
    for target in targets.values():
        if target.name in constants:
            feeds.append(ColumnFeed(target, None, constants[target.name]))
            continue
        column_ = fed.get(target.name)
        if column_ is None:
            if target.required:
                raise MissingColumnError(
                    "a required column is missing",
                    location=header_at,
                    column=target.name,
                    expected=target.expected(date_hint),
                )
            continue
        if column_.type is None:
            read_types[column_.name] = target.read_type
        else:
            check_compatible(column_.type, target, Location(source.origin))
        feeds.append(ColumnFeed(target, column_))
    return TablePlan(
        table=table.name,
        source=source,
        feeds=tuple(feeds),
        primary_key=tuple(c.name for c in table.primary_key.columns),
        read_types=read_types,
        renamed=tuple(applied),
        date_hint=date_hint,
    )
