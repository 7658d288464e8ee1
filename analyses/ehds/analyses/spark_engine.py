"""Apache Spark as a node's engine: the Parquet CDM layout as tables of Spark's session catalog.

Why a shared session: starting Spark (a JVM, its scheduler) takes seconds, so a node process
starts one `SparkSession` on its first task and keeps it; tasks run concurrently on it. Each
task gets `SparkSession.newSession()` (its own current database and SQL settings: Ibis switches
the current database while it creates a table, which must not race with another task) and its
own Ibis connection, and its Spark jobs run in a job group of its own, so that a cancel stops
that task's jobs and no other's (``cancelJobGroup``).

The catalog (in-memory, rebuilt at every start):

* databases ``cdm`` and ``vocab`` (the node's schema names): one EXTERNAL table per OMOP table,
  ``CREATE TABLE cdm.person USING parquet LOCATION ROOT/person``. A table absent from the
  layout (an empty table) gets an empty folder in the warehouse and the columns of the OMOP
  models, so that an analysis never fails on a table the site does not fill.
* database ``results`` (cohorts, the release guard's memory) with its files under
  ``spark.sql.warehouse.dir``, a node-owned folder. Its tables outlive the process as folders;
  at start they are registered again (as external tables, which `IbisCdm.drop_results_table`
  removes with their folder).

Spark's driver never holds row-level data: `IbisCdm.collect` puts the row limit in the query.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import ibis
import sqlalchemy as sa
from pyspark.sql import SparkSession

from ehds.analyses.engine import EngineKind, EngineUnavailableError, IbisCdm, OpenedEngine
from ehds.omop.parquet_layout import is_layout, table_dir, table_files
from ehds.omop.schema.layout import Tier, table_tier
from ehds.omop.schema.models import metadata

log = logging.getLogger(__name__)

DEFAULT_MASTER: Final = "local[2]"

DEFAULT_CONF: Final[Mapping[str, str]] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.catalogImplementation": "in-memory",
    # Aggregates of one node's CDM: a few partitions, not Spark's 200.
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
}
"""What a node sets unless its ``cdm.spark.conf`` says otherwise."""

EMPTY_TABLES_FOLDER: Final = "_ehds_empty_cdm_tables"

LOG4J2_FILE: Final = "_ehds_log4j2.properties"

_LOG4J2: Final = """\
# Written by the node at each Spark start: Spark's own messages at {level} and above, on stderr.
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
"""


@dataclass(frozen=True)
class SparkSettings:
    """Where the Parquet CDM is, where the node's own tables go, and how to reach Spark."""

    parquet: Path
    warehouse: Path
    master: str = DEFAULT_MASTER
    conf: Mapping[str, str] = field(default_factory=dict)
    schemas: tuple[str, str, str] = ("cdm", "vocab", "results")
    log_level: str = "ERROR"


def _spark_type(column: Any) -> str:
    """The Spark SQL type of an OMOP model column (for tables absent from the layout)."""
    kind = column.type
    if isinstance(kind, sa.BigInteger):
        return "BIGINT"
    if isinstance(kind, sa.Integer):
        return "INT"
    if isinstance(kind, sa.Float | sa.Numeric):
        return "DOUBLE"
    if isinstance(kind, sa.DateTime):
        return "TIMESTAMP"
    if isinstance(kind, sa.Date):
        return "DATE"
    return "STRING"


def _quoted_path(path: Path) -> str:
    return path.resolve().as_uri().replace("'", "\\'")


