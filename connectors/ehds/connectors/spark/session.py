"""A local SparkSession for one ETL job: small memory, a few partitions, no UI.

Why its own factory rather than the node's `SharedSpark`: an ETL job is a batch process that
starts Spark, writes a layout and stops, whereas the node keeps one session for its lifetime
and registers a catalog. Both share the quiet-logging and local-network settings.

Spark 4 needs Java 17 or later; `require_java` says so in one line before the JVM's stack
trace would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pyspark.sql import SparkSession

from ehds.core.errors import StateError

DEFAULT_MASTER: Final = "local[2]"
DEFAULT_DRIVER_MEMORY: Final = "1g"

JOB_CONF: Final[Mapping[str, str]] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.catalogImplementation": "in-memory",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    # Timestamps as the OMOP models and DuckDB write them: INT64 microseconds, no time zone.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # No _SUCCESS files in the layout's table folders.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}
"""What every ETL job sets unless its caller overrides it."""

_LOG4J2: Final = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
"""


class SparkUnavailableError(StateError):
    """Spark cannot start here (no Java 17+)."""


@dataclass(frozen=True)
class SparkJobSettings:
    """How to start Spark for one job. ``work_dir`` holds Spark's scratch files and the
    job's intermediate Parquet (staged rows); the caller removes it."""

    work_dir: Path
    master: str = DEFAULT_MASTER
    driver_memory: str = DEFAULT_DRIVER_MEMORY
    conf: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "ERROR"


def java_major() -> int | None:
    """The major version of the ``java`` on PATH, or None when there is none."""
    java = shutil.which("java")
    if java is None:
        return None
    done = subprocess.run(
        [java, "-version"], check=False, capture_output=True, text=True, timeout=30
    )
    for line in done.stderr.splitlines():
        if "version" in line and '"' in line:
            version = line.split('"')[1].removeprefix("1.")
            head = version.split(".")[0].split("-")[0].split("+")[0]
            return int(head) if head.isdigit() else None
    return None


def require_java() -> None:
    major = java_major()
    if major is None or major < 17:
        raise SparkUnavailableError(
            f"Spark needs Java 17 or later on PATH (found: {major or 'none'})"
        )


def start_session(settings: SparkJobSettings) -> SparkSession:
    """Start (or reuse, in the same process) a SparkSession with the job's settings."""
    require_java()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    conf = {
        **JOB_CONF,
        "spark.driver.memory": settings.driver_memory,
        "spark.local.dir": str((settings.work_dir / "spark-local").resolve()),
        "spark.sql.warehouse.dir": str((settings.work_dir / "spark-warehouse").resolve()),
        **settings.conf,
    }
    if "spark.driver.extraJavaOptions" not in conf:
        log4j = settings.work_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(level=settings.log_level.lower()), encoding="utf-8")
        conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={log4j.resolve()}"
    # Python workers run the interpreter of this process (its virtual environment, where
    # pyarrow and the connectors are): PySpark reads this variable when its context starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.master).appName("ehds-etl")
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(settings.log_level)
    return session


@contextmanager
def local_session(settings: SparkJobSettings) -> Iterator[SparkSession]:
    """A SparkSession for the length of a ``with`` block; Spark stops at the end unless it
    was already running in this process (a caller's session is used, and left running)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    session = start_session(settings)
    try:
        yield session
    finally:
        session.stop()
