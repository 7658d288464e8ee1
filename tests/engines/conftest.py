"""Fixtures of the engine tests: one small synthetic CDM, as a DuckDB file and as the Parquet
layout, and what Spark needs (Java 17+).

Spark's tests share one SparkSession per module (starting one costs seconds); they skip when
Java is missing, except in CI (CI=true), where they fail: tests/run.sh installs Java.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from ehds.connectors.spark.session import java_major
from ehds.omop.database import CdmDatabase
from ehds.omop.parquet_layout import export_layout
from ehds.omop.synth import SynthOptions, generate

PERSONS = 800


@pytest.fixture(scope="session")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engines-cdm") / "synthetic.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=PERSONS, seed=11, profile="fi"))
    return path


@pytest.fixture(scope="session")
def parquet_cdm(cdm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engines-parquet") / "cdm"
    export_layout(CdmDatabase.parse(str(cdm_file)), root)
    return root


@pytest.fixture(scope="session")
def truth(cdm_file: Path) -> dict[str, int]:
    """Row counts and persons by gender, by hand-written SQL on the DuckDB file."""
    with duckdb.connect(str(cdm_file), read_only=True) as con:
        counts: dict[str, int] = {}
        for table, schema in (("person", "cdm"), ("concept", "vocab"), ("measurement", "cdm")):
            row = con.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()
            assert row is not None
            counts[table] = int(row[0])
        for gender, n in con.execute(
            "SELECT gender_concept_id, count(*) FROM cdm.person GROUP BY 1"
        ).fetchall():
            counts[f"gender:{gender}"] = int(n)
    return counts


@pytest.fixture(scope="session")
def java() -> None:
    """Spark 4 needs Java 17+: skip without it, fail in CI."""
    major = java_major()
    if major is None or major < 17:
        message = f"Spark needs Java 17+ (found: {major or 'none'}); tests/run.sh installs it"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message} (CI=true)")
        pytest.skip(message)
