"""Compile a mapping into one SQL query per OMOP table (DuckDB, or Spark SQL for helper E).

Public API (stable; the Spark job calls it)::

    compile_mapping(mapping: Mapping, dialect: str) -> list[TableQuery]
        dialect: "duckdb" or "spark"; one TableQuery per OMOP table, in mapping order.

    TableQuery(table: str,                 # OMOP table name
               sql: str,                   # SELECT of the staged rows (staged_schema columns)
               sources: dict[str, SourceFile],  # views the SQL reads, by view name
               reject_sql: str)            # SELECT of rejections (Rejection's columns)

    SourceFile(path: Path, format: "csv" | "parquet", options: dict)
        options (CSV only): delimiter (default "," or tab for *.tsv), quote, encoding,
        null_values (tuple of strings); every CSV has a header line and every CSV column is
        read as text (DuckDB all_varchar; Spark's default without inferSchema).

Before running either query, create one view per entry of ``sources`` named exactly as the key.
``sql`` returns ``_key``, ``_source`` (``file:row N``, the 1-based data row), the typed OMOP
columns the mapping sets
(INTEGER, DOUBLE, DATE, TIMESTAMP, VARCHAR), ``<fk>__key`` and ``<concept>__vocab/__code``;
``reject_sql`` returns ``source, location, record_type, record_key, reason, detail, record``
(``record`` is the JSON of the source columns the mapping reads). The two queries are
disjoint and together cover every source row that passes the mapping's ``where``.

Rules applied per row, first failure wins: ``csv.missing_key`` (the key is null),
``csv.invalid_value`` (a non-null value that does not convert to the column's type),
``csv.missing_value`` (a required column or
the person reference is null); then among the remaining rows of a table the first row of each
key wins (mapping order, then row order) and the others are ``csv.duplicate_key``.

Row numbers: DuckDB numbers rows in file order (``row_number() OVER ()``); Spark numbers them
with ``monotonically_increasing_id() + 1``, unique and increasing but not line numbers, since
numbering a whole file in order would take it into a single partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.spark import Spark
from sqlglot.time import format_time

from ehds.connectors.mapping.expressions import parse_expression
from ehds.connectors.mapping.model import (
    Expr,
    Mapping,
    MappingError,
    Problem,
    SourceFile,
    TableMapping,
)
from ehds.connectors.mapping.parser import sql_string
from ehds.connectors.mapping.sources import quote_identifier as q
from ehds.connectors.mapping.targets import TargetColumn, TargetTable, target_table

DIALECTS = ("duckdb", "spark")
RAW = "__raw_"


@dataclass(frozen=True)
class TableQuery:
    table: str
    sql: str
    sources: dict[str, SourceFile]
    reject_sql: str


@dataclass(frozen=True)
class _Column:
    """A staged output column: its name, DuckDB type, and the OMOP column it types (if any)."""

    name: str
    sql_type: str
    target: TargetColumn | None


def compile_mapping(mapping: Mapping, dialect: str) -> list[TableQuery]:
    """One :class:`TableQuery` per OMOP table of ``mapping`` (see the module docstring).

    The mapping must have passed :func:`ehds.connectors.mapping.check.check_mapping` (a
    mapping error found here still raises :class:`MappingError`)."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    queries = []
    for table in mapping.table_names():
        entries = [m for m in mapping.tables if m.table == table]
        queries.append(compile_table(mapping, entries, dialect))
    return queries


