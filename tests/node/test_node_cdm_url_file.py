"""node.yaml `cdm.url_file`: the CDM URL read from a file (a mounted Kubernetes Secret), so
that the password of a PostgreSQL CDM never sits in a ConfigMap, checked as `cdm.url` is, and
never quoted back in an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from node_harness import Pki, write_node_config, write_policy

from ehds.cli.main import main
from ehds.core.config import ConfigError
from ehds.node.config import EngineName, NodeConfig, load_node_config

PASSWORD = "hunter2-s3cret"
POSTGRES_URL = f"postgresql+psycopg://reader:{PASSWORD}@cdm-db.example:5432/omop"


def _write(folder: Path, cdm: dict[str, Any]) -> Path:
    document = {
        "coordinator": {"address": "127.0.0.1:1"},
        "tls": {"certificate": "node.pem", "key": "node.key", "ca": "ca.pem"},
        "cdm": cdm,
        "policy": "policy.yaml",
        "state": "state/node.db",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _load(folder: Path, cdm: dict[str, Any]) -> NodeConfig:
    return load_node_config(_write(folder, cdm))


def _secret(folder: Path, content: str, name: str = "url") -> Path:
    path = folder / "db" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def test_a_postgresql_url_from_the_file_gives_the_postgresql_engine(tmp_path: Path) -> None:
    secret = _secret(tmp_path, f"{POSTGRES_URL}\n")
    config = _load(tmp_path, {"url_file": str(secret)})
    assert config.cdm.url == POSTGRES_URL
    assert config.cdm.url_file == secret
    assert config.cdm.engine is EngineName.POSTGRESQL


def test_a_relative_url_file_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    _secret(folder, POSTGRES_URL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = _load(folder, {"url_file": "db/url"})
    assert config.cdm.url_file == folder / "db" / "url"
    assert config.cdm.url == POSTGRES_URL


def test_a_relative_duckdb_path_in_the_file_is_relative_to_the_config_file(
    tmp_path: Path,
) -> None:
    _secret(tmp_path, "site.duckdb\n")
    config = _load(tmp_path, {"url_file": "db/url", "results": "own/cohorts.duckdb"})
    assert config.cdm.url == str(tmp_path / "site.duckdb")
    assert config.cdm.engine is EngineName.DUCKDB
    assert config.results_file() == tmp_path / "own" / "cohorts.duckdb"


def test_url_and_spark_keep_their_behaviour(tmp_path: Path) -> None:
    assert _load(tmp_path, {"url": "site.duckdb"}).cdm.url == str(tmp_path / "site.duckdb")
    assert _load(tmp_path, {"url": POSTGRES_URL}).cdm.engine is EngineName.POSTGRESQL
    spark = _load(tmp_path, {"spark": {"parquet": "lake"}})
    assert (spark.cdm.engine, spark.cdm.url, spark.cdm.url_file) == (EngineName.SPARK, None, None)


@pytest.mark.parametrize(
    "cdm",
    [
        {},
        {"url": "site.duckdb", "url_file": "db/url"},
        {"url_file": "db/url", "spark": {"parquet": "lake"}},
        {"url": "site.duckdb", "url_file": "db/url", "spark": {"parquet": "lake"}},
    ],
)
def test_exactly_one_of_url_url_file_and_spark(tmp_path: Path, cdm: dict[str, Any]) -> None:
    _secret(tmp_path, POSTGRES_URL)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, cdm)
    message = str(caught.value)
    for key in ("cdm.url ", "cdm.url_file", "cdm.spark"):
        assert key in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
        (f"{POSTGRES_URL}\nsecond line\n", "several lines"),
        (f"mysql://reader:{PASSWORD}@db/omop", "does not hold a CDM URL"),
        (f"postgresql://reader:{PASSWORD}@db:port/omop", "does not hold a CDM URL"),
        (f"{PASSWORD} is not a url", "does not hold a CDM URL"),
        (f"/data/{PASSWORD}/cdm.duckdb", "does not hold a CDM URL"),
    ],
)
def test_an_unusable_url_file_names_the_key_and_the_file_never_the_content(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    secret = tmp_path / "db" / "url"
    if content is not None:
        _secret(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"url_file": "db/url"})
    message = str(caught.value)
    assert "cdm.url_file" in message
    assert str(secret) in message
    assert problem in message
    assert PASSWORD not in message


def test_results_are_refused_for_a_postgresql_url_from_the_file(tmp_path: Path) -> None:
    _secret(tmp_path, POSTGRES_URL)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"url_file": "db/url", "results": "r.duckdb"})
    assert "cdm.results is for a DuckDB CDM only" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_check_never_prints_the_password_of_a_cdm_it_cannot_read(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path / "policy.yaml")
    config = write_node_config(tmp_path, pki=pki, cdm=tmp_path / "x.duckdb", address="h:1")
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    # Nothing listens on port 1: the CDM cannot be read.
    unreachable = f"postgresql+psycopg://reader:{PASSWORD}@127.0.0.1:1/omop"
    document["cdm"] = {"url_file": str(_secret(tmp_path, unreachable))}
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert main(["node", "check", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "cannot read cdm_source in the CDM postgresql+psycopg://reader:***@" in captured.err
    assert PASSWORD not in captured.out + captured.err
