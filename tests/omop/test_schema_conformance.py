"""The CDM schema as created in live DuckDB and PostgreSQL databases matches the official
OMOP CDM v5.4 specification, table by table and field by field."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from ehds.omop.database import CdmDatabase
from ehds.omop.install import create_empty_cdm
from ehds.omop.schema.conformance import compare, load_deviations, reflect, unexcused
from ehds.omop.schema.generate import render
from ehds.omop.schema.layout import SchemaNames
from ehds.omop.schema.spec import TableSpec, load_spec

SPEC_DIR = Path(__file__).resolve().parents[2].parent / "shared/reference/omop-cdm-5.4"
MODELS = Path(__file__).resolve().parents[2] / "omop/ehds/omop/schema/models.py"


@pytest.fixture(scope="module")
def spec() -> list[TableSpec]:
    if not SPEC_DIR.is_dir():
        pytest.skip(f"OMOP CDM v5.4 specification not found at {SPEC_DIR}")
    return load_spec(SPEC_DIR)


def _check(db: CdmDatabase, spec: list[TableSpec]) -> list[str]:
    reflected = reflect(db, [t.name for t in spec])
    diffs = compare(spec, reflected, db.backend)
    return [str(d) for d in unexcused(diffs, db.backend, load_deviations())]


def test_spec_has_39_tables(spec: list[TableSpec]) -> None:
    assert len(spec) == 39
    assert sum(len(t.fields) for t in spec) == 432


def test_committed_models_are_generated_from_the_spec(spec: list[TableSpec]) -> None:
    assert MODELS.read_text(encoding="utf-8") == render(spec), (
        "models.py is stale: run python -m ehds.omop.schema.generate "
        "../shared/reference/omop-cdm-5.4"
    )


def test_duckdb_schema_conforms(spec: list[TableSpec], tmp_path: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    create_empty_cdm(db)
    assert _check(db, spec) == []


def test_duckdb_conforms_under_custom_schema_names(spec: list[TableSpec], tmp_path: Path) -> None:
    db = CdmDatabase.parse(
        str(tmp_path / "node.duckdb"), SchemaNames("cdm_fr", "vocab_2024", "study_results")
    )
    create_empty_cdm(db)
    assert _check(db, spec) == []
    conn = duckdb.connect(str(db.duckdb_path), read_only=True)
    schemas = {r[0] for r in conn.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    conn.close()
    assert {"cdm_fr", "vocab_2024", "study_results"} <= schemas
    assert "cdm" not in schemas


@pytest.mark.postgres
def test_postgresql_schema_conforms(spec: list[TableSpec], fresh_postgres_url: str) -> None:
    db = CdmDatabase.parse(fresh_postgres_url)
    create_empty_cdm(db)
    assert _check(db, spec) == []


def test_a_real_difference_is_reported(spec: list[TableSpec], tmp_path: Path) -> None:
    """The check has teeth: a dropped NOT NULL and a missing column are caught."""
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    create_empty_cdm(db)
    conn = duckdb.connect(str(db.duckdb_path))
    conn.execute("ALTER TABLE cdm.person ALTER COLUMN year_of_birth DROP NOT NULL")
    conn.execute("ALTER TABLE vocab.concept DROP COLUMN invalid_reason")
    conn.close()
    problems = _check(db, spec)
    assert any("person.year_of_birth [nullable]" in p for p in problems), problems
    assert any("concept.invalid_reason [missing_field]" in p for p in problems), problems
    assert len(problems) == 2


def test_duckdb_file_named_like_a_schema_is_refused(tmp_path: Path) -> None:
    from ehds.omop.database import DatabaseUrlError

    with pytest.raises(DatabaseUrlError, match=r"clash with schema 'cdm'"):
        CdmDatabase.parse(str(tmp_path / "cdm.duckdb"))
