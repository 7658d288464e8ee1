"""A process's state database, found from its configuration file and opened read-only.

``ehds audit`` runs beside a node or a coordinator (often while it runs) and must not depend on
either: it reads only the few keys it needs from ``node.yaml`` or ``coordinator.yaml`` instead
of importing their configuration models, and it opens the database so that it cannot write
(SQLite ``mode=ro``; PostgreSQL ``default_transaction_read_only``). Relative paths are
relative to the configuration file, as everywhere else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import URL, make_url

from ehds.audit.table import TABLE_NAME, audit_table, read_lines
from ehds.core.config import read_url_file
from ehds.core.errors import InputError, StateError

__all__ = [
    "StateDatabase",
    "export_lines",
    "open_read_only",
    "state_from_config",
    "state_from_url",
]

NODE_DEFAULT_STATE: Final = "node-state.db"
COORDINATOR_DEFAULT_URL: Final = "sqlite:///coordinator-state.db"


@dataclass(frozen=True)
class StateDatabase:
    """Where a chain is kept: ``url``; ``certificate``: the process's own (from its config)."""

    url: URL
    certificate: Path | None = None

    @property
    def label(self) -> str:
        return self.url.render_as_string(hide_password=True)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a YAML file ({exc})") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected a mapping of keys (a node.yaml or coordinator.yaml)")
    return document


def _sqlite_url(file: Path) -> URL:
    return URL.create("sqlite", database=str(file))


def state_from_config(path: Path) -> StateDatabase:
    """The state database of the node (key ``cdm``) or coordinator (key ``listen``) of ``path``."""
    document = _load_yaml(path)
    folder = path.resolve().parent
    certificate = None
    tls = document.get("tls")
    if isinstance(tls, dict) and isinstance(tls.get("certificate"), str):
        certificate = folder / tls["certificate"]
    state = document.get("state")
    if "cdm" in document:
        if state is None:
            state = NODE_DEFAULT_STATE
        if not isinstance(state, str):
            raise InputError(f"{path}: state: expected the path of the node's SQLite database")
        return StateDatabase(_sqlite_url(folder / state), certificate)
    if "listen" in document or isinstance(state, dict):
        url_text = COORDINATOR_DEFAULT_URL
        key = "state.url"
        if isinstance(state, dict) and isinstance(state.get("url_file"), str):
            # A Kubernetes install keeps the URL, with its password, in a mounted Secret.
            key = "state.url_file"
            url_text = read_url_file(path, key, folder / state["url_file"])
        elif isinstance(state, dict) and state.get("url") is not None:
            url_text = state["url"]
        if not isinstance(url_text, str):
            raise InputError(f"{path}: state.url: expected a SQLAlchemy URL")
        url = _parse_url(url_text, f"{path}: {key}")
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            url = url.set(database=str(folder / url.database))
        return StateDatabase(url, certificate)
    raise InputError(
        f"{path}: neither a node configuration (no `cdm` key) "
        "nor a coordinator configuration (no `listen` key)"
    )


def _parse_url(text: str, where: str) -> URL:
    try:
        return make_url(text)
    except sa.exc.ArgumentError:
        raise InputError(f"{where}: not a SQLAlchemy database URL") from None


def state_from_url(text: str) -> StateDatabase:
    """``--db URL``: a SQLAlchemy URL (a relative SQLite file is relative to the cwd)."""
    return StateDatabase(_parse_url(text, "--db"))


def open_read_only(state: StateDatabase) -> sa.Engine:
    """An engine that cannot write to ``state``; :class:`StateError` if it has no chain."""
    url = state.url
    if url.get_backend_name() == "sqlite":
        file = Path(url.database or "")
        if not url.database or not file.is_file():
            raise StateError(f"no state database at {file}")
        uri = f"file:{quote(str(file.resolve()))}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True)

        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
    elif url.get_backend_name() == "postgresql":
        engine = sa.create_engine(
            url,
            connect_args={"options": "-c default_transaction_read_only=on"},
            poolclass=sa.pool.NullPool,
        )
    else:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            present = sa.inspect(conn).has_table(TABLE_NAME)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StateError(f"cannot read {state.label}: {reason}") from None
    if not present:
        engine.dispose()
        raise StateError(f"{state.label} has no {TABLE_NAME} table (no audit chain yet)")
    return engine


def export_lines(
    engine: sa.Engine, *, since: str | None = None, after_seq: int = 0
) -> Iterator[bytes]:
    """The chain's canonical lines in order, read on one read-only connection."""
    table = audit_table(sa.MetaData())
    with engine.connect() as conn:
        yield from read_lines(conn, table, since=since, after_seq=after_seq)
