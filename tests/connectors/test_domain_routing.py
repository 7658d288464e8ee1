"""Domain routing at commit: a row goes to the table of its standard concept's domain, with
its columns translated by role, stable ids, and the report counting the moves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from ehds.connectors.connector import run_connector
from ehds.connectors.domains import kept_sql, moved_sql, route_sql
from ehds.connectors.fhir.connector import FhirConnector
from ehds.connectors.report import RoutedCounts
from ehds.omop.database import CdmDatabase
from ehds.omop.dq import run_dq
from ehds.omop.vocabulary import load_vocabulary
from etl_fixtures import ListConnector

# Synthea27Nj vocabulary facts the assertions rely on.
EMPLOYMENT = ("160903007", 4053118)  # SNOMED "Full-time employment": standard, Observation domain
SCREENING = ("171207006", 4064377)  # SNOMED "Depression screening": standard, Measurement domain
DIABETES = ("44054006", 201826)  # SNOMED standard, Condition domain
DEAD_END = "316744009"  # non-standard, no 'Maps to': unmapped (0)
DRUG = ("20489", 1749008)  # RxNorm standard, Drug domain
EVENT_TABLES = (
    "condition_occurrence",
    "procedure_occurrence",
    "measurement",
    "observation",
    "drug_exposure",
    "device_exposure",
)
START = dt.date(2020, 1, 2)
START_AT = dt.datetime(2020, 1, 2, 10, 30)


def person(key: str) -> dict[str, object]:
    return {
        "_key": key,
        "gender_concept_id": 8507,
        "year_of_birth": 1970,
        "race_concept_id": 0,
        "ethnicity_concept_id": 0,
    }


def visit(key: str, person_key: str) -> dict[str, object]:
    return {
        "_key": key,
        "person_id__key": person_key,
        "visit_concept_id": 9202,
        "visit_start_date": START,
        "visit_end_date": START,
        "visit_type_concept_id": 32817,
    }


def condition(key: str, code: str) -> dict[str, object]:
    return {
        "_key": key,
        "_source": f"conditions.csv:{key}",
        "person_id__key": "P/1",
        "visit_occurrence_id__key": "V/1",
        "condition_concept_id__vocab": "SNOMED",
        "condition_concept_id__code": code,
        "condition_source_value": code,
        "condition_start_date": START,
        "condition_start_datetime": START_AT,
        "condition_end_date": dt.date(2020, 3, 4),
        "condition_type_concept_id": 32817,
    }


def procedure(key: str, code: str) -> dict[str, object]:
    return {
        "_key": key,
        "person_id__key": "P/1",
        "visit_occurrence_id__key": "V/1",
        "procedure_concept_id__vocab": "SNOMED",
        "procedure_concept_id__code": code,
        "procedure_source_value": code,
        "procedure_date": START,
        "procedure_datetime": START_AT,
        "procedure_type_concept_id": 32817,
    }


def connector(*events: tuple[str, dict[str, object]], owned: tuple[str, ...] = ()) -> ListConnector:
    rows: dict[str, list[dict[str, object]]] = {
        "person": [person("P/1")],
        "visit_occurrence": [visit("V/1", "P/1")],
    }
    for table, row in events:
        rows.setdefault(table, []).append(row)
    tables = ("person", "visit_occurrence", "condition_occurrence", "procedure_occurrence", *owned)
    return ListConnector(rows, tables=tables)


def rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_condition_of_the_observation_domain_becomes_an_observation(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    report = run_connector(
        connector(
            ("condition_occurrence", condition("C/1", EMPLOYMENT[0])),
            ("condition_occurrence", condition("C/2", DIABETES[0])),
        ),
        db,
    )
    assert rows(
        vocab_db,
        "SELECT person_id, visit_occurrence_id, observation_concept_id, "
        "observation_source_concept_id, observation_source_value, observation_date, "
        "observation_datetime, observation_type_concept_id FROM cdm.observation",
    ) == [(1, 1, EMPLOYMENT[1], EMPLOYMENT[1], EMPLOYMENT[0], START, START_AT, 32817)]
    assert rows(
        vocab_db,
        "SELECT condition_concept_id, condition_source_value FROM cdm.condition_occurrence",
    ) == [(DIABETES[1], DIABETES[0])]
    assert report.routed == [RoutedCounts("condition_occurrence", "observation", 1)]
    assert report.tables["observation"].written == 1
    assert report.tables["condition_occurrence"].written == 1
    assert "condition_occurrence -> observation 1" in report.render()
    assert rows(vocab_db, "SELECT source_key FROM etl.id_map WHERE table_name = 'observation'") == [
        ("condition_occurrence:C/1",)
    ]


def test_a_moved_row_is_quarantined_in_its_new_table(vocab_db: Path) -> None:
    orphan = {**condition("C/1", EMPLOYMENT[0]), "person_id__key": "P/none"}
    report = run_connector(
        connector(("condition_occurrence", orphan)), CdmDatabase.parse(str(vocab_db))
    )
    assert report.tables["observation"].rejected == {"fk.person_missing": 1}
    assert rows(
        vocab_db, "SELECT omop_table, location, record_key, reason FROM etl.quarantine"
    ) == [("observation", "conditions.csv:C/1", "condition_occurrence:C/1", "fk.person_missing")]


def test_procedure_of_the_measurement_domain_becomes_a_measurement(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    run_connector(
        connector(
            ("procedure_occurrence", procedure("PR/1", SCREENING[0])),
            owned=("measurement",),
        ),
        db,
    )
    assert rows(
        vocab_db,
        "SELECT person_id, visit_occurrence_id, measurement_concept_id, "
        "measurement_source_concept_id, measurement_source_value, measurement_date, "
        "measurement_datetime, measurement_type_concept_id FROM cdm.measurement",
    ) == [(1, 1, SCREENING[1], SCREENING[1], SCREENING[0], START, START_AT, 32817)]
    assert rows(vocab_db, "SELECT count(*) FROM cdm.procedure_occurrence") == [(0,)]


def test_required_end_date_defaults_to_the_start(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    drug_procedure = {
        **procedure("PR/1", DRUG[0]),
        "procedure_concept_id__vocab": "RxNorm",
        "quantity": 2,
    }
    report = run_connector(
        connector(("procedure_occurrence", drug_procedure), owned=("drug_exposure",)), db
    )
    assert report.routed == [RoutedCounts("procedure_occurrence", "drug_exposure", 1)]
    assert rows(
        vocab_db,
        "SELECT drug_concept_id, drug_exposure_start_date, drug_exposure_end_date, quantity, "
        "drug_type_concept_id FROM cdm.drug_exposure",
    ) == [(DRUG[1], START, START, 2.0, 32817)]


def test_unmapped_and_same_domain_rows_stay(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    report = run_connector(
        connector(
            ("condition_occurrence", condition("C/1", DEAD_END)),
            ("condition_occurrence", condition("C/2", "0000000")),
            ("condition_occurrence", condition("C/3", DIABETES[0])),
            ("condition_occurrence", {**condition("C/4", "x"), "condition_concept_id__code": None}),
        ),
        db,
    )
    assert report.routed == []
    assert rows(
        vocab_db, "SELECT condition_concept_id FROM cdm.condition_occurrence ORDER BY ALL"
    ) == [(0,), (0,), (0,), (DIABETES[1],)]
    assert rows(vocab_db, "SELECT count(*) FROM cdm.observation") == [(0,)]


def test_ids_are_stable_across_runs_and_modes(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    source = connector(
        ("condition_occurrence", condition("C/1", EMPLOYMENT[0])),
        ("condition_occurrence", condition("C/2", DIABETES[0])),
        ("procedure_occurrence", procedure("PR/1", SCREENING[0])),
        ("procedure_occurrence", procedure("PR/2", EMPLOYMENT[0])),
    )
    query = {
        "observation": "SELECT observation_id, observation_source_value FROM cdm.observation",
        "measurement": "SELECT measurement_id, measurement_source_value FROM cdm.measurement",
        "condition": "SELECT condition_occurrence_id FROM cdm.condition_occurrence",
    }
    run_connector(source, db)
    first = {name: sorted(rows(vocab_db, sql)) for name, sql in query.items()}
    assert first["observation"] == [(1, EMPLOYMENT[0]), (2, EMPLOYMENT[0])]
    # observation and measurement are not the connector's: the rows routed there in the
    # earlier run are replaced, not duplicated.
    run_connector(source, db)
    assert {name: sorted(rows(vocab_db, sql)) for name, sql in query.items()} == first
    run_connector(source, db, mode="incremental")
    assert {name: sorted(rows(vocab_db, sql)) for name, sql in query.items()} == first
    # The same key later in another domain (a vocabulary update): its earlier row goes.
    run_connector(
        connector(("condition_occurrence", condition("C/1", DIABETES[0]))), db, mode="incremental"
    )
    assert rows(vocab_db, "SELECT observation_source_value FROM cdm.observation") == [
        (EMPLOYMENT[0],)  # PR/2's, kept: incremental
    ]
    assert rows(vocab_db, "SELECT count(*) FROM cdm.condition_occurrence") == [(2,)]


def test_spark_dialect_spelling() -> None:
    sql = route_sql(
        "condition_occurrence", staged="stg", code_map="cm", concept="concept", dialect="spark"
    )
    moved = moved_sql("procedure_occurrence", "drug_exposure", "routed", "spark")
    kept = kept_sql("condition_occurrence", "routed", "spark")
    for text in (sql, moved, kept):
        assert '"' not in text
        assert "VARCHAR" not in text
    assert "`drug_exposure_end_date`" in moved
    assert "'procedure_occurrence:' || r.`_key`" in moved


def test_fhir_sample_has_no_domain_failures(vocab_db: Path, shared_data: Path) -> None:
    source = shared_data / "fhir-synthea-10"
    if not source.is_dir():
        pytest.skip(f"FHIR Synthea sample not found at {source}")
    db = CdmDatabase.parse(str(vocab_db))
    report = run_connector(FhirConnector([source], workers=1), db)
    moves = {(r.from_table, r.to_table): r.rows for r in report.routed}
    assert moves[("condition_occurrence", "observation")] > 0
    assert moves[("procedure_occurrence", "measurement")] > 0
    checks = [
        c
        for c in run_dq(db).checks
        if c.check.kind.name == "fkDomain" and c.check.table in EVENT_TABLES
    ]
    assert checks
    assert [(c.check.table, c.check.field) for c in checks if c.failed] == []


@pytest.mark.postgres
def test_routing_into_postgres(fresh_postgres_url: str, shared_data: Path) -> None:
    db = CdmDatabase.parse(fresh_postgres_url)
    load_vocabulary(shared_data / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip", db)
    source = connector(
        ("condition_occurrence", condition("C/1", EMPLOYMENT[0])),
        ("condition_occurrence", condition("C/2", DIABETES[0])),
        ("procedure_occurrence", procedure("PR/1", SCREENING[0])),
    )
    report = run_connector(source, db)
    run_connector(source, db)  # replace: the routed rows are replaced, not added
    run_connector(source, db, mode="incremental")
    assert sorted((r.from_table, r.to_table, r.rows) for r in report.routed) == [
        ("condition_occurrence", "observation", 1),
        ("procedure_occurrence", "measurement", 1),
    ]
    with db.connect() as conn:
        observations = conn.exec_driver_sql(
            "SELECT observation_id, observation_concept_id, observation_date FROM cdm.observation"
        ).fetchall()
        measurements = conn.exec_driver_sql(
            "SELECT measurement_id, measurement_concept_id FROM cdm.measurement"
        ).fetchall()
        conditions = conn.exec_driver_sql(
            "SELECT condition_concept_id FROM cdm.condition_occurrence"
        ).fetchall()
    assert [tuple(r) for r in observations] == [(1, EMPLOYMENT[1], START)]
    assert [tuple(r) for r in measurements] == [(1, SCREENING[1])]
    assert [tuple(r) for r in conditions] == [(DIABETES[1],)]
