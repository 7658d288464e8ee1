"""``run_dq(db)``: build the checks for a CDM database, run them, evaluate the thresholds.

All checks on one table are evaluated in one scan (a batch of aggregate expressions); a batch
that fails (a column of the wrong type, a missing table) is retried check by check, so one
broken field costs one check an error status, not the report. DuckDB files are opened
read-only: a data-quality run never writes to the CDM.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Collection, Sequence

import sqlalchemy as sa

from ehds.core.errors import InputError
from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.dq.builder import Context, build_checks
from ehds.omop.dq.catalogue import DQD_NAME, KINDS
from ehds.omop.dq.check import Check, CheckResult
from ehds.omop.dq.field_rules import FIELD_RULES
from ehds.omop.dq.live_schema import LiveSchema, probe
from ehds.omop.dq.report import DqReport
from ehds.omop.schema.layout import CDM_TABLES, VOCAB_TABLES

BATCH_SIZE = 40
DQ_VERSION = "ehds-dq 1 (OHDSI DataQualityDashboard 2.x results format)"
_UNDECIDED = ("cdmTable", "cdmField")
_VALUE_BEARING = re.compile(r"invalid input|conversion|could not convert|out of range", re.I)


class UnknownCheckError(InputError):
    pass


def known_check_names() -> list[str]:
    return sorted({DQD_NAME.get(name, name) for name in KINDS})


def run_dq(
    db: CdmDatabase, *, only: Collection[str] | None = None, batch_size: int = BATCH_SIZE
) -> DqReport:
    """Run the data-quality checks on ``db`` (all of them, or the names in ``only``)."""
    wanted = set(only or ())
    unknown = sorted(wanted - set(known_check_names()))
    if unknown:
        raise UnknownCheckError(
            f"unknown data-quality check(s) {', '.join(unknown)}; "
            f"known: {', '.join(known_check_names())}"
        )
    started = dt.datetime.now(dt.UTC)
    with db.connect(read_only=db.backend is Backend.DUCKDB) as conn:
        live = probe(conn, db, (*CDM_TABLES, *VOCAB_TABLES))
        checks = build_checks(Context(db, live, FIELD_RULES))
        if wanted:
            checks = [c for c in checks if c.dqd_name in wanted]
        results = _execute(conn, db, live, checks, batch_size)
        metadata = _metadata(conn, db, live)
    return DqReport(
        results=tuple(results),
        started=started,
        finished=dt.datetime.now(dt.UTC),
        database=db.describe(),
        metadata=metadata,
    )


def _execute(
    conn: sa.Connection,
    db: CdmDatabase,
    live: LiveSchema,
    checks: Sequence[Check],
    batch_size: int,
) -> list[CheckResult]:
    outcome: dict[int, CheckResult] = {}
    by_scan: dict[str, list[int]] = {}
    for index, check in enumerate(checks):
        if check.static_error is not None:
            outcome[index] = CheckResult(check, 0, 0, 0.0, error=check.static_error)
        elif check.static is not None:
            outcome[index] = _judged(check, live, *check.static, 0.0)
        elif live.row_count(check.scan) == 0:
            outcome[index] = _judged(check, live, 0, 0, 0.0)
        else:
            by_scan.setdefault(check.scan, []).append(index)
    for indexes in by_scan.values():
        for start in range(0, len(indexes), batch_size):
            batch = indexes[start : start + batch_size]
            outcome.update(_run_batch(conn, db, live, [(i, checks[i]) for i in batch]))
    return [outcome[i] for i in range(len(checks))]


def _run_batch(
    conn: sa.Connection, db: CdmDatabase, live: LiveSchema, batch: list[tuple[int, Check]]
) -> dict[int, CheckResult]:
    started = time.perf_counter()
    try:
        values = _query(conn, db, [check for _, check in batch])
    except sa.exc.DBAPIError as exc:
        conn.rollback()
        if len(batch) == 1:
            index, check = batch[0]
            return {index: CheckResult(check, 0, 0, 0.0, error=_safe_error(exc))}
        single: dict[int, CheckResult] = {}
        for item in batch:
            single.update(_run_batch(conn, db, live, [item]))
        return single
    each = (time.perf_counter() - started) / len(batch)
    return {
        index: _judged(check, live, violated, denominator, each)
        for (index, check), (violated, denominator) in zip(batch, values, strict=True)
    }


def _query(conn: sa.Connection, db: CdmDatabase, checks: list[Check]) -> list[tuple[int, int]]:
    columns = ",\n  ".join(
        f"{c.violated} AS v{i}, {c.denominator} AS d{i}" for i, c in enumerate(checks)
    )
    scan = db.qualified(checks[0].scan)
    row = conn.execute(sa.text(f"SELECT\n  {columns}\nFROM {scan} AS t")).one()
    return [(int(row[2 * i] or 0), int(row[2 * i + 1] or 0)) for i in range(len(checks))]


def _judged(
    check: Check, live: LiveSchema, violated: int, denominator: int, seconds: float
) -> CheckResult:
    reason = None
    if check.name not in _UNDECIDED:
        if live.has_table(check.table) and live.row_count(check.table) == 0:
            reason = f"table {check.table} is empty"
        elif denominator == 0 and violated == 0:
            reason = "no value to check"
    return CheckResult(check, violated, denominator, seconds, not_applicable_reason=reason)


def _safe_error(exc: sa.exc.DBAPIError) -> str:
    """The engine's message, first line, without the quoted value a conversion error may
    carry (a report may leave the node; a row value must not)."""
    text = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc).__name__
    if _VALUE_BEARING.search(text):
        text = re.split(r"[\"']", text, maxsplit=1)[0].rstrip(" :") + " (value withheld)"
    return re.sub(r"'[^']*'", "'…'", text)


def _metadata(conn: sa.Connection, db: CdmDatabase, live: LiveSchema) -> dict[str, object]:
    """DQD's ``Metadata``: the ``cdm_source`` row with upper-case keys, plus the tool version."""
    row: dict[str, object] = {}
    if live.row_count("cdm_source") > 0:
        found = conn.execute(sa.text(f"SELECT * FROM {db.qualified('cdm_source')}")).mappings()
        first = found.first()
        if first is not None:
            row = {str(k).upper(): _plain(v) for k, v in first.items()}
    row.setdefault("CDM_SOURCE_NAME", db.describe())
    row.setdefault("CDM_SOURCE_ABBREVIATION", "")
    row.setdefault("SOURCE_DESCRIPTION", "")
    row["DQD_VERSION"] = DQ_VERSION
    return row


def _plain(value: object) -> object:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value