class SharedSpark:
    """The node's one `SparkSession` (started on first use) and an `IbisCdm` per task."""

    def __init__(self, settings: SparkSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._session: SparkSession | None = None

    def session(self) -> SparkSession:
        with self._lock:
            if self._session is None:
                self._session = self._start()
            return self._session

    def _start(self) -> SparkSession:
        settings = self.settings
        if not is_layout(settings.parquet):
            raise EngineUnavailableError(
                f"{settings.parquet} is not a Parquet CDM layout (no _ehds_layout.json)"
            )
        settings.warehouse.mkdir(parents=True, exist_ok=True)
        builder = SparkSession.builder.master(settings.master).appName("ehds-node")
        conf = {**DEFAULT_CONF, **settings.conf}
        conf["spark.sql.warehouse.dir"] = str(settings.warehouse.resolve())
        if "spark.driver.extraJavaOptions" not in conf:
            # Quiet from the JVM's first line on (setLogLevel only acts once Spark runs).
            log4j = settings.warehouse / LOG4J2_FILE
            log4j.write_text(_LOG4J2.format(level=settings.log_level.lower()), encoding="utf-8")
            conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={log4j.resolve()}"
        for key, value in conf.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel(settings.log_level)
        try:
            self._register(session)
        except BaseException:
            session.stop()
            raise
        return session

    def _register(self, session: SparkSession) -> None:
        """Databases and tables of the catalog (see the module docstring)."""
        cdm_db, vocab_db, results_db = self.settings.schemas
        databases = {Tier.CDM: cdm_db, Tier.VOCAB: vocab_db}
        for name in (cdm_db, vocab_db, results_db):
            session.sql(f"CREATE DATABASE IF NOT EXISTS `{name}`")
        empty_root = self.settings.warehouse / EMPTY_TABLES_FOLDER
        for table in metadata.sorted_tables:
            tier = table_tier(table.name)
            if tier not in databases:
                continue
            qualified = f"`{databases[tier]}`.`{table.name}`"
            if table_files(self.settings.parquet, table.name):
                location = table_dir(self.settings.parquet, table.name)
                session.sql(
                    f"CREATE TABLE IF NOT EXISTS {qualified} USING parquet "
                    f"LOCATION '{_quoted_path(location)}'"
                )
            else:
                location = empty_root / table.name
                location.mkdir(parents=True, exist_ok=True)
                columns = ", ".join(f"`{c.name}` {_spark_type(c)}" for c in table.columns)
                session.sql(
                    f"CREATE TABLE IF NOT EXISTS {qualified} ({columns}) USING parquet "
                    f"LOCATION '{_quoted_path(location)}'"
                )
        self._register_results(session, results_db)

    def _results_folder(self) -> Path:
        return self.settings.warehouse / f"{self.settings.schemas[2]}.db"

    def _register_results(self, session: SparkSession, results_db: str) -> None:
        """Tables of the results database that an earlier run of the node left as folders."""
        folder = self._results_folder()
        if not folder.is_dir():
            return
        known = {t.name for t in session.catalog.listTables(results_db)}
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or child.name in known:
                continue
            if not any(child.glob("*.parquet")):
                shutil.rmtree(child)  # an interrupted write: nothing to keep
                continue
            session.sql(
                f"CREATE TABLE `{results_db}`.`{child.name}` USING parquet "
                f"LOCATION '{_quoted_path(child)}'"
            )

    def _drop_files(self, name: str) -> None:
        """After a drop: the folder an external (re-registered) results table leaves behind."""
        folder = self._results_folder() / name.lower()
        if folder.is_dir():
            shutil.rmtree(folder)

    def task_engine(self) -> IbisCdm:
        """An `IbisCdm` for one task; Spark starts (if needed) on its first use."""
        cdm_db, vocab_db, results_db = self.settings.schemas
        return IbisCdm(
            EngineKind.SPARK,
            opener=self._open_task,
            cdm_database=cdm_db,
            vocab_database=vocab_db,
            results_database=results_db,
            drop_files=self._drop_files,
        )

    def _open_task(self) -> OpenedEngine:
        """On the task's thread: its own session, its job group, its Ibis connection."""
        session = self.session()
        context = session.sparkContext
        group = f"ehds-task-{uuid.uuid4().hex}"
        context.setJobGroup(group, "ehds task", interruptOnCancel=True)
        backend = ibis.pyspark.connect(session.newSession())

        def interrupt() -> None:
            context.cancelJobGroup(group)

        def close() -> None:
            # The worker thread runs other tasks later: clear this task's group from it.
            for key in (
                "spark.jobGroup.id",
                "spark.job.description",
                "spark.job.interruptOnCancel",
            ):
                context.setLocalProperty(key, None)  # type: ignore[arg-type]

        return OpenedEngine(backend=backend, interrupt=interrupt, close=close)

    def close(self) -> None:
        """Stop Spark (node shutdown)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.stop()


@contextmanager
def spark_session(settings: SparkSettings) -> Iterator[SharedSpark]:
    """A `SharedSpark` for the length of a ``with`` block (tests, benchmarks): Spark stops at
    the end. ``shared.task_engine()`` gives an `IbisCdm` (close it after use)."""
    shared = SharedSpark(settings)
    try:
        yield shared
    finally:
        shared.close()
