"""node.yaml chooses the engine: validated once at load, every error naming its field; and
what a Spark node announces (read from the Parquet files, without starting Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from ehds.core.config import ConfigError
from ehds.node.config import EngineName, NodeConfig, load_node_config
from ehds.node.profile import cdm_versions, engine_name
from ehds.node.task_engines import node_engines
from ehds.omop.parquet_layout import write_marker


def _write(folder: Path, cdm: dict[str, Any]) -> Path:
    document = {
        "coordinator": {"address": "127.0.0.1:1"},
        "tls": {"certificate": "node.pem", "key": "node.key", "ca": "ca.pem"},
        "cdm": cdm,
        "policy": "policy.yaml",
        "state": "state/node.db",
    }
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _load(folder: Path, cdm: dict[str, Any]) -> NodeConfig:
    return load_node_config(_write(folder, cdm))


def test_duckdb_is_the_default_with_results_beside_the_state(tmp_path: Path) -> None:
    config = _load(tmp_path, {"url": "site.duckdb"})
    assert config.cdm.engine is EngineName.DUCKDB
    assert config.cdm.url == str(tmp_path / "site.duckdb")
    assert config.results_file() == tmp_path / "state" / "node-results.duckdb"
    chosen = _load(tmp_path, {"url": "site.duckdb", "results": "own/cohorts.duckdb"})
    assert chosen.results_file() == tmp_path / "own" / "cohorts.duckdb"
    assert node_engines(config).name is EngineName.DUCKDB


def test_postgresql_from_its_url(tmp_path: Path) -> None:
    config = _load(tmp_path, {"url": "postgresql://node@db.example:5432/cdm"})
    assert config.cdm.engine is EngineName.POSTGRESQL
    assert node_engines(config).name is EngineName.POSTGRESQL


def test_spark_reads_a_parquet_layout(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        {"spark": {"parquet": "lake/cdm", "master": "local[4]", "conf": {"a.b": 1, "c": True}}},
    )
    assert config.cdm.engine is EngineName.SPARK
    assert config.cdm.spark is not None
    assert config.cdm.spark.parquet == tmp_path / "lake" / "cdm"
    assert config.spark_warehouse() == tmp_path / "state" / "spark-warehouse"
    engines = node_engines(config)  # nothing starts before the first task
    assert engines.name is EngineName.SPARK
    engines.close()


@pytest.mark.parametrize(
    ("cdm", "field"),
    [
        ({}, "cdm.url"),
        ({"url": "site.duckdb", "spark": {"parquet": "lake"}}, "cdm.spark"),
        ({"url": "cdm.duckdb"}, "cdm.url"),
        ({"url": "postgresql://db/cdm", "results": "r.duckdb"}, "cdm.results"),
        ({"spark": {"parquet": "lake"}, "results": "r.duckdb"}, "cdm.results"),
        ({"url": "site.duckdb", "results": "results.duckdb"}, "cdm.results"),
        ({"url": "mysql://db/cdm"}, "cdm.url"),
        ({"spark": {"parquet": "lake", "master": ""}}, "cdm.spark.master"),
        ({"spark": {"parquet": "lake", "colour": "red"}}, "cdm.spark.colour"),
    ],
)
def test_a_bad_engine_choice_names_the_field(
    tmp_path: Path, cdm: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, cdm)
    assert field in str(caught.value)


def test_a_spark_node_announces_versions_from_the_parquet_files(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_marker(root)
    (root / "cdm_source").mkdir()
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT 'site' AS cdm_source_name, '5.4' AS cdm_version, "
            f"'v5.0 30-AUG-24' AS vocabulary_version) "
            f"TO '{root / 'cdm_source' / 'part-00000.parquet'}' (FORMAT parquet)"
        )
    assert cdm_versions(root) == ("5.4", "v5.0 30-AUG-24")
    assert engine_name(root) == "spark"
    assert cdm_versions(tmp_path / "no-layout") is None
    empty = tmp_path / "empty"
    write_marker(empty)
    assert cdm_versions(empty) == ("", "")
