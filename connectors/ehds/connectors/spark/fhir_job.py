"""``ehds etl spark fhir``: FHIR R4 bulk-export NDJSON and Bundles to a Parquet CDM layout.

Staging is the FHIR connector's own mapping run in Spark tasks (``fhir_staging``), the
observation periods its derivation in Spark SQL (``observation_period``), the commit the
framework's resolution SQL in Spark (``commit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)

from ehds.connectors.fhir.mappers import TABLES
from ehds.connectors.report import EtlReport
from ehds.connectors.spark.commit import StagedRun
from ehds.connectors.spark.fhir_staging import find_inputs, read_staged, stage_fhir
from ehds.connectors.spark.job import LayoutJob, run_layout_job
from ehds.connectors.spark.observation_period import observation_periods
from ehds.connectors.spark.staged_batches import QUARANTINE, READ_COUNT, TARGET

DERIVED = "observation_period"
MAPPED_TABLES = tuple(t for t in TABLES if t != DERIVED)
"""The tables FHIR resources map to; ``observation_period`` is derived from them."""


def _present(stage_dir: Path, target: str) -> bool:
    return (stage_dir / f"{TARGET}={target}").is_dir()


def _stage(
    spark: SparkSession, sources: Sequence[Path], stage_dir: Path, *, validate: bool
) -> StagedRun:
    files = find_inputs(sources)
    stage_fhir(spark, files, stage_dir, tables=MAPPED_TABLES, validate=validate)
    tables: dict[str, DataFrame] = {
        t: read_staged(spark, stage_dir, t) for t in MAPPED_TABLES if _present(stage_dir, t)
    }
    periods = observation_periods(tables)
    if periods is not None:
        tables[DERIVED] = periods
    rejections = (
        read_staged(spark, stage_dir, QUARANTINE) if _present(stage_dir, QUARANTINE) else None
    )
    counts: dict[str, int] = {}
    if _present(stage_dir, READ_COUNT):
        totals = (
            read_staged(spark, stage_dir, READ_COUNT)
            .groupBy("source_type")
            .agg(F.sum("n").alias("n"))
        )
        counts = {str(r["source_type"]): int(r["n"]) for r in totals.collect()}
    return StagedRun(tables, rejections, counts)


def run_fhir_job(
    spark: SparkSession, sources: Sequence[Path], job: LayoutJob, *, validate: bool = True
) -> EtlReport:
    """Map the FHIR files of ``sources`` into the layout ``job.out``."""
    return run_layout_job(
        spark,
        job,
        connector="spark-fhir",
        source=", ".join(str(s) for s in sources),
        owned=TABLES,
        stage=lambda stage_dir: _stage(spark, sources, stage_dir, validate=validate),
    )
