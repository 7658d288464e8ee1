"""Check a parsed mapping against the OMOP specification and its source files.

Three layers, each reporting every problem at its file:line and key path:

1. the OMOP model: the table is a clinical CDM table, every column exists and is set in the
   right section (values, concept lookups, references), required columns are mapped;
2. the expressions: each parses (sqlglot) as one DuckDB expression, and each column it reads
   is in its source's header;
3. DuckDB binds every expression, cast to its column's type, against the real source (no row
   is read): unknown functions and impossible types are found before any write.

``ehds etl validate`` prints all of it; ``ehds etl csv`` refuses a mapping with errors of kind
``mapping`` and quarantines the rows of a mapping whose source lacks a column.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import duckdb

from ehds.connectors.mapping.compile import compile_table, typed_value
from ehds.connectors.mapping.expressions import ExpressionSyntaxError, parse_expression
from ehds.connectors.mapping.model import Expr, Mapping, MappingError, Problem, TableMapping
from ehds.connectors.mapping.sources import (
    SourceColumns,
    create_view,
    quote_identifier,
    source_columns,
)
from ehds.connectors.mapping.targets import TargetTable, mappable_tables, target_table
from ehds.omop.schema.layout import VOCAB_TABLES

MappingKey = tuple[str, int]
"""A table mapping's identity: (table, index in that table's list)."""


@dataclass
class CheckResult:
    problems: list[Problem] = field(default_factory=list)
    missing_columns: dict[MappingKey, tuple[str, ...]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_fatal(self) -> None:
        """Raise :class:`MappingError` when the mapping itself is wrong (not merely a source
        lacking a column, which the run quarantines)."""
        if any(p.kind == "mapping" for p in self.errors):
            raise MappingError(self.problems)


def check_mapping(mapping: Mapping, *, read_sources: bool = True) -> CheckResult:
    """Every problem of ``mapping``; with ``read_sources``, also against the files' headers
    and DuckDB's binder."""
    result = CheckResult()
    parsed_ok: dict[MappingKey, bool] = {}
    for entry in mapping.tables:
        before = len(result.errors)
        target = target_table(entry.table)
        if target is None:
            result.problems.append(Problem(entry.at, _not_mappable(entry.table)))
            continue
        result.problems.extend(_check_spec(entry, target))
        result.problems.extend(_check_syntax(entry))
        parsed_ok[(entry.table, entry.index)] = len(result.errors) == before
    if not read_sources:
        result.problems.sort(key=lambda p: p.at.line)
        return result
    con = duckdb.connect()
    try:
        headers: dict[str, SourceColumns] = {}
        for name, source in mapping.sources.items():
            headers[name] = source_columns(con, source)
            error = headers[name].error
            if error is not None:
                result.problems.append(Problem(source.at, error))
            else:
                create_view(con, name, source.file)
        for entry in mapping.tables:
            key = (entry.table, entry.index)
            header = headers.get(entry.source)
            if not parsed_ok.get(key) or header is None or header.error is not None:
                continue
            missing = _check_columns(entry, header, result)
            if missing:
                result.missing_columns[key] = missing
            _check_binding(con, mapping, entry, result, skip=set(missing))
        checked = {k for k, ok in parsed_ok.items() if ok}
        for table in mapping.table_names():
            entries = [e for e in mapping.tables if e.table == table]
            if not result.errors and all((e.table, e.index) in checked for e in entries):
                _check_query(con, mapping, entries, result)
    finally:
        con.close()
    result.problems.sort(key=lambda p: p.at.line)
    return result


def _not_mappable(table: str) -> str:
    if table in VOCAB_TABLES:
        return f"{table!r} is a vocabulary table: load vocabularies with `ehds omop vocab load`"
    hint = difflib.get_close_matches(table, mappable_tables(), n=1)
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    return f"{table!r} is not a clinical OMOP CDM v5.4 table{suggestion}"


def _unknown_column(name: str, target: TargetTable) -> str:
    hint = difflib.get_close_matches(name, list(target.columns), n=1)
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    return f"{target.name} has no column {name!r}{suggestion}"


def _check_spec(entry: TableMapping, target: TargetTable) -> list[Problem]:
    problems: list[Problem] = []
    for name, expr in entry.columns.items():
        if name == target.id_column:
            problems.append(
                Problem(expr.at, f"{name} is assigned from the key at commit: remove it")
            )
        elif name in target.references:
            problems.append(
                Problem(
                    expr.at,
                    f"{name} is a reference: give the source key of the row it "
                    "points to under references",
                )
            )
        elif name not in target.columns:
            problems.append(Problem(expr.at, _unknown_column(name, target)))
        elif name in entry.concepts:
            problems.append(Problem(expr.at, f"{name} is also given under concepts: keep one"))
    for name, lookup in entry.concepts.items():
        if name not in target.columns:
            problems.append(Problem(lookup.at, _unknown_column(name, target)))
        elif name not in target.concepts:
            problems.append(
                Problem(
                    lookup.at,
                    f"{name} cannot be looked up by code (concept columns of "
                    f"{target.name}: {', '.join(target.concepts)})",
                )
            )
    for name, expr in entry.references.items():
        if name not in target.references:
            listed = ", ".join(target.references) or "none"
            problems.append(
                Problem(
                    expr.at, f"{name} is not a reference of {target.name} (references: {listed})"
                )
            )
    partners = {target.source_value_partner(c) for c in entry.concepts}
    for name in target.required_values:
        if name not in entry.columns and name not in partners:
            problems.append(
                Problem(entry.at, f"required column {name} of {target.name} is not mapped")
            )
    if (
        "person_id" in target.references
        and "person_id" not in entry.references
        and target.name != "death"
    ):
        problems.append(
            Problem(
                entry.at, f"references.person_id is required: {target.name} rows belong to a person"
            )
        )
    for name in target.concepts:
        column = target.columns[name]
        if column.required and name not in entry.columns and name not in entry.concepts:
            problems.append(
                Problem(entry.at, f"{name} is not mapped: every row gets concept 0", "warning")
            )
    return problems