def compile_table(mapping: Mapping, entries: list[TableMapping], dialect: str) -> TableQuery:
    """The query of one table from some of its mappings (the runner leaves out a mapping whose
    source lacks a column, and quarantines that source's rows instead)."""
    table = entries[0].table
    target = target_table(table)
    if target is None:
        raise MappingError([Problem(entries[0].at, f"{table!r} is not a mappable OMOP table")])
    columns = _output_columns(target, entries)
    ctes = []
    for entry in entries:
        ctes.extend(_mapping_ctes(mapping, entry, target, columns))
    union = " UNION ALL ".join(f"SELECT * FROM {q(f'm{e.index}_checked')}" for e in entries)
    ctes.append(f"{q('__all')} AS ({union})")
    ctes.append(
        '"__ranked" AS (SELECT *, row_number() OVER (PARTITION BY "_key" ORDER BY "__mapping", '
        '"__row") AS "__rank" FROM "__all" WHERE "__reason" IS NULL)'
    )
    with_ = "WITH " + ",\n".join(ctes)
    staged = ", ".join(q(c.name) for c in columns)
    sql = f'{with_}\nSELECT {staged} FROM "__ranked" WHERE "__rank" = 1'
    reject_cols = (
        '"__file" AS "source", "__location" AS "location", "__record_type" AS "record_type", '
        '"_key" AS "record_key", {reason} AS "reason", {detail} AS "detail", "__record" AS "record"'
    )
    duplicate = sql_string(f"key: the same source key as an earlier row of {table}")
    reject_sql = (
        f"{with_}\nSELECT {reject_cols.format(reason='__reason', detail='__detail')} "
        f'FROM "__all" WHERE "__reason" IS NOT NULL\nUNION ALL\n'
        f"SELECT {reject_cols.format(reason=sql_string('csv.duplicate_key'), detail=duplicate)} "
        f'FROM "__ranked" WHERE "__rank" > 1'
    )
    sources = {e.source: mapping.sources[e.source].file for e in entries}
    for entry in entries:  # other sources read by a sub-query
        for expr in entry.expressions():
            for ref in parse_expression(expr).tree.find_all(exp.Table):
                if ref.name in mapping.sources:
                    sources.setdefault(ref.name, mapping.sources[ref.name].file)
    return TableQuery(table, _to_dialect(sql, dialect), sources, _to_dialect(reject_sql, dialect))


def compile_missing_column_rejects(
    mapping: Mapping, entry: TableMapping, missing: tuple[str, ...], dialect: str
) -> str:
    """Rejections for every row of ``entry``'s source when it lacks columns the mapping reads
    (``csv.missing_column``; ``record`` is null: the mapping cannot say which columns matter)."""
    source = mapping.sources[entry.source]
    view = q(entry.source)
    detail = sql_string(
        f"{entry.table}: column(s) {', '.join(missing)} not in source {entry.source}"
    )
    sql = (
        f'SELECT {sql_string(source.written)} AS "source", '
        f'{_row_prefix(source.written)} || CAST("__row" AS VARCHAR) AS "location", '
        f'{sql_string(entry.source)} AS "record_type", CAST(NULL AS VARCHAR) AS "record_key", '
        f'\'csv.missing_column\' AS "reason", {detail} AS "detail", '
        f'CAST(NULL AS VARCHAR) AS "record" '
        f'FROM (SELECT row_number() OVER () AS "__row", * FROM {view}) AS {view}'
    )
    return _to_dialect(sql, dialect)


def _row_prefix(written: str) -> str:
    """Locations read ``patients.csv:row 12``: the 1-based data row (the header excluded)."""
    return sql_string(f"{written}:row ")


def _output_columns(target: TargetTable, entries: list[TableMapping]) -> list[_Column]:
    """``_key``, ``_source``, then every column some mapping of the table sets, in model order."""
    values: set[str] = set()
    references: set[str] = set()
    concepts: set[str] = set()
    for entry in entries:
        values.update(entry.columns)
        references.update(entry.references)
        concepts.update(entry.concepts)
        for column in entry.concepts:
            partner = target.source_value_partner(column)
            if partner is not None:
                values.add(partner)
        if "person_id" in target.references:
            references.add("person_id")
    out = [_Column("_key", "VARCHAR", None), _Column("_source", "VARCHAR", None)]
    for name, target_column in target.columns.items():
        if name in values:
            out.append(_Column(name, target_column.sql_type, target_column))
    out.extend(
        _Column(f"{fk}__key", "VARCHAR", None) for fk in target.references if fk in references
    )
    for concept in target.concepts:
        if concept in concepts:
            out.append(_Column(f"{concept}__vocab", "VARCHAR", None))
            out.append(_Column(f"{concept}__code", "VARCHAR", None))
    return out


