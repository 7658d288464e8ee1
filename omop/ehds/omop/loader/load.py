"""``load_cdm``: a whole CDM into a database, in one transaction, as the engines bulk-load.

Semantics (what an operator can rely on):

* the 27 clinical (CDM-tier) tables are always replaced: re-created, filled where the source
  has them, empty where it does not;
* the vocabulary tier is replaced only when the source has at least one vocabulary table,
  otherwise kept as it is (created empty when missing);
* ``cohort`` and ``cohort_definition`` are replaced only when the source has them;
* a 5.3 source is upgraded to 5.4 on the way in (``versions``);
* any error leaves the database exactly as it was: one ``bulk_writer`` transaction.

Rows never pass through Python: each table is one ``INSERT ... SELECT`` over DuckDB's
``read_csv``/``read_parquet``/attached file (streamed by COPY to PostgreSQL).
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.loader.csv_reader import CDM_DIALECT
from ehds.omop.loader.errors import CdmLoadError, Location, SourceError
from ehds.omop.loader.fill import fill_tables
from ehds.omop.loader.plan import plan_table
from ehds.omop.loader.report import LoadReport, TableLoad
from ehds.omop.loader.sources import CdmSource, open_source
from ehds.omop.loader.sql import first_row, quote_identifier
from ehds.omop.loader.versions import UPGRADE_53_TO_54, DetectedVersion, detect_version
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES, VOCAB_TABLES

CDM_SKIP = dict.fromkeys(
    UPGRADE_53_TO_54.dropped_tables, "a CDM 5.3 table that 5.4 dropped: not loaded"
)


def load_cdm(source: Path, db: CdmDatabase, *, renumber_duplicate_keys: bool = False) -> LoadReport:
    """Load the CDM at ``source`` (folder, zip, Parquet layout or DuckDB file) into ``db``.

    A primary key seen twice is an error, unless ``renumber_duplicate_keys``: then every row is
    kept, each row repeating an earlier row's integer id gets a fresh id above the table's
    largest, and the report counts them. That is for known-broken public extracts (Eunomia's
    GiBleed repeats 4,384 drug_exposure_id across different persons), never a default: a
    repeated id may be referenced elsewhere, which only the operator can judge. No row is
    ever dropped."""
    started = time.perf_counter()
    _refuse_self_load(source, db)
    schemas = ["cdm", "vocab", "results", db.schemas.cdm, db.schemas.vocab, db.schemas.results]
    with open_source(
        source,
        dialect=CDM_DIALECT,
        accept=[*CDM_TABLES, *VOCAB_TABLES, *RESULTS_TABLES],
        skip=CDM_SKIP,
        schemas=schemas,
    ) as src:
        version = _detect(src)
        upgrade = version.upgrade
        plans = [
            plan_table(table, db.table(name), upgrade, CDM_DIALECT.date_hint)
            for name, table in sorted(src.tables.items())
        ]
        with_vocabulary = any(src.present(t) for t in VOCAB_TABLES)
        replaced = [
            *CDM_TABLES,
            *(VOCAB_TABLES if with_vocabulary else ()),
            *(t for t in RESULTS_TABLES if src.present(t)),
        ]
        loads = fill_tables(
            db,
            plans,
            src,
            replace=replaced,
            ensure=[t for t in (*VOCAB_TABLES, *RESULTS_TABLES) if t not in replaced],
            renumber_duplicate_keys=renumber_duplicate_keys,
        )
    report = LoadReport(
        title="CDM load",
        source=src.description,
        target=db.describe(),
        declared_version=version.declared,
        detected_version=version.version,
        version_evidence=version.evidence,
        upgraded_from=upgrade.from_version if upgrade else None,
        replaced_tiers=[
            "cdm",
            *(["vocab"] if with_vocabulary else []),
            *(t for t in RESULTS_TABLES if src.present(t)),
        ],
    )
    untouched = (
        "kept: the source has no vocabulary table"
        if not with_vocabulary
        else "not in source: empty"
    )
    for name in (*CDM_TABLES, *VOCAB_TABLES, *RESULTS_TABLES):
        entry = loads.get(name)
        if entry is None:
            entry = _absent_entry(name, src, version, untouched, name in replaced)
        report.tables.append(entry)
    report.placeholders = sorted(t for t, e in src.empty.items() if e.placeholder)
    report.skipped = dict(src.skipped)
    report.ignored = list(src.ignored)
    report.seconds = time.perf_counter() - started
    return report


def _detect(src: CdmSource) -> DetectedVersion:
    declared: str | None = None
    declared_at: Location | None = None
    table = src.tables.get("cdm_source")
    if table is not None and any(c.name.strip().lower() == "cdm_version" for c in table.columns):
        name = next(c.name for c in table.columns if c.name.strip().lower() == "cdm_version")
        conn = duckdb.connect()
        try:
            src.attach(conn)
            read_types = {c.name: "VARCHAR" for c in table.columns}
            row = first_row(
                conn,
                f"SELECT CAST({quote_identifier(name)} AS VARCHAR) AS v "
                f"FROM {table.from_sql(read_types, None)} WHERE v IS NOT NULL LIMIT 1",
            )
        except duckdb.Error as exc:
            raise CdmLoadError(
                f"cdm_source cannot be read ({type(exc).__name__})", location=table.location()
            ) from None
        finally:
            conn.close()
        declared = None if row is None else str(row[0])
        declared_at = table.location()
    columns = {
        name: frozenset(c.name.strip().lower() for c in t.columns) for name, t in src.tables.items()
    }
    present = frozenset(src.tables) | frozenset(src.skipped)
    return detect_version(declared, declared_at, columns, present)


def _absent_entry(
    name: str, src: CdmSource, version: DetectedVersion, untouched: str, replaced: bool
) -> TableLoad:
    empty = src.empty.get(name)
    if empty is not None:
        return TableLoad(name, empty.origin, empty.rows, 0, empty.reason)
    if version.upgrade and name in version.upgrade.added_tables:
        return TableLoad(name, "-", 0, 0, "new in CDM 5.4: empty")
    if name in VOCAB_TABLES:
        return TableLoad(name, "-", 0, 0, untouched)
    if not replaced:
        return TableLoad(name, "-", 0, 0, "kept: not in source")
    return TableLoad(name, "-", 0, 0, "not in source: empty")


def _refuse_self_load(source: Path, db: CdmDatabase) -> None:
    if (
        db.backend is Backend.DUCKDB
        and source.is_file()
        and source.resolve() == db.duckdb_path.resolve()
    ):
        raise SourceError(f"{source}: the source is the target database itself")
