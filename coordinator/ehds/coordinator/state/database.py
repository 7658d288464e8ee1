"""The state database: engine settings per backend, and the Alembic migrations.

SQLite (embedded default) runs in WAL mode with ``synchronous=FULL``: a ResultReceipt tells the
node it may delete its copy, so the row behind it must survive a power cut, not only a crash
(an fsync per commit; commits are grouped, see `worker.py`). Transactions are started
explicitly (``BEGIN``) rather than by the sqlite3 module's guesswork, so that a
read-modify-write runs in one transaction.

PostgreSQL is reached through psycopg 3 (``postgresql+psycopg://``; a bare ``postgresql://`` is
read as that).

Migrations live in the package (``ehds/coordinator/migrations``) and run programmatically: the
coordinator upgrades to ``head`` at start, `ehds coordinator migrate` does it on its own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from ehds.coordinator.errors import MigrationError, StateUrlError
from ehds.core.sqlite import apply_state_pragmas

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "check_migrations",
    "create_state_engine",
    "current_revision",
    "head_revision",
    "normalise_url",
    "upgrade",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"

SQLITE_BUSY_TIMEOUT_S: Final = 30.0
"""How long a write waits for another process's lock (e.g. `ehds coordinator migrate`)."""


def normalise_url(url: str) -> URL:
    """The SQLAlchemy URL of ``state.url``; `StateUrlError` for what the coordinator cannot use."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StateUrlError(
            "state.url: not a SQLAlchemy URL (expected sqlite:///FILE or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DATABASE)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
            raise StateUrlError(
                "state.url: an in-memory SQLite database loses every study on restart; "
                "give a file (sqlite:///coordinator-state.db)"
            )
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise StateUrlError(f"state.url: the folder {folder} of the SQLite file does not exist")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise StateUrlError(
        f"state.url: database {backend!r} is not supported (use sqlite or postgresql)"
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" event start transactions, not the sqlite3 module.
    dbapi_connection.isolation_level = None
    apply_state_pragmas(dbapi_connection)


def _sqlite_on_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def create_state_engine(url: str | URL) -> Engine:
    """An engine for ``url`` with the settings above; nothing is connected yet."""
    parsed = normalise_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=2)


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for the packaged migrations, bound to an open connection (so
    that no URL, with its password, goes through Alembic's ini interpolation)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    heads = ScriptDirectory(str(MIGRATIONS_DIR)).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"the packaged migrations have {len(heads)} heads (expected 1)")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to ``revision`` in one transaction; returns the revision reached."""
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    where = engine.url.render_as_string(hide_password=True)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        raise MigrationError(
            f"cannot open the state database {where}: {exc.__cause__ or exc}"
        ) from None
    if current is not None and current not in known:
        raise MigrationError(
            f"the state database is at schema revision {current!r}, which this software does "
            "not know: it was written by a newer coordinator; upgrade the coordinator"
        )
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    except SQLAlchemyError as exc:
        raise MigrationError(f"migrating the state database {where} failed: {exc}") from exc
    reached = current_revision(engine)
    if reached != current:
        log.info("state database migrated from %s to %s", current, reached)
    return reached


def check_migrations(engine: Engine) -> None:
    """`alembic check`: raises `alembic.util.AutogenerateDiffsDetected` when the models differ
    from what the migrations create (run it on a database at ``head``)."""
    with engine.begin() as connection:
        command.check(alembic_config(connection))
