"""Filling planned tables in one transaction, table by table, each as one bulk statement.

Tables are created without their primary keys, filled by one ``INSERT ... SELECT`` (or
COPY), then given their key: building an index once is much cheaper than inserting every
row into it. A bad row stops everything: the transaction rolls back and the failure path
(``diagnostics``) turns the engine's refusal into a typed error that locates it. DuckDB
checks a key added this way only at commit, so a failed commit is diagnosed too.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import psycopg

from ehds.omop.bulk import BulkWriter, bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.loader.csv_reader import RejectTables, first_reject
from ehds.omop.loader.diagnostics import diagnose, explain_reject
from ehds.omop.loader.errors import CdmLoadError, LoadFailedError
from ehds.omop.loader.plan import TablePlan
from ehds.omop.loader.report import TableLoad
from ehds.omop.loader.source_tables import CsvTable
from ehds.omop.loader.sources import CdmSource
from ehds.omop.loader.sql import first_row

_ENGINE_ERRORS = (duckdb.Error, psycopg.Error)


def fill_tables(
    db: CdmDatabase,
    plans: Iterable[TablePlan],
    source: CdmSource,
    *,
    replace: Iterable[str],
    ensure: Iterable[str] = (),
    renumber_duplicate_keys: bool = False,
) -> dict[str, TableLoad]:
    """Re-create ``replace`` (and create ``ensure`` if missing), fill the tables of
    ``plans`` from ``source`` and commit, all in one transaction on ``db``."""
    plans = list(plans)
    loads: dict[str, TableLoad] = {}
    committing = False
    try:
        with bulk_writer(db) as writer:
            writer.ensure_tables(ensure)
            writer.replace_tables(replace, defer_primary_keys=True)
            source.attach(writer.workbench)
            for serial, plan in enumerate(plans):
                loads[plan.table] = _fill(writer, plan, source, serial, renumber_duplicate_keys)
            # No DETACH: DuckDB refuses it inside the open transaction, and the attachment ends
            # with the workbench connection, which the writer closes after the commit.
            committing = True
    except _ENGINE_ERRORS as exc:
        if not committing:
            raise
        raise _explain_commit(plans, source, exc) from None
    return loads


def _fill(
    writer: BulkWriter, plan: TablePlan, source: CdmSource, serial: int, renumber: bool
) -> TableLoad:
    rejects = None
    if isinstance(plan.source, CsvTable):
        rejects = RejectTables(f"__ehds_rejects_{serial}", f"__ehds_reject_scans_{serial}")
    renumber = renumber and plan.renumberable_key
    columns, select_sql = plan.select_sql(rejects, renumber_duplicate_keys=renumber)
    try:
        repeated = _count_repeated_keys(writer, plan) if renumber else 0
        rows = writer.insert_select(plan.table, columns, select_sql)
        reject = first_reject(writer.workbench, rejects) if rejects else None
        if reject is None:
            writer.add_primary_key(plan.table)
    except _ENGINE_ERRORS as exc:
        raise _explain(plan, source, exc) from None
    if reject is not None:
        raise explain_reject(plan, source, reject)
    notes = [f"{len(plan.renamed)} columns renamed"] if plan.renamed else []
    if repeated:
        notes.append(f"renumbered {repeated:,} rows repeating an earlier row's primary key")
    return TableLoad(
        plan.table,
        plan.source.origin,
        rows,
        rows,
        "; ".join(notes),
        renamed=plan.renamed,
        renumbered=repeated,
    )


def _count_repeated_keys(writer: BulkWriter, plan: TablePlan) -> int:
    row = first_row(writer.workbench, plan.repeated_keys_sql())
    return int(row[0]) if row else 0


def _explain(plan: TablePlan, source: CdmSource, exc: Exception) -> Exception:
    """The typed error for a failed table: located by ``diagnose``, else the engine's error
    class (never its message, which may quote values)."""
    found = _diagnose(plan, source, duplicates_only=False)
    return found or _unexplained(f"{plan.source.origin}: loading table {plan.table}", exc)


def _explain_commit(plans: list[TablePlan], source: CdmSource, exc: Exception) -> Exception:
    """A failed commit: with keys added in the transaction, DuckDB checks them only now."""
    for plan in plans:
        if plan.primary_key:
            found = _diagnose(plan, source, duplicates_only=True)
            if found is not None:
                return found
    return _unexplained("committing the load", exc)


def _diagnose(plan: TablePlan, source: CdmSource, *, duplicates_only: bool) -> CdmLoadError | None:
    try:
        return diagnose(plan, source, duplicates_only=duplicates_only)
    except duckdb.Error:
        return None


def _unexplained(what: str, exc: Exception) -> LoadFailedError:
    state = getattr(exc, "sqlstate", None)
    code = f", SQLSTATE {state}" if state else ""
    return LoadFailedError(
        f"{what} failed ({type(exc).__module__}.{type(exc).__name__}{code}); "
        "re-reading the source found no bad value"
    )
