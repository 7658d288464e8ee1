"""One analysis definition, three engines: the node's CDM as Ibis tables.

Why Ibis: an analysis is written once as an Ibis expression and compiled by Ibis for DuckDB
(the embedded default), PostgreSQL (production) and PySpark (CDMs too large for one machine).
SQLAlchemy has no PySpark dialect, and three hand-written SQL copies would drift apart.

Privacy contract: an analysis reads the CDM only through :class:`IbisCdm` and brings results
into Python only through :meth:`IbisCdm.collect` (and :meth:`IbisCdm.scalar`), which refuse to
return more rows than the caller says its aggregate has. Row-level data therefore stays inside
the engine; ``rows_collected`` lets a test check it.

Where cohorts go: every engine has a writable *results* place that is never the CDM.

* DuckDB: a node-owned DuckDB file (``results``) opened read-write, with the CDM file
  ATTACHed ``READ_ONLY`` as catalog ``ehds_cdm``. DuckDB allows one writer per file, and the
  CDM stays the operator's (an ETL may write it while the node is idle).
* PostgreSQL: the ``results`` schema of the CDM database (grant the node's role write access
  to that schema only).
* Spark: a database ``results`` in the session catalog whose warehouse is a node-owned folder;
  the CDM is the Parquet layout of `ehds.omop.parquet_layout`, registered as external tables.
"""

from __future__ import annotations

import enum
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import ibis
import ibis.expr.types as ir
import psycopg
import pyarrow as pa
from psycopg import sql

from ehds.analyses.base import TaskCancelledError
from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.schema.layout import VOCAB_TABLES

if TYPE_CHECKING:
    from ibis.backends import BaseBackend

DUCKDB_CDM_CATALOG = "ehds_cdm"
"""The name under which a node's DuckDB CDM file is attached (read-only) to its results file."""


class EngineKind(enum.StrEnum):
    DUCKDB = "duckdb"
    POSTGRESQL = "postgresql"
    SPARK = "spark"


class RowLimitExceededError(RuntimeError):
    """A computation tried to bring more rows into Python than its aggregate has: a bug that
    could leak row-level data, so the task fails instead."""


VOCABULARY_TABLES = frozenset(VOCAB_TABLES)
"""Tables read from the vocabulary schema; every other OMOP table from the CDM schema."""


class EngineUnavailableError(RuntimeError):
    """The engine cannot be opened (a missing CDM file or Parquet folder, a refused connection):
    the node reports CDM_UNAVAILABLE, not an internal error."""


@dataclass(frozen=True)
class OpenedEngine:
    """What an engine opener returns: the Ibis backend, how to interrupt the statement it runs
    (from another thread), and how to give it back (on the task's thread)."""

    backend: BaseBackend
    interrupt: Callable[[], None]
    close: Callable[[], None]


