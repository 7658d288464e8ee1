"""``ehds etl spark csv``: a declarative CSV/Parquet mapping run by Spark into a Parquet layout.

The mapping is loaded and checked by the mapping connector (a mapping with errors is refused
before anything is read), compiled by it for Spark SQL (``compile_mapping``'s ``spark``
dialect), and its sources are registered as Spark views named as the compiled SQL expects:
CSV read as text with a header (Spark's default without ``inferSchema``), Parquet as is.
A source that lacks a column the mapping reads has that mapping's rows quarantined
(``csv.missing_column``), as in the embedded run. Row locations come from
``monotonically_increasing_id`` (unique, increasing, not line numbers: see the compiler).
"""

from __future__ import annotations

import functools

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)

from ehds.connectors.mapping.check import check_mapping
from ehds.connectors.mapping.compile import compile_missing_column_rejects, compile_table
from ehds.connectors.mapping.model import Mapping, SourceFile, TableMapping
from ehds.connectors.mapping.sources import csv_delimiter
from ehds.connectors.report import EtlReport
from ehds.connectors.spark.commit import StagedRun
from ehds.connectors.spark.job import LayoutJob, run_layout_job


def read_source(spark: SparkSession, source: SourceFile) -> DataFrame:
    """A mapping source as Spark reads it (CSV columns as text, null markers applied)."""
    path = str(source.path.resolve()) if not source.path.is_absolute() else str(source.path)
    if source.format == "parquet":
        return spark.read.parquet(path)
    reader = spark.read.option("header", "true").option("sep", csv_delimiter(source))
    quote = source.options.get("quote")
    if isinstance(quote, str):
        reader = reader.option("quote", quote)
    encoding = source.options.get("encoding")
    if isinstance(encoding, str):
        reader = reader.option("encoding", encoding)
    frame = reader.csv(path)
    nulls = source.options.get("null_values")
    if isinstance(nulls, tuple) and nulls:
        frame = frame.select(
            *[
                F.when(F.col(f"`{c}`").isin(list(nulls)), F.lit(None))
                .otherwise(F.col(f"`{c}`"))
                .alias(c)
                for c in frame.columns
            ]
        )
    return frame


def _stage(spark: SparkSession, mapping: Mapping) -> StagedRun:
    result = check_mapping(mapping)
    result.raise_fatal()
    for name, source in mapping.sources.items():
        read_source(spark, source.file).createOrReplaceTempView(name)
    used = sorted({t.source for t in mapping.tables})
    counts = {name: int(spark.table(name).count()) for name in used}
    tables: dict[str, DataFrame] = {}
    rejections: list[DataFrame] = []
    for table in mapping.table_names():
        runnable: list[TableMapping] = []
        for entry in (e for e in mapping.tables if e.table == table):
            lacking = result.missing_columns.get((entry.table, entry.index))
            if lacking is None:
                runnable.append(entry)
            else:
                rejections.append(
                    spark.sql(compile_missing_column_rejects(mapping, entry, lacking, "spark"))
                )
        if not runnable:
            continue
        query = compile_table(mapping, runnable, "spark")
        tables[table] = spark.sql(query.sql)
        rejections.append(spark.sql(query.reject_sql))
    rejected = functools.reduce(DataFrame.unionByName, rejections) if rejections else None
    return StagedRun(tables, rejected, counts)


def run_csv_job(spark: SparkSession, mapping: Mapping, job: LayoutJob) -> EtlReport:
    """Run ``mapping`` (loaded with ``load_mapping``) into the layout ``job.out``."""
    return run_layout_job(
        spark,
        job,
        connector="spark-csv",
        source=f"mapping {mapping.name} ({mapping.path})",
        owned=tuple(mapping.table_names()),
        stage=lambda _stage_dir: _stage(spark, mapping),
    )