def _parsed(expr: Expr) -> str:
    return parse_expression(expr).duckdb


def _value_expressions(entry: TableMapping, target: TargetTable) -> dict[str, str]:
    """Raw (untyped) SQL per OMOP value column: the mapped ones, plus the ``_source_value``
    partner of each concept lookup (its code, cut to the column's length)."""
    raw = {name: _parsed(expr) for name, expr in entry.columns.items()}
    for column, lookup in entry.concepts.items():
        partner = target.source_value_partner(column)
        if partner is not None and partner not in raw:
            code = f"CAST({_parsed(lookup.code)} AS VARCHAR)"
            length = target.columns[partner].length
            raw[partner] = code if length is None else f"left({code}, {length})"
    return raw


def typed_value(
    raw: str, column: TargetColumn, date_format: str | None, datetime_format: str | None
) -> str:
    if column.kind == "date" and date_format:
        parsed = f"CAST(TRY_STRPTIME(CAST({raw} AS VARCHAR), {sql_string(date_format)}) AS DATE)"
        return f"COALESCE(TRY_CAST({raw} AS DATE), {parsed})"
    fmt = datetime_format or date_format
    if column.kind == "datetime" and fmt:
        parsed = f"TRY_STRPTIME(CAST({raw} AS VARCHAR), {sql_string(fmt)})"
        return f"COALESCE(TRY_CAST({raw} AS TIMESTAMP), CAST({parsed} AS TIMESTAMP))"
    return f"TRY_CAST({raw} AS {column.sql_type})"


def _record(entry: TableMapping) -> str:
    """The JSON of the source columns the mapping reads (the quarantined raw record)."""
    names: dict[str, None] = {}
    for expr in entry.expressions():
        for name in parse_expression(expr).columns():
            names.setdefault(name, None)
    if not names:
        return "CAST(NULL AS VARCHAR)"
    fields = ", ".join(f"{sql_string(n)}: {q(n)}" for n in names)
    return f"CAST(to_json({{{fields}}}) AS VARCHAR)"


def _mapping_ctes(
    mapping: Mapping, entry: TableMapping, target: TargetTable, columns: list[_Column]
) -> list[str]:
    source = mapping.sources[entry.source]
    i = entry.index
    raw = _value_expressions(entry, target)
    references = {fk: _parsed(expr) for fk, expr in entry.references.items()}
    if "person_id" in target.references and "person_id" not in references:
        references["person_id"] = _parsed(entry.key)  # death: keyed by its person
    select = [
        f'{i} AS "__mapping"',
        '"__row"',
        f'{_row_prefix(source.written)} || CAST("__row" AS VARCHAR) AS "__location"',
        f'CAST({_parsed(entry.key)} AS VARCHAR) AS "_key"',
        f'{_record(entry)} AS "__record"',
    ]
    select += [f"{expr} AS {q(RAW + name)}" for name, expr in raw.items()]
    select += [f"CAST({expr} AS VARCHAR) AS {q(fk + '__key')}" for fk, expr in references.items()]
    for concept, lookup in entry.concepts.items():
        select.append(f"CAST({_parsed(lookup.vocabulary)} AS VARCHAR) AS {q(concept + '__vocab')}")
        select.append(f"CAST({_parsed(lookup.code)} AS VARCHAR) AS {q(concept + '__code')}")
    numbered = (
        f'(SELECT row_number() OVER () AS "__row", * FROM {q(entry.source)}) AS {q(entry.source)}'
    )
    where = "" if entry.where is None else f" WHERE {_parsed(entry.where)}"
    raw_cte = f"{q(f'm{i}_raw')} AS (SELECT {', '.join(select)} FROM {numbered}{where})"

    typed = ['"__mapping"', '"__row"', '"__location"', '"_key"', '"__record"']
    typed += [q(RAW + name) for name in raw]
    for name in raw:
        value = typed_value(
            q(RAW + name), target.columns[name], source.date_format, source.datetime_format
        )
        typed.append(f"{value} AS {q(name)}")
    typed += [q(f"{fk}__key") for fk in references]
    typed += [q(f"{c}__{part}") for c in entry.concepts for part in ("vocab", "code")]
    typed_cte = f"{q(f'm{i}_typed')} AS (SELECT {', '.join(typed)} FROM {q(f'm{i}_raw')})"

    checks = _checks(target, raw, references)
    reason = "CASE " + " ".join(f"WHEN {c} THEN {sql_string(r)}" for c, r, _ in checks) + " END"
    detail = "CASE " + " ".join(f"WHEN {c} THEN {sql_string(d)}" for c, _, d in checks) + " END"
    out: list[str] = []
    for column in columns:
        if column.name == "_source":
            out.append('"__location" AS "_source"')
        elif column.name == "_key" or _sets(column.name, raw, references, entry):
            out.append(q(column.name))
        else:
            out.append(f"CAST(NULL AS {column.sql_type}) AS {q(column.name)}")
    out += [
        '"__mapping"',
        '"__row"',
        '"__location"',
        '"__record"',
        f'{sql_string(entry.source)} AS "__record_type"',
        f'{sql_string(source.written)} AS "__file"',
        f'{reason} AS "__reason"',
        f'{detail} AS "__detail"',
    ]
    checked_cte = f"{q(f'm{i}_checked')} AS (SELECT {', '.join(out)} FROM {q(f'm{i}_typed')})"
    return [raw_cte, typed_cte, checked_cte]


