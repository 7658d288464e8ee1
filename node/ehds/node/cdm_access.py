"""The CDM as a task sees it: queries that a cancel or a deadline can interrupt, and the test
that tells "the CDM is unavailable" from any other failure.

Why interrupt: a cancelled task must stop using the node's database, not only stop between two
steps. The analysis gets a `TaskCdm`, a `CdmDatabase` whose engines report every connection they
hand out; the runner's `QueryGuard.interrupt` then stops the statement in flight (DuckDB's
``interrupt()``, PostgreSQL's cancel request) and the analysis sees an error at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import duckdb
import psycopg
import sqlalchemy as sa

from ehds.analyses.base import TaskCancelledError
from ehds.omop.database import CdmDatabase
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

    def checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        del record, proxy
        with self._lock:
            if self._interrupted:
                raise TaskCancelledError
            self._connections[id(dbapi_connection)] = dbapi_connection

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        del record
        with self._lock:
            self._connections.pop(id(dbapi_connection), None)

    def interrupt(self) -> None:
        """Stop every statement now running, and refuse new connections to this task."""
        with self._lock:
            self._interrupted = True
            connections = list(self._connections.values())
        for connection in connections:
            _interrupt(connection)


@dataclass(frozen=True)
class TaskCdm(CdmDatabase):
    """The node's CDM for one task: every engine made from it reports to ``guard``."""

    guard: QueryGuard = field(default_factory=QueryGuard, compare=False, repr=False)

    @classmethod
    def of(cls, cdm: CdmDatabase, guard: QueryGuard) -> TaskCdm:
        return cls(cdm.url, cdm.schemas, guard)

    def engine(self, *, read_only: bool = False) -> sa.Engine:
        engine = super().engine(read_only=read_only)
        sa.event.listen(engine, "checkout", self.guard.checkout)
        sa.event.listen(engine, "checkin", self.guard.checkin)
        return engine


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
