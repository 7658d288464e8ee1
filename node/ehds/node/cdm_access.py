"""The CDM as a task sees it: queries that a cancel or a deadline can interrupt, and the test
that tells "the CDM is unavailable" from any other failure.

Why interrupt: a cancelled task must stop using the node's database, not only stop between two
steps. The analysis gets a `TaskCdm`, a `CdmDatabase` that reports every connection it hands out
to the task's `QueryGuard`; the runner's `QueryGuard.interrupt` then stops the statement in
flight (DuckDB's ``interrupt()``, PostgreSQL's cancel request) and the analysis sees an error
at once.

Why shared: building an engine and the table definitions costs about 20 ms of CPU, far more
than a small query. The tasks of a process share one read-only engine (`SharedCdm`) and the
node's table definitions; each ``connect(read_only=True)`` checks out a connection of its own
(in DuckDB a separate connection to the one database instance), so interrupting one task's
statement never touches another's. A connection that was interrupted is discarded, not pooled.
DuckDB allows one configuration per file per process and locks the file while it is open, so
the shared engine is disposed after `SharedCdm.IDLE_S` seconds without use (an operator's ETL
may write the file while the node is idle) and when the runner shuts down. ``engine()`` and
read-write connections still get an engine of their own per call, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import duckdb
import psycopg
import sqlalchemy as sa
from ibis.common.exceptions import TableNotFound

from ehds.analyses.base import TaskCancelledError
from ehds.analyses.engine import EngineUnavailableError
from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.profile import NoCdmError

log = logging.getLogger(__name__)


def _interrupt(dbapi_connection: Any) -> None:
    """Stop the statement running on a driver connection, from another thread."""
    for name in ("interrupt", "cancel_safe", "cancel"):  # DuckDB, psycopg >= 3.2, psycopg
        method = getattr(dbapi_connection, name, None)
        if callable(method):
            try:
                method()
            except Exception as exc:  # best effort: the cancel flag still stops the task
                log.debug("interrupting a CDM query failed (%s)", type(exc).__name__)
            return


class QueryGuard:
    """The driver connections a task holds, so that they can be interrupted from outside."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[int, Any] = {}
        self._interrupted = False

    def was_interrupted(self) -> bool:
        return self._interrupted

    def register(self, dbapi_connection: Any) -> None:
        """The task now uses ``dbapi_connection``; TaskCancelledError once interrupted."""
        with self._lock:
            if self._interrupted:
                raise TaskCancelledError
            self._connections[id(dbapi_connection)] = dbapi_connection

    def release(self, dbapi_connection: Any) -> None:
        with self._lock:
            self._connections.pop(id(dbapi_connection), None)

    def checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        del record, proxy
        self.register(dbapi_connection)

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        del record
        self.release(dbapi_connection)

    def interrupt(self) -> None:
        """Stop every statement now running, and refuse new connections to this task."""
        with self._lock:
            self._interrupted = True
            connections = list(self._connections.values())
        for connection in connections:
            _interrupt(connection)


