"""`node.yaml`: the node agent's process configuration, validated once at start.

The site policy (what may run and what may leave) is a separate, versioned file referenced from
here (`policy`), so that a data protection officer can review and version it on its own.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from ehds.core.config import ConfigError, ConfigModel, ConfigPath, load_config, read_url_file
from ehds.core.netconfig import CoordinatorEndpoint, Keepalive, Listen, TlsFiles
from ehds.omop.database import Backend, CdmDatabase, DatabaseUrlError, parse_url
from ehds.omop.schema.layout import SchemaNames

DEFAULT_RESULTS_FILE = "node-results.duckdb"
"""A DuckDB node's own results file (cohorts, the release guard's memory), beside its state."""

DEFAULT_SPARK_WAREHOUSE = "spark-warehouse"
"""A Spark node's own warehouse folder (its ``results`` database), beside its state."""


class EngineName(enum.StrEnum):
    DUCKDB = "duckdb"
    POSTGRESQL = "postgresql"
    SPARK = "spark"


class CdmSchemas(ConfigModel):
    cdm: str = "cdm"
    vocab: str = "vocab"
    results: str = "results"


class SparkConfig(ConfigModel):
    """A CDM in the Parquet layout (`ehds.omop.parquet_layout`), read by Apache Spark."""

    parquet: ConfigPath
    # local[N] runs Spark inside the node process; spark://HOST:PORT, yarn, k8s://... a cluster
    # (which must then see ``parquet`` and ``warehouse`` at the same paths).
    master: str = Field(default="local[2]", min_length=1)
    # The node's own folder for its results database; default: beside the state database.
    warehouse: ConfigPath | None = None
    # Any Spark setting (spark.executor.memory, ...); they override the node's defaults.
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)


class CdmConfig(ConfigModel):
    """The node's own OMOP CDM and the engine that reads it: a DuckDB file path or a SQLAlchemy
    URL (PostgreSQL) in ``url``, or in the file ``url_file`` (a mounted Kubernetes Secret, so
    that the password never sits in the configuration), or a Parquet layout read by Spark in
    ``spark``.

    `load_node_config` reads ``url_file`` into ``url`` and checks it as it checks ``url`` here;
    the URL is never quoted in an error, since it holds a password."""

    url: str | None = None
    url_file: ConfigPath | None = None
    spark: SparkConfig | None = None
    schemas: CdmSchemas = CdmSchemas()
    # DuckDB only: the node-owned DuckDB file for cohorts and the release guard's memory (the
    # CDM file is opened read-only). Default: beside the state database.
    results: ConfigPath | None = None

    @model_validator(mode="after")
    def _one_engine(self) -> Self:
        given = [self.url is not None, self.url_file is not None, self.spark is not None]
        if given.count(True) != 1:
            raise ValueError(
                "give exactly one of cdm.url (DuckDB or PostgreSQL), cdm.url_file (a file "
                "holding that URL) and cdm.spark"
            )
        if self.url is not None:
            try:
                database = self.database(self.url)
            except (DatabaseUrlError, ValueError) as exc:
                raise ValueError(f"cdm.url: {exc}") from None
            self.check_results(database.backend)
        elif self.spark is not None and self.results is not None:
            raise ValueError(
                "cdm.results is for a DuckDB CDM only (Spark writes cohorts to cdm.spark.warehouse)"
            )
        # url_file: the engine is known once `load_node_config` has read the file.
        if self.results is not None:
            names = (self.schemas.cdm, self.schemas.vocab, self.schemas.results)
            if self.results.stem in names:
                raise ValueError(
                    f"cdm.results: DuckDB names a database after its file, and "
                    f"{self.results.name!r} would clash with schema {self.results.stem!r}; "
                    "choose another file name"
                )
        return self

    def schema_names(self) -> SchemaNames:
        """``schemas`` as the CDM code takes them; `ValueError` when they clash."""
        schemas = self.schemas
        return SchemaNames(cdm=schemas.cdm, vocab=schemas.vocab, results=schemas.results)

    def database(self, url: str) -> CdmDatabase:
        """``url`` with this configuration's schemas; `DatabaseUrlError` or `ValueError` when
        the node cannot use it."""
        return CdmDatabase(parse_url(url), self.schema_names())

    def check_results(self, backend: Backend) -> None:
        """`ValueError` when ``results`` is given for a CDM that is not DuckDB."""
        if self.results is not None and backend is not Backend.DUCKDB:
            raise ValueError(
                "cdm.results is for a DuckDB CDM only (PostgreSQL writes cohorts to the "
                "results schema of its own database)"
            )

    @property
    def engine(self) -> EngineName:
        if self.spark is not None:
            return EngineName.SPARK
        assert self.url is not None
        backend = parse_url(self.url).get_backend_name()
        return EngineName.POSTGRESQL if backend == Backend.POSTGRESQL.value else EngineName.DUCKDB


