"""``load_vocabulary``: an OHDSI Athena download into the vocabulary tier.

Athena ships tab-separated files named in upper case (``CONCEPT.csv``...), unquoted (concept
names contain ``"``), with YYYYMMDD dates: the loader's one CSV reader reads them with the
Athena dialect. The vocabulary tier (all ten tables, ``source_to_concept_map`` included, which
Athena does not ship) is replaced in one transaction; errors are those of the CDM loader.
``CONCEPT_CPT4.csv`` (left by Athena before its CPT4 tool runs) is skipped.
"""

from __future__ import annotations

import time
from pathlib import Path

from ehds.omop.database import CdmDatabase
from ehds.omop.loader.csv_reader import ATHENA_DIALECT
from ehds.omop.loader.fill import fill_tables
from ehds.omop.loader.plan import plan_table
from ehds.omop.loader.report import LoadReport, TableLoad
from ehds.omop.loader.sources import open_source
from ehds.omop.schema.layout import VOCAB_TABLES

ATHENA_SKIP = {
    "concept_cpt4": "CPT4 concepts before Athena's cpt4 tool merged them into CONCEPT.csv",
}


def load_vocabulary(source: Path, db: CdmDatabase) -> LoadReport:
    """Replace the vocabulary tables of ``db`` with the Athena download at ``source``."""
    started = time.perf_counter()
    with open_source(
        source,
        dialect=ATHENA_DIALECT,
        accept=VOCAB_TABLES,
        skip=ATHENA_SKIP,
        table_kind="OMOP vocabulary table",
    ) as src:
        plans = [
            plan_table(table, db.table(name), None, ATHENA_DIALECT.date_hint)
            for name, table in sorted(src.tables.items())
        ]
        loads = fill_tables(db, plans, src, replace=VOCAB_TABLES)
    report = LoadReport(
        title="vocabulary load",
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