class SharedCdm:
    """One read-only engine over the node's CDM for every task of the process, opened on first
    use and disposed after ``IDLE_S`` seconds without a connection checked out."""

    IDLE_S: ClassVar[float] = 2.0

    def __init__(self, cdm: CdmDatabase) -> None:
        self.cdm = cdm
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._engine: sa.Engine | None = None
        self._options: sa.Engine | None = None
        self._in_use = 0
        self._idle_since = 0.0
        self._reaper: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection from the shared read-only engine, returned to its pool on exit."""
        with self._lock:
            if self._options is None:
                self._open()
            assert self._options is not None
            engine = self._options
            self._in_use += 1
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            with self._lock:
                self._in_use -= 1
                if self._in_use == 0:
                    self._idle_since = time.monotonic()
                    self._wake.notify()

    def _open(self) -> None:
        """Under the lock: create the engine (connections are made on demand)."""
        options: dict[str, Any] = {}
        if self.cdm.backend is Backend.POSTGRESQL:
            options["pool_pre_ping"] = True  # a server restart must not fail the next task
        connect_args: dict[str, object] = {}
        if self.cdm.backend is Backend.DUCKDB:
            connect_args["read_only"] = True
        engine = sa.create_engine(self.cdm.url, connect_args=connect_args, **options)
        self._engine = engine
        self._options = engine.execution_options(
            schema_translate_map=self.cdm.schemas.translate_map()
        )
        if self._reaper is None and not self._closed:
            self._reaper = threading.Thread(
                target=self._reap, name="ehds-node-cdm-idle", daemon=True
            )
            self._reaper.start()

    def _reap(self) -> None:
        with self._lock:
            while not self._closed:
                if self._engine is None:
                    self._wake.wait()
                    continue
                idle = time.monotonic() - self._idle_since
                if self._in_use == 0 and idle >= self.IDLE_S:
                    self._dispose()
                    continue
                self._wake.wait(self.IDLE_S if self._in_use else self.IDLE_S - idle)

    def _dispose(self) -> None:
        """Under the lock: close the pooled connections (checked-out ones close on checkin)."""
        engine, self._engine, self._options = self._engine, None, None
        if engine is not None:
            engine.dispose()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._dispose()
            self._wake.notify_all()


@dataclass(frozen=True)
class TaskCdm(CdmDatabase):
    """The node's CDM for one task: every connection it hands out reports to ``guard``.

    Read-only connections come from the process' `SharedCdm`; table definitions are the
    node's (built once); ``engine()`` and read-write connections make an engine per call."""

    guard: QueryGuard = field(default_factory=QueryGuard, compare=False, repr=False)
    shared: SharedCdm | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, cdm: CdmDatabase, guard: QueryGuard, shared: SharedCdm | None = None) -> TaskCdm:
        # No __post_init__ again: ``cdm`` was checked when it was made.
        task = object.__new__(cls)
        for name, value in (
            ("url", cdm.url),
            ("schemas", cdm.schemas),
            ("guard", guard),
            ("shared", shared),
        ):
            object.__setattr__(task, name, value)
        if shared is not None:
            # The node's table definitions, built once (a cached property of ``shared.cdm``).
            object.__setattr__(task, "physical_metadata", shared.cdm.physical_metadata)
        return task

    def engine(self, *, read_only: bool = False) -> sa.Engine:
        engine = super().engine(read_only=read_only)
        sa.event.listen(engine, "checkout", self.guard.checkout)
        sa.event.listen(engine, "checkin", self.guard.checkin)
        return engine

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[sa.Connection]:
        if not read_only or self.shared is None:
            with super().connect(read_only=read_only) as conn:
                yield conn
            return
        if self.guard.was_interrupted():
            raise TaskCancelledError
        with self.shared.connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            self.guard.register(dbapi_connection)
            try:
                yield conn
            finally:
                self.guard.release(dbapi_connection)
                if self.guard.was_interrupted():
                    # Interrupted, perhaps between two statements: never hand it to another task.
                    conn.invalidate()


_UNAVAILABLE = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.DisconnectionError,
    sa.exc.TimeoutError,
    duckdb.IOException,
    duckdb.ConnectionException,
    duckdb.CatalogException,
    psycopg.OperationalError,
    psycopg.errors.UndefinedTable,
    psycopg.errors.InvalidSchemaName,
    NoCdmError,
    EngineUnavailableError,
    TableNotFound,
)


def is_cdm_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the CDM cannot be reached or is not a usable CDM
    (a missing file, a refused connection, a missing table), as opposed to a bug."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, _UNAVAILABLE):
            return True
        if isinstance(current, sa.exc.DBAPIError):
            if current.connection_invalidated:
                return True
            if isinstance(current.orig, _UNAVAILABLE):
                return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