class ReconnectConfig(ConfigModel):
    """Jittered exponential backoff between connection attempts."""

    initial_seconds: float = Field(default=0.5, gt=0)
    max_seconds: float = Field(default=30.0, gt=0)
    # How long a new stream may wait for the coordinator's Welcome before it is given up (a
    # proxy or load balancer that accepts the TCP connection but never forwards it).
    handshake_timeout_seconds: float = Field(default=30.0, gt=0)


class NodeConfig(ConfigModel):
    coordinator: CoordinatorEndpoint
    tls: TlsFiles
    cdm: CdmConfig
    # Required: a node without a policy runs nothing, so there is no default.
    policy: ConfigPath
    # The node's own small state database (tasks seen, results not yet receipted): SQLite.
    state: ConfigPath = Path("node-state.db")
    health: Listen = Listen(host="127.0.0.1", port=9465)
    keepalive: Keepalive = Keepalive()
    reconnect: ReconnectConfig = ReconnectConfig()
    # Tasks run concurrently, each in its own worker thread: one slow task never blocks
    # another, or the stream.
    max_concurrent_tasks: int = Field(default=4, ge=1)

    def results_file(self) -> Path:
        """DuckDB: the node's results file (``cdm.results`` or beside the state database)."""
        return self.cdm.results or self.state.parent / DEFAULT_RESULTS_FILE

    def spark_warehouse(self) -> Path:
        """Spark: the node's warehouse folder (``cdm.spark.warehouse`` or beside the state)."""
        spark = self.cdm.spark
        if spark is not None and spark.warehouse is not None:
            return spark.warehouse
        return self.state.parent / DEFAULT_SPARK_WAREHOUSE


def _url_from_file(config_path: Path, cdm: CdmConfig, file: Path) -> str:
    """The CDM URL in ``file``, checked as `CdmConfig` checks ``cdm.url``. Errors say what is
    wrong without quoting the URL, as the parser's own messages would."""
    url = read_url_file(config_path, "cdm.url_file", file)
    try:
        names = cdm.schema_names()
    except ValueError as exc:
        raise ConfigError(config_path, [f"cdm.schemas: {exc}"]) from None
    try:
        database = CdmDatabase(parse_url(url), names)
    except (DatabaseUrlError, ValueError):
        raise ConfigError(
            config_path,
            [
                f"cdm.url_file: {file} does not hold a CDM URL the node can use (expected "
                "postgresql+psycopg://USER:PASSWORD@HOST/DATABASE, duckdb:///FILE or a DuckDB "
                "file path ending in .duckdb, not named after a CDM schema)"
            ],
        ) from None
    try:
        cdm.check_results(database.backend)
    except ValueError as exc:
        raise ConfigError(config_path, [str(exc)]) from None
    return url


def load_node_config(path: Path) -> NodeConfig:
    config = load_config(NodeConfig, path)
    url = config.cdm.url
    if config.cdm.url_file is not None:
        url = _url_from_file(path, config.cdm, config.cdm.url_file)
    if url is not None and "://" not in url and not Path(url).is_absolute():
        # A DuckDB file given as a relative path is relative to this configuration file.
        url = str(path.parent / url)
    if url != config.cdm.url:
        # Not validated again: the URL was checked above, or by the model.
        config = config.model_copy(update={"cdm": config.cdm.model_copy(update={"url": url})})
    return config
