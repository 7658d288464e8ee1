"""What every Spark ETL job does around its connector: prepare the layout, register the
vocabulary, commit, copy the vocabulary in, write the report.

The report (the framework's `EtlReport`) is also written to ``LAYOUT/_etl/report.json``; its
run id counts the runs into that layout (the embedded commit numbers runs in ``etl.run``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from ehds.connectors.report import EtlReport
from ehds.connectors.spark.commit import StagedRun, commit_to_layout
from ehds.connectors.spark.layout_writer import prepare_layout
from ehds.connectors.spark.quarantine import REPORT_FILE, etl_dir
from ehds.connectors.spark.vocabulary import RESOLUTION_TABLES, open_vocabulary
from ehds.omop.schema.layout import VOCAB_TABLES


@dataclass(frozen=True)
class LayoutJob:
    """Where a job writes (``out``, a Parquet CDM layout), what it resolves codes against
    (``vocab``: a layout or a DuckDB CDM file) and its scratch folder (``work_dir``, which
    the caller removes)."""

    out: Path
    vocab: Path
    work_dir: Path
    id_offset: int = 0
    copy_vocabulary: bool = True
    """Copy the vocabulary tables into ``out`` so that it is a complete CDM."""


def _next_run_id(out: Path) -> int:
    previous = etl_dir(out) / REPORT_FILE
    if previous.is_file():
        try:
            return int(json.loads(previous.read_text(encoding="utf-8"))["run_id"]) + 1
        except (ValueError, KeyError, TypeError):
            return 1
    return 1


def run_layout_job(
    spark: SparkSession,
    job: LayoutJob,
    *,
    connector: str,
    source: str,
    owned: Sequence[str],
    stage: Callable[[Path], StagedRun],
) -> EtlReport:
    """Run ``stage`` (which stages into the folder it is given) and commit what it staged
    into ``job.out``; returns the report."""
    clock = time.perf_counter()
    prepare_layout(job.out)
    vocab_tables = VOCAB_TABLES if job.copy_vocabulary else RESOLUTION_TABLES
    vocabulary = open_vocabulary(job.vocab, job.work_dir / "vocab", tables=vocab_tables)
    vocabulary.register(spark)
    report = EtlReport(
        _next_run_id(job.out), connector, source, f"Parquet layout {job.out}", "replace"
    )
    run = stage(job.work_dir / "stage")
    commit_to_layout(
        spark,
        run,
        job.out,
        job.work_dir / "commit",
        owned=owned,
        report=report,
        id_offset=job.id_offset,
    )
    if job.copy_vocabulary:
        vocabulary.copy_into(job.out)
    report.seconds = time.perf_counter() - clock
    folder = etl_dir(job.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_FILE).write_text(
        json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return report