def _sets(name: str, raw: dict[str, str], references: dict[str, str], entry: TableMapping) -> bool:
    if name.endswith("__key"):
        return name.removesuffix("__key") in references
    if name.endswith(("__vocab", "__code")):
        return name.rsplit("__", 1)[0] in entry.concepts
    return name in raw


def _checks(
    target: TargetTable, raw: dict[str, str], references: dict[str, str]
) -> list[tuple[str, str, str]]:
    """(condition, reason, detail) in the order they are tested; details name columns only."""
    checks = [('"_key" IS NULL', "csv.missing_key", "key: the key expression gives no value")]
    for name in raw:
        column = target.columns[name]
        checks.append(
            (
                f"{q(RAW + name)} IS NOT NULL AND {q(name)} IS NULL",
                "csv.invalid_value",
                f"column {name}: not a valid {column.kind}",
            )
        )
    for name in target.required_values:
        if name in raw:
            checks.append(
                (f"{q(name)} IS NULL", "csv.missing_value", f"column {name}: required, no value")
            )
    if "person_id" in references:
        checks.append(
            ('"person_id__key" IS NULL', "csv.missing_value", "reference person_id: no source key")
        )
    return checks


def _spark_node(node: exp.Expression) -> exp.Expression:
    """Rewrite what Spark SQL spells differently or lacks (see the module docstring)."""
    if (
        isinstance(node, exp.Window)
        and isinstance(node.this, exp.RowNumber)
        and not node.args.get("order")
        and not node.args.get("partition_by")
    ):
        return exp.Add(
            this=exp.Anonymous(this="monotonically_increasing_id", expressions=[]),
            expression=exp.Literal.number(1),
        )
    if isinstance(node, exp.Anonymous) and str(node.this).upper() == "TRY_STRPTIME":
        value, fmt = node.expressions
        java = format_time(fmt.name, Spark.INVERSE_TIME_MAPPING, Spark.INVERSE_TIME_TRIE)
        return exp.Anonymous(
            this="try_to_timestamp", expressions=[value, exp.Literal.string(java or "")]
        )
    return node


def _to_dialect(sql: str, dialect: str) -> str:
    if dialect == "duckdb":
        return sql
    tree = sqlglot.parse_one(sql, read="duckdb")
    return tree.transform(_spark_node).sql(dialect="spark")
