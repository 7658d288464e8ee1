"""``load_vocabulary``: an OHDSI vocabulary into the vocabulary tier, in either CSV dialect.

Two dialects exist in the wild, told apart by the header line of the first vocabulary file
(``CONCEPT.csv`` first):

* the **Athena** download: tab-separated files named in upper case (``CONCEPT.csv``...),
  unquoted (concept names contain ``"``), with YYYYMMDD dates. A file naming a clinical table
  there is an error (a vocabulary download never holds one: the operator picked a wrong folder);
* the **CDM** dialect of OHDSI's CDM extracts (EunomiaDatasets' ``Synthea27Nj_5.4.zip``...):
  comma-separated, quoted, ISO dates, file names in any case. Such an extract also holds
  clinical tables: they are skipped (listed in the report), only the vocabulary is loaded.

The vocabulary tier (all ten tables, ``source_to_concept_map`` included, which Athena does
not ship) is replaced in one transaction; errors are those of the CDM loader.
``CONCEPT_CPT4.csv`` (left by Athena before its CPT4 tool runs) is skipped.
"""

from __future__ import annotations

import time
from pathlib import Path

from ehds.omop.database import CdmDatabase
from ehds.omop.loader.csv_reader import ATHENA_DIALECT, CDM_DIALECT, CsvDialect
from ehds.omop.loader.fill import fill_tables
from ehds.omop.loader.plan import plan_table
from ehds.omop.loader.report import LoadReport, TableLoad
from ehds.omop.loader.sources import first_csv_line, open_source
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES, VOCAB_TABLES

ATHENA_SKIP = {
    "concept_cpt4": "CPT4 concepts before Athena's cpt4 tool merged them into CONCEPT.csv",
}
CDM_EXTRACT_SKIP = {
    **ATHENA_SKIP,
    **dict.fromkeys(
        (*CDM_TABLES, *RESULTS_TABLES),
        "a clinical table of a CDM extract: a vocabulary load reads only the vocabulary",
    ),
}
_DIALECT_NAMES = {ATHENA_DIALECT: "Athena", CDM_DIALECT: "CDM"}


def detect_dialect(source: Path) -> CsvDialect:
    """Athena when the first vocabulary file's header is tab-separated (or when there is no
    CSV to look at: Parquet and DuckDB sources have no dialect), otherwise the CDM dialect."""
    header = first_csv_line(source, ("concept", *VOCAB_TABLES))
    if header is None or "\t" in header or "," not in header:
        return ATHENA_DIALECT
    return CDM_DIALECT


def load_vocabulary(source: Path, db: CdmDatabase) -> LoadReport:
    """Replace the vocabulary tables of ``db`` with the vocabulary at ``source`` (an Athena
    download or a CDM extract; folder, zip, Parquet layout or DuckDB file)."""
    started = time.perf_counter()
    dialect = detect_dialect(source)
    skip = ATHENA_SKIP if dialect is ATHENA_DIALECT else CDM_EXTRACT_SKIP
    with open_source(
        source,
        dialect=dialect,
        accept=VOCAB_TABLES,
        skip=skip,
        table_kind="OMOP vocabulary table",
    ) as src:
        plans = [
            plan_table(table, db.table(name), None, dialect.date_hint)
            for name, table in sorted(src.tables.items())
        ]
        loads = fill_tables(db, plans, src, replace=VOCAB_TABLES)
    report = LoadReport(
        title=f"vocabulary load ({_DIALECT_NAMES[dialect]} dialect)",
        source=src.description,
        target=db.describe(),
        replaced_tiers=["vocab"],
        skipped=dict(src.skipped),
        ignored=list(src.ignored),
    )
    for name in VOCAB_TABLES:
        empty = src.empty.get(name)
        if name in loads:
            report.tables.append(loads[name])
        elif empty is not None:
            report.tables.append(TableLoad(name, empty.origin, empty.rows, 0, empty.reason))
        else:
            report.tables.append(TableLoad(name, "-", 0, 0, "not in source: empty"))
    report.seconds = time.perf_counter() - started
    return report
