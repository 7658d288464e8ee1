"""The node's state file as a database: the SQLite engine, the migrations, the process lock.

Shared by the agent (`ehds.node.state`, which holds the lock and migrates at start) and the
review command (`ehds.node.review`, which writes release decisions beside a running agent,
without the lock, and never migrates).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from ehds.core.sqlite import apply_state_pragmas
from ehds.node.errors import NodeStateError

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S: Final = 30.0


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    """Alembic configured for the shipped migrations (no alembic.ini needed)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    del connection_record
    apply_state_pragmas(dbapi_connection)


def sqlite_engine(path: Path) -> sa.Engine:
    """An engine on the state file: WAL, full sync, foreign keys, a 30 s busy wait."""
    engine = sa.create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def schema_revision(engine: sa.Engine, path: Path) -> str | None:
    """The migration the state database at ``path`` is at (None: none yet)."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except sa.exc.DBAPIError:
        raise NodeStateError(f"state database {path} cannot be read") from None


def require_current_schema(engine: sa.Engine, path: Path) -> None:
    """`NodeStateError` unless the database is at the newest migration (a tool that does not
    migrate must not write into an older or newer schema)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    current = schema_revision(engine, path)
    if current != head:
        raise NodeStateError(
            f"state database {path} is at schema {current or 'none'}, this software expects "
            f"{head}: start the node (`ehds node serve`) once to migrate it"
        )


class FileLock:
    """An exclusive advisory lock on ``PATH.lock`` held for the life of the process' use."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, database: Path) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeStateError(
                f"state database {database} is in use by another node process "
                f"(lock {self.path}); run one node per state file"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
