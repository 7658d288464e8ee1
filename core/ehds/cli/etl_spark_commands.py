"""``ehds etl spark fhir|csv``: the FHIR and CSV connectors as Spark jobs writing the Parquet
CDM layout (docs/connectors/spark.md), for sources that do not fit one machine.

Spark runs in local mode by default (``--master local[2]``); ``--conf KEY=VALUE`` passes any
Spark setting. The job's scratch folder (staged rows, intermediate relations, a DuckDB
vocabulary exported to Parquet) is made under ``--work-dir`` and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ehds.core.errors import InputError

if TYPE_CHECKING:
    from ehds.connectors.report import EtlReport
    from ehds.connectors.spark.job import LayoutJob


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spark = commands.add_parser(
        "spark", help="run the FHIR or CSV connector as a Spark job into a Parquet CDM layout"
    )
    jobs = spark.add_subparsers(dest="spark_command", required=True, metavar="JOB")

    fhir = jobs.add_parser("fhir", help="FHIR R4 bulk-export NDJSON (plain or gzip) and Bundles")
    fhir.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="files or folders")
    fhir.add_argument(
        "--no-validate",
        action="store_true",
        help="skip fhir.resources validation (the documented fast path)",
    )
    _add_job_arguments(fhir)
    fhir.set_defaults(handler=_fhir)

    csv = jobs.add_parser("csv", help="CSV/Parquet files mapped by a YAML mapping")
    csv.add_argument("mapping", type=Path, metavar="MAPPING.yaml", help="the mapping file")
    csv.add_argument("--source-dir", type=Path, metavar="DIR", help="folder of the source files")
    _add_job_arguments(csv)
    csv.set_defaults(handler=_csv)


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="LAYOUT_DIR",
        help="the Parquet CDM layout to write (new, empty, or an earlier layout)",
    )
    parser.add_argument(
        "--vocab",
        required=True,
        type=Path,
        metavar="VOCAB",
        help="the vocabulary: a Parquet CDM layout or a DuckDB CDM file",
    )
    parser.add_argument(
        "--id-offset", type=int, default=0, metavar="N", help="ids start above N (default 0)"
    )
    parser.add_argument(
        "--no-vocab-copy",
        action="store_true",
        help="do not copy the vocabulary tables into the output layout",
    )
    parser.add_argument("--report-json", type=Path, metavar="FILE", help="also write the report")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="scratch folder's parent")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--driver-memory", default="1g", help="Spark driver memory (default 1g)")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting"
    )


def _spark_conf(pairs: list[str]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--conf {pair!r}: expected KEY=VALUE")
        conf[key.strip()] = value
    return conf


def _run(args: argparse.Namespace, job_fn: Callable[[object, LayoutJob], EtlReport]) -> int:
    from ehds.connectors.spark.job import LayoutJob
    from ehds.connectors.spark.session import SparkJobSettings, local_session

    if args.id_offset < 0:
        raise InputError(f"--id-offset {args.id_offset}: must be 0 or more")
    conf = _spark_conf(args.conf)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ehds-spark-etl-", dir=args.work_dir))
    try:
        settings = SparkJobSettings(
            work / "spark", master=args.master, driver_memory=args.driver_memory, conf=conf
        )
        job = LayoutJob(args.out, args.vocab, work / "job", args.id_offset, not args.no_vocab_copy)
        with local_session(settings) as spark:
            report = job_fn(spark, job)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report.render())
    if args.report_json is not None:
        args.report_json.write_text(
            json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return 0


def _fhir(args: argparse.Namespace) -> int:
    from ehds.connectors.spark.fhir_job import run_fhir_job

    def job_fn(spark: object, job: LayoutJob) -> EtlReport:
        return run_fhir_job(spark, args.sources, job, validate=not args.no_validate)  # type: ignore[arg-type]

    return _run(args, job_fn)


def _csv(args: argparse.Namespace) -> int:
    from ehds.connectors.mapping import load_mapping
    from ehds.connectors.spark.csv_job import run_csv_job

    mapping = load_mapping(args.mapping, source_dir=args.source_dir)

    def job_fn(spark: object, job: LayoutJob) -> EtlReport:
        return run_csv_job(spark, mapping, job)  # type: ignore[arg-type]

    return _run(args, job_fn)