class IbisCdm:
    """The CDM of one node as Ibis tables, and the node's results place, for one task.

    ``cdm_database``, ``vocab_database`` and ``results_database`` are what Ibis (and circe's
    executor) take as ``database=``: ``"ehds_cdm.cdm"`` on DuckDB, ``"cdm"`` elsewhere.

    Why the backend may be opened lazily (``opener``): a node builds an `IbisCdm` for every
    task, and most test and fault analyses never touch it; a PostgreSQL connection or a Spark
    job group is made on the first use, on the task's own thread (Spark's job group is a
    property of the calling thread).
    """

    def __init__(
        self,
        kind: EngineKind,
        *,
        cdm_database: str,
        vocab_database: str,
        results_database: str,
        backend: BaseBackend | None = None,
        opener: Callable[[], OpenedEngine] | None = None,
        interrupt: Callable[[], None] | None = None,
        close: Callable[[], None] | None = None,
        drop_files: Callable[[str], None] | None = None,
    ) -> None:
        if (backend is None) == (opener is None):
            raise ValueError("give exactly one of backend and opener")
        self.kind = kind
        self.cdm_database = cdm_database
        self.vocab_database = vocab_database
        self.results_database = results_database
        self.rows_collected = 0
        self._backend = backend
        self._opener = opener
        self._interrupt = interrupt
        self._close = close
        self._drop_files = drop_files
        self._interrupted = False
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"IbisCdm(kind={self.kind.value!r}, cdm_database={self.cdm_database!r})"

    @property
    def backend(self) -> BaseBackend:
        """The Ibis backend, opened on first use."""
        backend = self._backend
        if backend is not None:
            return backend
        with self._lock:
            if self._backend is None:
                if self._interrupted:
                    raise TaskCancelledError
                if self._closed:
                    raise RuntimeError("this engine was closed")
                assert self._opener is not None
                opened = self._opener()
                self._backend = opened.backend
                self._interrupt = opened.interrupt
                self._close = opened.close
            return self._backend

    @property
    def is_open(self) -> bool:
        return self._backend is not None

    def table(self, name: str) -> ir.Table:
        """A CDM or vocabulary table by its OMOP name (lower case)."""
        database = self.vocab_database if name in VOCABULARY_TABLES else self.cdm_database
        return self.backend.table(name, database=database)

    def results_table(self, name: str) -> ir.Table:
        return self.backend.table(name, database=self.results_database)

    def create_results_table(self, name: str, expr: ir.Table) -> ir.Table:
        """Materialise ``expr`` in the results place (replacing a table of that name)."""
        if self.kind is EngineKind.SPARK:
            # Spark cannot overwrite a table that an expression over it reads, nor a table
            # re-registered (external) after a restart: drop it (and its files) first.
            self.drop_results_table(name)
            self.backend.create_table(name, expr, database=self.results_database)
        else:
            self.backend.create_table(name, expr, database=self.results_database, overwrite=True)
        return self.results_table(name)

    def drop_results_table(self, name: str) -> None:
        self.backend.drop_table(name, database=self.results_database, force=True)
        if self._drop_files is not None:
            self._drop_files(name)

    def scratch_name(self, purpose: str) -> str:
        """A results-table name no other task uses (tasks run concurrently)."""
        return f"ehds_{purpose}_{uuid.uuid4().hex[:12]}"

    def collect(self, expr: ir.Table, *, max_rows: int) -> list[dict[str, Any]]:
        """Run ``expr`` and return its rows, refusing more than ``max_rows`` of them.

        ``max_rows`` is the number of cells of the aggregate the caller computes (strata times
        estimates), known before the query runs; one more row than that means the expression
        is not the aggregate it claims to be. The limit runs inside the engine, so even then
        at most ``max_rows + 1`` rows reach Python (or Spark's driver).
        """
        table = self._arrow(expr.limit(max_rows + 1))
        if table.num_rows > max_rows:
            raise RowLimitExceededError(
                f"a query returned more than the {max_rows} aggregate rows it was allowed"
            )
        with self._lock:
            self.rows_collected += table.num_rows
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows

    def scalar(self, expr: ir.Scalar) -> Any:
        """One aggregate value (a count, a sum)."""
        table = self._arrow(expr.as_table().limit(2))
        if table.num_rows != 1 or table.num_columns != 1:
            raise RowLimitExceededError("a scalar query did not return exactly one value")
        with self._lock:
            self.rows_collected += 1
        return table.column(0)[0].as_py()

    def _arrow(self, table: ir.Table) -> pa.Table:
        """Run ``table`` into Arrow without pandas (Ibis' pandas path warns under pandas 3).

        Spark: Ibis' ``to_pyarrow`` goes through pandas; ``DataFrame.toArrow`` does not.
        """
        backend: Any = self.backend
        if self.kind is EngineKind.SPARK:
            backend._run_pre_execute_hooks(table)  # registers in-memory tables, if any
            result: pa.Table = backend._session.sql(backend.compile(table)).toArrow()
            return result
        arrow: pa.Table = backend.to_pyarrow(table)
        return arrow

    def interrupt(self) -> None:
        """Stop the statement running for this task (called from another thread); once
        interrupted, an engine not opened yet is never opened."""
        with self._lock:
            self._interrupted = True
            interrupt = self._interrupt
        if interrupt is not None:
            interrupt()

    def close(self) -> None:
        """Give the backend back (on the task's thread); safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            close = self._close
        if close is not None:
            close()


def _open_duckdb_root(cdm_file: Path, results_file: Path, results_schema: str) -> Any:
    """A read-write connection to ``results_file`` with the CDM file attached read-only."""
    if not cdm_file.is_file():
        raise EngineUnavailableError(f"the DuckDB CDM file {cdm_file} does not exist")
    if results_file.stem in (results_schema, DUCKDB_CDM_CATALOG):
        raise ValueError(
            f"results file {results_file.name!r}: DuckDB names a database after its file, which "
            f"would clash with {results_file.stem!r}; choose another file name"
        )
    results_file.parent.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(str(results_file))
    try:
        connection.execute(
            f"ATTACH IF NOT EXISTS '{_sql_literal(str(cdm_file))}' AS {DUCKDB_CDM_CATALOG} "
            "(READ_ONLY)"
        )
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{results_schema}"')
    except BaseException:
        connection.close()
        raise
    return connection


def open_duckdb(cdm_file: Path, results_file: Path, *, schemas: tuple[str, str, str]) -> IbisCdm:
    """An `IbisCdm` on a DuckDB CDM file (attached read-only) with cohorts in ``results_file``.

    ``schemas``: the CDM file's (cdm, vocab, results) schema names; the results schema name is
    used inside ``results_file``.
    """
    cdm_schema, vocab_schema, results_schema = schemas
    connection = _open_duckdb_root(cdm_file, results_file, results_schema)
    backend = ibis.duckdb.from_connection(connection)
    return IbisCdm(
        EngineKind.DUCKDB,
        backend=backend,
        cdm_database=f"{DUCKDB_CDM_CATALOG}.{cdm_schema}",
        vocab_database=f"{DUCKDB_CDM_CATALOG}.{vocab_schema}",
        results_database=results_schema,
        interrupt=connection.interrupt,
        close=backend.disconnect,
    )


class SharedDuckDb:
    """The DuckDB engine of a node process: one connection to the node's results file (the CDM
    attached read-only) shared by every task, each task on a cursor of its own.

    Why cursors: a DuckDB cursor is a separate connection to the same database instance, so
    tasks run concurrently, and interrupting one task's cursor leaves the others running.
    Why closed when the last task ends: the attached CDM file stays locked while it is open,
    and an operator's ETL may write it while the node is idle (reopening costs milliseconds).
    """

    def __init__(self, cdm_file: Path, results_file: Path, schemas: tuple[str, str, str]) -> None:
        self.cdm_file = cdm_file
        self.results_file = results_file
        self.schemas = schemas
        self._lock = threading.Lock()
        self._root: Any = None
        self._users = 0

    def task_engine(self) -> IbisCdm:
        """An `IbisCdm` for one task, opened on its first use; `IbisCdm.close` gives it back."""
        cdm_schema, vocab_schema, results_schema = self.schemas
        return IbisCdm(
            EngineKind.DUCKDB,
            opener=self._open_cursor,
            cdm_database=f"{DUCKDB_CDM_CATALOG}.{cdm_schema}",
            vocab_database=f"{DUCKDB_CDM_CATALOG}.{vocab_schema}",
            results_database=results_schema,
        )

    def _open_cursor(self) -> OpenedEngine:
        with self._lock:
            if self._root is None:
                self._root = _open_duckdb_root(self.cdm_file, self.results_file, self.schemas[2])
            self._users += 1
            try:
                cursor = self._root.cursor()
                backend = ibis.duckdb.from_connection(cursor)
            except BaseException:
                self._release()
                raise

        def close() -> None:
            try:
                backend.disconnect()
            finally:
                with self._lock:
                    self._release()

        return OpenedEngine(backend=backend, interrupt=cursor.interrupt, close=close)

    def _release(self) -> None:
        """Under the lock: one user fewer; the last one closes the root connection."""
        self._users -= 1
        if self._users == 0 and self._root is not None:
            root, self._root = self._root, None
            root.close()

    def close(self) -> None:
        """At shutdown (tasks still holding a cursor keep the connection until they end)."""
        with self._lock:
            if self._users == 0 and self._root is not None:
                root, self._root = self._root, None
                root.close()


def open_postgres(conninfo: str, *, schemas: tuple[str, str, str]) -> IbisCdm:
    """An `IbisCdm` on a PostgreSQL CDM: one connection of its own, opened on first use.

    ``conninfo``: a libpq connection string or ``postgresql://`` URL (no SQLAlchemy driver
    suffix). Cohorts go to the results schema of the same database, created if missing (the
    node's role needs CREATE there, and only SELECT on the CDM and vocabulary schemas).
    """
    cdm_schema, vocab_schema, results_schema = schemas

    def opener() -> OpenedEngine:
        try:
            connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise EngineUnavailableError(
                f"cannot connect to the PostgreSQL CDM ({type(exc).__name__})"
            ) from exc
        try:
            backend = ibis.postgres.from_connection(connection)
            _ensure_postgres_schema(connection, results_schema)
        except BaseException:
            connection.close()
            raise

        def interrupt() -> None:
            cancel = getattr(connection, "cancel_safe", None) or connection.cancel
            cancel()

        return OpenedEngine(backend=backend, interrupt=interrupt, close=backend.disconnect)

    return IbisCdm(
        EngineKind.POSTGRESQL,
        opener=opener,
        cdm_database=cdm_schema,
        vocab_database=vocab_schema,
        results_database=results_schema,
    )


def _ensure_postgres_schema(connection: Any, schema: str) -> None:
    """Create the results schema unless it exists (never touching the CDM's schemas)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        )
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


@contextmanager
def postgres_session(
    conninfo: str, *, schemas: tuple[str, str, str] = ("cdm", "vocab", "results")
) -> Iterator[IbisCdm]:
    """`open_postgres` for the length of a ``with`` block (tests, benchmarks)."""
    cdm = open_postgres(conninfo, schemas=schemas)
    try:
        yield cdm
    finally:
        cdm.close()


def _sql_literal(text: str) -> str:
    return text.replace("'", "''")


@contextmanager
def duckdb_session(
    cdm_file: Path,
    results_file: Path,
    *,
    schemas: tuple[str, str, str] = ("cdm", "vocab", "results"),
) -> Iterator[IbisCdm]:
    """`open_duckdb` for the length of a ``with`` block (tests, benchmarks, CLI)."""
    cdm = open_duckdb(cdm_file, results_file, schemas=schemas)
    try:
        yield cdm
    finally:
        cdm.close()


@contextmanager
def cdm_session(db: CdmDatabase, results_file: Path | None = None) -> Iterator[IbisCdm]:
    """An `IbisCdm` on a DuckDB or PostgreSQL `CdmDatabase` for a ``with`` block (tests,
    benchmarks, CLI). DuckDB: cohorts go to ``results_file``, by default a temporary file
    removed at the end."""
    schemas = (db.schemas.cdm, db.schemas.vocab, db.schemas.results)
    if db.backend is Backend.POSTGRESQL:
        with postgres_session(db.libpq_conninfo, schemas=schemas) as cdm:
            yield cdm
        return
    if results_file is not None:
        with duckdb_session(db.duckdb_path, results_file, schemas=schemas) as cdm:
            yield cdm
        return
    with tempfile.TemporaryDirectory(prefix="ehds-results-") as folder:
        results = Path(folder) / "node-results.duckdb"
        with duckdb_session(db.duckdb_path, results, schemas=schemas) as cdm:
            yield cdm