def _check_syntax(entry: TableMapping) -> list[Problem]:
    problems = []
    for expr in entry.expressions():
        try:
            parse_expression(expr)
        except ExpressionSyntaxError as exc:
            problems.append(Problem(expr.at, str(exc)))
    return problems


def _check_columns(
    entry: TableMapping, header: SourceColumns, result: CheckResult
) -> tuple[str, ...]:
    """Columns the mapping reads that its source lacks (DuckDB names are case-insensitive)."""
    known = {name.lower() for name in header.columns}
    missing: dict[str, None] = {}
    for expr in entry.expressions():
        for name in parse_expression(expr).columns():
            if name.lower() not in known:
                missing.setdefault(name, None)
                listed = ", ".join(header.columns)
                result.problems.append(
                    Problem(
                        expr.at,
                        f"column {name!r} is not in source {entry.source!r} "
                        f"(its columns: {listed})",
                        kind="missing_column",
                    )
                )
    return tuple(missing)


def _bind_error(exc: duckdb.Error) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_ACCEPTS: dict[str, tuple[str, ...]] = {
    "integer": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "U", "DECIMAL", "DOUBLE",
                "FLOAT", "VARCHAR", "BOOLEAN", '"NULL"'),
    "float": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "U", "DECIMAL", "DOUBLE",
              "FLOAT", "VARCHAR", '"NULL"'),
    "date": ("DATE", "TIMESTAMP", "VARCHAR", '"NULL"'),
    "datetime": ("DATE", "TIMESTAMP", "VARCHAR", '"NULL"'),
}  # fmt: skip
"""DuckDB result types (by prefix) that may go into a column of each kind; text takes any."""


def _check_binding(
    con: duckdb.DuckDBPyConnection,
    mapping: Mapping,
    entry: TableMapping,
    result: CheckResult,
    *,
    skip: set[str],
) -> None:
    """DuckDB binds every expression of ``entry`` against its source (no row is read), and
    each column's expression has a type its OMOP column can hold. Expressions that read a
    column in ``skip`` (missing from the source, already reported) are left out."""
    target = target_table(entry.table)
    assert target is not None
    source = mapping.sources[entry.source]
    name = quote_identifier(entry.source)  # the numbered rows keep the source's name
    view = f'(SELECT row_number() OVER () AS "__row", * FROM {name}) AS {name}'

    def bind(expr: Expr, sql: str) -> str | None:
        if skip and not skip.isdisjoint(parse_expression(expr).columns()):
            return None
        try:
            rows = con.execute(f"DESCRIBE SELECT {sql} FROM {view} LIMIT 0").fetchall()
        except duckdb.Error as exc:
            result.problems.append(
                Problem(expr.at, f"DuckDB cannot evaluate it: {_bind_error(exc)}")
            )
            return None
        return str(rows[0][1])

    bind(entry.key, parse_expression(entry.key).duckdb)
    if entry.where is not None:
        kind = bind(entry.where, parse_expression(entry.where).duckdb)
        if kind is not None and kind not in ("BOOLEAN", '"NULL"'):
            result.problems.append(
                Problem(entry.where.at, f"a filter must be true or false, not {kind}")
            )
    for name, expr in entry.columns.items():
        column = target.columns[name]
        raw = parse_expression(expr).duckdb
        kind = bind(expr, raw)
        accepted = _ACCEPTS.get(column.kind)
        if kind is not None and accepted is not None and not kind.startswith(accepted):
            result.problems.append(
                Problem(expr.at, f"gives {kind}, which cannot go into {column.kind} column {name}")
            )
        elif kind is not None:
            bind(expr, typed_value(raw, column, source.date_format, source.datetime_format))
    for expr in entry.references.values():
        bind(expr, parse_expression(expr).duckdb)
    for lookup in entry.concepts.values():
        for expr in (lookup.vocabulary, lookup.code):
            bind(expr, parse_expression(expr).duckdb)


def _check_query(
    con: duckdb.DuckDBPyConnection,
    mapping: Mapping,
    entries: list[TableMapping],
    result: CheckResult,
) -> None:
    """The compiled queries bind too (a safety net: they are generated, so a failure here is a
    bug or a combination the per-expression checks cannot see)."""
    query = compile_table(mapping, entries, "duckdb")
    for sql in (query.sql, query.reject_sql):
        try:
            con.execute(f"DESCRIBE {sql}").fetchall()
        except duckdb.Error as exc:
            result.problems.append(
                Problem(
                    entries[0].at, f"the compiled query for {query.table} fails: {_bind_error(exc)}"
                )
            )
            return
