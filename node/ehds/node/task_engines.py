"""The node's analysis engine as `node.yaml` chooses it: an `IbisCdm` for every task.

What is shared between the tasks of a process, and what each task gets of its own:

* DuckDB: one connection to the node's results file with the CDM file attached read-only
  (closed when no task uses it); each task a cursor of its own, interrupted alone.
* PostgreSQL: a connection per task (cancelled alone by PostgreSQL's cancel request).
* Spark: one SparkSession for the process, started by the first task that needs it; each task
  its own session view and job group, cancelled alone.

Every task's engine is opened on its first use, so a task that reads no data opens nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from ehds.analyses.engine import IbisCdm, SharedDuckDb, open_postgres
from ehds.node.config import EngineName, NodeConfig
from ehds.omop.database import CdmDatabase

log = logging.getLogger(__name__)


class TaskEngines(Protocol):
    """What the runner needs: an engine per task, and one call at shutdown."""

    @property
    def name(self) -> EngineName: ...

    def task_engine(self) -> IbisCdm: ...

    def close(self) -> None: ...


class _DuckDbEngines:
    name = EngineName.DUCKDB

    def __init__(self, cdm_file: Path, results_file: Path, schemas: tuple[str, str, str]) -> None:
        self._shared = SharedDuckDb(cdm_file, results_file, schemas)

    def task_engine(self) -> IbisCdm:
        return self._shared.task_engine()

    def close(self) -> None:
        self._shared.close()


class _PostgresEngines:
    name = EngineName.POSTGRESQL

    def __init__(self, conninfo: str, schemas: tuple[str, str, str]) -> None:
        self._conninfo = conninfo
        self._schemas = schemas

    def task_engine(self) -> IbisCdm:
        return open_postgres(self._conninfo, schemas=self._schemas)

    def close(self) -> None:
        pass


class _SparkEngines:
    name = EngineName.SPARK

    def __init__(self, config: NodeConfig) -> None:
        # Imported here: pyspark is needed only by Spark nodes.
        from ehds.analyses.spark_engine import SharedSpark, SparkSettings  # noqa: PLC0415

        spark = config.cdm.spark
        assert spark is not None
        schemas = config.cdm.schemas
        self._shared = SharedSpark(
            SparkSettings(
                parquet=spark.parquet,
                warehouse=config.spark_warehouse(),
                master=spark.master,
                conf={key: _spark_value(value) for key, value in spark.conf.items()},
                schemas=(schemas.cdm, schemas.vocab, schemas.results),
            )
        )
        # Start the JVM now, before the node opens any gRPC channel: PySpark launches it with
        # fork(), and a fork while gRPC's threads run can leave the child broken (the gateway
        # then exits before sending its port). Also spares the first task Spark's start-up.
        try:
            self._shared.session()
        except Exception as exc:  # the first task tries again, and reports CDM_UNAVAILABLE
            log.warning(
                "Spark did not start with the node (%s); retrying at the first task",
                type(exc).__name__,
            )

    def task_engine(self) -> IbisCdm:
        return self._shared.task_engine()

    def close(self) -> None:
        self._shared.close()


def _spark_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def node_engines(config: NodeConfig) -> TaskEngines:
    """The engines of the node ``config`` describes (nothing is opened yet)."""
    schemas = config.cdm.schemas
    names = (schemas.cdm, schemas.vocab, schemas.results)
    engine = config.cdm.engine
    if engine is EngineName.SPARK:
        return _SparkEngines(config)
    assert config.cdm.url is not None
    cdm = CdmDatabase.parse(config.cdm.url)
    if engine is EngineName.POSTGRESQL:
        return _PostgresEngines(cdm.libpq_conninfo, names)
    return _DuckDbEngines(cdm.duckdb_path, config.results_file(), names)
