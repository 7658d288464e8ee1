"""The failure path: find the first line (or row) of a source that made a load fail.

The fast path lets the engines refuse bad data (parse errors land in ``reject_errors``,
fractions and over-long texts raise ``error()``, NULLs and duplicate keys break
constraints) but engine messages quote values and give no line. So, only after a failure,
the source is read again by a separate single-threaded DuckDB that keeps rows in file order,
with one query per kind of problem; the first problem found becomes a typed error that
names file, line, column and expected type - never the value.
"""

from __future__ import annotations

import duckdb

from ehds.omop.loader.casting import (
    Kind,
    TargetColumn,
    invalid_expr,
    key_expr,
    null_expr,
    too_long_expr,
)
from ehds.omop.loader.csv_reader import Reject, RejectTables, first_reject
from ehds.omop.loader.errors import (
    CdmLoadError,
    DuplicateKeyError,
    MalformedRowError,
    MissingValueError,
    ValueTooLongError,
    WrongTypeError,
)
from ehds.omop.loader.plan import TablePlan
from ehds.omop.loader.source_tables import FILE, POSITION, CsvTable
from ehds.omop.loader.sources import CdmSource
from ehds.omop.loader.sql import first_row, quote_identifier

_REJECTS = RejectTables("__ehds_diag_errors", "__ehds_diag_scans")
_MALFORMED = {
    "MISSING COLUMNS": "the row has fewer fields than the header",
    "TOO MANY COLUMNS": "the row has more fields than the header",
    "UNQUOTED VALUE": "a quoted field is not closed, or text follows its closing quote",
    "LINE SIZE OVER MAXIMUM": "the line is too long",
    "INVALID ENCODING": "the line is not valid UTF-8",
}


def not_valid(target: TargetColumn) -> str:
    if target.kind is Kind.INTEGER:
        return "the value is not a whole number within the INTEGER range"
    return f"the value is not a valid {target.kind.name.lower()}"


def explain_reject(plan: TablePlan, source: CdmSource, reject: Reject) -> CdmLoadError:
    """The typed error for a row the fast path's CSV reader rejected."""
    conn = _connect()
    try:
        source.attach(conn)
        return _reject_error(conn, plan, reject)
    finally:
        conn.close()


def _connect() -> duckdb.DuckDBPyConnection:
    """Single-threaded, insertion order kept: rows come in file order, so that positions
    (``row_number() OVER ()``) are rows of the file."""
    return duckdb.connect(config={"threads": 1, "preserve_insertion_order": True})


def _reject_error(conn: duckdb.DuckDBPyConnection, plan: TablePlan, reject: Reject) -> CdmLoadError:
    # DuckDB's "line" counts records (header included), not the line breaks inside quoted
    # fields: turn the record into the line a text editor shows.
    location = plan.source.locate(conn, reject.line - 1, None)
    target = plan.target_of(reject.column)
    if reject.error_type == "CAST" and target is not None:
        return WrongTypeError(
            not_valid(target),
            location=location,
            column=target.name,
            expected=target.expected(plan.date_hint),
        )
    problem = _MALFORMED.get(reject.error_type, "the line cannot be read")
    return MalformedRowError(problem, location=location)


def diagnose(
    plan: TablePlan, source: CdmSource, *, duplicates_only: bool = False
) -> CdmLoadError | None:
    """The first problem of ``plan``'s source table, or None if none is found."""
    conn = _connect()
    try:
        source.attach(conn)
        if duplicates_only:
            return _first_duplicate(conn, plan)
        if isinstance(plan.source, CsvTable):
            found = _first_parse_error(conn, plan)
            if found is not None:
                return found
        return _first_bad_value(conn, plan) or _first_duplicate(conn, plan)
    finally:
        conn.close()


def _first_parse_error(conn: duckdb.DuckDBPyConnection, plan: TablePlan) -> CdmLoadError | None:
    counted = ", ".join(
        f"count({quote_identifier(feed.source.name)})" for feed in plan.feeds if feed.source
    )
    reader = plan.source.from_sql(plan.read_types, _REJECTS)
    conn.execute(f"SELECT {counted or 'count(*)'} FROM {reader}").fetchall()
    reject = first_reject(conn, _REJECTS)
    return _reject_error(conn, plan, reject) if reject else None


def _first_bad_value(conn: duckdb.DuckDBPyConnection, plan: TablePlan) -> CdmLoadError | None:
    checks: list[tuple[str, str, TargetColumn]] = []
    for feed in plan.feeds:
        if feed.source is None:
            continue
        ref = quote_identifier(feed.source.name)
        type_ = plan.source_type(feed.source)
        if feed.target.required:
            checks.append((null_expr(ref, type_, feed.target), "missing", feed.target))
        checks.append((invalid_expr(ref, type_, feed.target), "type", feed.target))
        checks.append((too_long_expr(ref, type_, feed.target), "long", feed.target))
    checks = [check for check in checks if check[0] != "FALSE"]
    if not checks:
        return None
    whens = " ".join(f"WHEN {sql} THEN {index}" for index, (sql, _, _) in enumerate(checks))
    row = first_row(
        conn,
        f"SELECT {POSITION}, {FILE}, problem FROM (SELECT {POSITION}, {FILE}, "
        f"CASE {whens} END AS problem FROM {plan.source.numbered_sql(plan.read_types)}) "
        f"WHERE problem IS NOT NULL ORDER BY {FILE}, {POSITION} LIMIT 1",
    )
    if row is None:
        return None
    location = plan.source.locate(conn, int(row[0]), None if row[1] is None else str(row[1]))
    _, kind, target = checks[int(row[2])]
    expected = target.expected(plan.date_hint)
    if kind == "missing":
        return MissingValueError(
            "a required value is empty", location=location, column=target.name, expected=expected
        )
    if kind == "long":
        return ValueTooLongError(
            "the text is too long", location=location, column=target.name, expected=expected
        )
    return WrongTypeError(
        not_valid(target),
        location=location,
        column=target.name,
        expected=expected,
    )


def _first_duplicate(conn: duckdb.DuckDBPyConnection, plan: TablePlan) -> CdmLoadError | None:
    feeds = {feed.target.name: feed for feed in plan.feeds}
    keys: list[str] = []
    for name in plan.primary_key:
        feed = feeds.get(name)
        if feed is None or feed.source is None:
            return None
        ref = quote_identifier(feed.source.name)
        keys.append(key_expr(ref, plan.source_type(feed.source), feed.target))
    if not keys:
        return None
    partition = ", ".join(keys)
    row = first_row(
        conn,
        f"SELECT {POSITION}, {FILE}, first_position, first_file FROM ("
        f"SELECT {POSITION}, {FILE}, first_value({POSITION}) OVER w AS first_position, "
        f"first_value({FILE}) OVER w AS first_file, row_number() OVER w AS n "
        f"FROM {plan.source.numbered_sql(plan.read_types)} "
        f"WHERE {' AND '.join(f'({key}) IS NOT NULL' for key in keys)} "
        f"WINDOW w AS (PARTITION BY {partition} ORDER BY {FILE}, {POSITION})"
        f") WHERE n = 2 ORDER BY {FILE}, {POSITION} LIMIT 1",
    )
    if row is None:
        return None
    location = plan.source.locate(conn, int(row[0]), None if row[1] is None else str(row[1]))
    first = plan.source.locate(conn, int(row[2]), None if row[3] is None else str(row[3]))
    return DuplicateKeyError(
        f"duplicate primary key, first seen at {first.relative_to(location)}",
        location=location,
        column=", ".join(plan.primary_key),
        expected="unique values",
    )
