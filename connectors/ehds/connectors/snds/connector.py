"""``SndsConnector``: an SNDS extract folder -> staged OMOP rows, mapped in DuckDB SQL.

The extract is loaded into a private DuckDB workspace (a temporary file, so extracts larger
than memory spill to disk), each mapping step (``beneficiary``, ``ald``, ``dcir``, ``pmsi``,
``period``) creates ``stage__<omop table>__<part>`` tables and files its rejections in
``rejected``, and every staged table is exported as Parquet into the staging area. The commit
(ids, concepts, quarantine) is the framework's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb

from ehds.connectors.rejection import QUARANTINE_DIR
from ehds.connectors.snds.ald import map_long_term_conditions
from ehds.connectors.snds.beneficiary import map_death_causes, map_deaths, map_persons
from ehds.connectors.snds.dcir import map_dcir
from ehds.connectors.snds.period import map_observation_periods
from ehds.connectors.snds.pmsi import map_pmsi
from ehds.connectors.snds.sources import SPECS, discover
from ehds.connectors.snds.workspace import REJECTED_COLUMNS, load_sources, open_workspace
from ehds.connectors.staging import StagingArea

SNDS_TABLES: tuple[str, ...] = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "death",
)


class SndsConnector:
    """Maps the SNDS tables of ``source_dir`` (see ``sources.SPECS``) to OMOP."""

    name = "snds"
    tables = SNDS_TABLES

    def __init__(self, source_dir: Path, *, work_dir: Path | None = None) -> None:
        self.source_dir = source_dir
        self.work_dir = work_dir

    def describe(self) -> str:
        return f"SNDS extract {self.source_dir}"

    def stage(self, area: StagingArea) -> None:
        files = discover(self.source_dir)
        with tempfile.TemporaryDirectory(prefix="ehds-snds-", dir=self.work_dir) as tmp:
            work = Path(tmp)
            con = open_workspace(str(work / "workspace.duckdb"))
            try:
                counts = load_sources(con, SPECS, files)
                map_persons(con)
                map_deaths(con)
                map_death_causes(con)
                map_long_term_conditions(con)
                map_dcir(con)
                map_pmsi(con)
                map_observation_periods(con)
                _export(con, area, work)
            finally:
                con.close()
        area.write_counts("snds", {name: n for name, n in counts.items() if files.get(name)})


def _export(con: duckdb.DuckDBPyConnection, area: StagingArea, work: Path) -> None:
    names = [
        str(row[0])
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'stage\\_\\_%' "
            "ESCAPE '\\' ORDER BY table_name"
        ).fetchall()
    ]
    for name in names:
        _, table, part = name.split("__", 2)
        path = work / f"{name}.parquet"
        con.execute(f"COPY (SELECT * FROM {name} ORDER BY _key) TO '{path}' (FORMAT parquet)")
        area.add_parquet(table, path, part=f"snds-{part}")
    path = work / "rejected.parquet"
    columns = ", ".join(REJECTED_COLUMNS)
    con.execute(
        f"COPY (SELECT {columns} FROM rejected ORDER BY source, location, reason) "
        f"TO '{path}' (FORMAT parquet)"
    )
    area.add_parquet(QUARANTINE_DIR, path, part="snds")
