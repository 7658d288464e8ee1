"""coordinator.yaml `state.url_file`: the state database URL read from a file (a mounted
Kubernetes Secret), so that its password never sits in a ConfigMap, and never quoted back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ehds.cli.main import main as ehds_main
from ehds.coordinator.config import CoordinatorConfig, load_coordinator_config
from ehds.coordinator.state.database import head_revision
from ehds.core.config import ConfigError

PASSWORD = "hunter2-s3cret"
POSTGRES_URL = f"postgresql+psycopg://ehds:{PASSWORD}@db.example.org:5432/coordinator"


def _write(folder: Path, state: dict[str, Any] | None) -> Path:
    document: dict[str, Any] = {
        "tls": {"certificate": "coordinator.pem", "key": "coordinator.key", "ca": "ca.pem"}
    }
    if state is not None:
        document["state"] = state
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "coordinator.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _load(folder: Path, state: dict[str, Any] | None) -> CoordinatorConfig:
    return load_coordinator_config(_write(folder, state))


def test_the_url_is_read_from_the_file_without_surrounding_whitespace(tmp_path: Path) -> None:
    secret = tmp_path / "db" / "url"
    secret.parent.mkdir()
    secret.write_text(f"  {POSTGRES_URL}\n\n", encoding="utf-8")
    config = _load(tmp_path, {"url_file": str(secret)})
    assert config.state.url == POSTGRES_URL
    assert config.state.url_file == secret


def test_a_relative_url_file_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    (folder / "db").mkdir(parents=True)
    (folder / "db" / "url").write_text(POSTGRES_URL, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = _load(folder, {"url_file": "db/url"})
    assert config.state.url_file == folder / "db" / "url"
    assert config.state.url == POSTGRES_URL


def test_a_relative_sqlite_file_in_the_url_file_is_relative_to_the_config_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "url").write_text("sqlite:///state/coordinator.db\n", encoding="utf-8")
    config = _load(tmp_path, {"url_file": "url"})
    assert config.state.url == f"sqlite:///{(tmp_path / 'state' / 'coordinator.db').resolve()}"


def test_without_url_file_nothing_changes(tmp_path: Path) -> None:
    default = _load(tmp_path, None)
    assert default.state.url == f"sqlite:///{(tmp_path / 'coordinator-state.db').resolve()}"
    assert default.state.url_file is None
    explicit = _load(tmp_path, {"url": POSTGRES_URL})
    assert explicit.state.url == POSTGRES_URL
    # The default is no explicit url: url_file alone is not "both".
    assert _load(tmp_path, {"url": "sqlite:///coordinator-state.db"}).state.url_file is None


def test_url_and_url_file_together_are_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "url").write_text(POSTGRES_URL, encoding="utf-8")
    # Even an explicit url equal to the default: the file would silently lose otherwise.
    for url in (POSTGRES_URL, "sqlite:///coordinator-state.db"):
        with pytest.raises(ConfigError) as caught:
            _load(tmp_path, {"url": url, "url_file": "url"})
        message = str(caught.value)
        assert "state.url " in message
        assert "state.url_file" in message
        assert PASSWORD not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        (" \n\t\n", "is empty"),
        (f"{POSTGRES_URL}\n{POSTGRES_URL}\n", "several lines"),
        (b"\xff\xfe" + PASSWORD.encode(), "not UTF-8"),
    ],
)
def test_an_unusable_url_file_names_the_key_and_the_file_never_the_content(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    secret = tmp_path / "secret-url"
    if isinstance(content, str):
        secret.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        secret.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"url_file": "secret-url"})
    message = str(caught.value)
    assert "state.url_file" in message
    assert str(secret) in message
    assert problem in message
    assert PASSWORD not in message


def test_migrate_uses_the_url_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "url").write_text("sqlite:///state/coordinator.db\n", encoding="utf-8")
    config = _write(tmp_path, {"url_file": "url"})
    assert ehds_main(["coordinator", "migrate", "--config", str(config)]) == 0
    assert f"state database at revision {head_revision()}" in capsys.readouterr().out
    assert (tmp_path / "state" / "coordinator.db").is_file()
