"""Rejected records of a Spark job, written to ``LAYOUT/_etl/quarantine/``.

The embedded connectors put rejections in the target database's ``etl.quarantine``; a layout
has no database, so the job writes them beside the tables, with the same columns
(``QUARANTINE_COLUMNS``: the run id, the OMOP table for a commit-time rejection or NULL for a
source record the connector could not map, then those of `Rejection`), in a folder that the
layout's readers skip. ``record`` may hold the raw source record: the folder stays inside the
node, as the quarantine table does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

from pyspark.sql import DataFrame
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)

from ehds.connectors.etl_store import QUARANTINE_COLUMNS

ETL_FOLDER: Final = "_etl"
QUARANTINE_FOLDER: Final = "quarantine"
REPORT_FILE: Final = "report.json"


def etl_dir(root: Path) -> Path:
    return root / ETL_FOLDER


def quarantine_dir(root: Path) -> Path:
    return etl_dir(root) / QUARANTINE_FOLDER


def write_quarantine(frames: list[DataFrame], root: Path) -> int:
    """Write the run's rejections (frames with ``QUARANTINE_COLUMNS``), replacing the
    folder's previous content; returns how many there are (none: no folder)."""
    target = quarantine_dir(root)
    if target.exists():
        shutil.rmtree(target)
    combined: DataFrame | None = None
    for frame in frames:
        part = frame.select(
            F.col("run_id").cast("bigint"),
            *[F.col(c).cast("string") for c in QUARANTINE_COLUMNS[1:]],
        )
        combined = part if combined is None else combined.unionByName(part)
    if combined is None:
        return 0
    ordered = combined.orderBy("omop_table", "location", "record_key").coalesce(1)
    ordered.write.mode("overwrite").parquet(str(target.resolve()))
    return int(ordered.sparkSession.read.parquet(str(target.resolve())).count())
