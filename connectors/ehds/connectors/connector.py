"""``Connector``: what every source connector (FHIR, SNDS, CSV mapping) implements, and
``run_connector``, which stages a connector's output in a temporary folder and commits it.

A connector only reads its source and writes staged rows (``StagingArea``); ids, concept
mapping, quarantine and the transaction are the framework's (``commit``), so every connector
gets the same guarantees: the same input gives the same ids, nothing is dropped silently,
a failure changes nothing in the target.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal, Protocol

from ehds.connectors.commit import commit_staging
from ehds.connectors.report import EtlReport
from ehds.connectors.staging import StagingArea
from ehds.omop.database import CdmDatabase


class Connector(Protocol):
    name: str
    """Short name shown in reports and ``etl.run`` (``fhir``, ``snds``, ``csv``)."""
    tables: tuple[str, ...]
    """The CDM tables this connector owns: replaced in ``replace`` mode."""

    def describe(self) -> str:
        """The source, for the report (paths, never data)."""
        ...

    def stage(self, area: StagingArea) -> None:
        """Read the source and write staged rows, rejections and read counts to ``area``."""
        ...


def run_connector(
    connector: Connector,
    db: CdmDatabase,
    *,
    mode: Literal["replace", "incremental"] = "replace",
    id_offset: int = 0,
    work_dir: Path | None = None,
) -> EtlReport:
    """Stage ``connector``'s source in a fresh folder (under ``work_dir`` when given), commit
    it to ``db`` and remove the folder, whatever happens."""
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    stage_dir = Path(tempfile.mkdtemp(prefix=f"ehds-stage-{connector.name}-", dir=work_dir))
    try:
        area = StagingArea(stage_dir)
        connector.stage(area)
        return commit_staging(
            area,
            db,
            connector=connector.name,
            source=connector.describe(),
            tables=connector.tables,
            mode=mode,
            id_offset=id_offset,
        )
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
