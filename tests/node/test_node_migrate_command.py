"""`ehds node migrate`: create or migrate the node's state database before the node starts (a
Kubernetes initContainer), as `NodeState.open` does at start, and refuse beside a running node."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from ehds.cli.main import main
from ehds.node.state import NodeState
from ehds.node.state_db import alembic_config, require_current_schema, sqlite_engine


def _config(folder: Path) -> Path:
    """A node.yaml whose state is ``state/node.db``; nothing else is read by migrate."""
    document = {
        "coordinator": {"address": "127.0.0.1:1"},
        "tls": {"certificate": "node.pem", "key": "node.key", "ca": "ca.pem"},
        "cdm": {"url": "site.duckdb"},
        "policy": "policy.yaml",
        "state": "state/node.db",
    }
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _revision(path: Path) -> str | None:
    engine = sqlite_engine(path)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _migrate(config: Path) -> int:
    return main(["node", "migrate", "--config", str(config)])


def test_migrate_creates_the_state_database_at_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state" / "node.db"  # relative to node.yaml; its folder is made too
    assert _migrate(config) == 0
    assert capsys.readouterr().out == f"state database at revision {_head()}\n"
    assert _revision(state) == _head()
    # What the tools that never migrate (`ehds node review`) require.
    engine = sqlite_engine(state)
    try:
        require_current_schema(engine, state)
    finally:
        engine.dispose()
    # Again: nothing to do, the same answer.
    assert _migrate(config) == 0
    assert capsys.readouterr().out == f"state database at revision {_head()}\n"
    # And the node opens it afterwards (the lock was released).
    NodeState.open(state).close()


def test_migrate_brings_an_older_state_database_to_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state" / "node.db"
    state.parent.mkdir()
    engine = sa.create_engine(f"sqlite:///{state}")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
    finally:
        engine.dispose()
    assert _revision(state) == "0001" != _head()
    assert _migrate(config) == 0
    assert capsys.readouterr().out == f"state database at revision {_head()}\n"
    assert _revision(state) == _head()


def test_migrate_refuses_while_a_node_holds_the_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state" / "node.db"
    with NodeState.open(state):
        assert _migrate(config) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "is in use by another node process" in captured.err
    assert str(state) in captured.err


def test_migrate_is_described_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["node", "--help"])
    assert exited.value.code == 0
    assert "migrate" in capsys.readouterr().out
