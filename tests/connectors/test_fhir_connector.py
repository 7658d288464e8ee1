"""The FHIR connector end to end: the Synthea sample (gzip NDJSON), this folder's Observation
NDJSON and Bundle, into a DuckDB CDM holding Synthea27Nj's vocabulary; values checked against
the source records; and ``ehds etl fhir`` itself."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from ehds.cli.main import main
from ehds.connectors.connector import run_connector
from ehds.connectors.fhir.connector import FhirConnector
from ehds.omop.database import CdmDatabase

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
PATIENT = "Patient/6a4160eb-a793-2f86-2302-378626f46cce"
BUNDLE_PATIENT = "Patient/b0a1e5c2-7d3f-4c1e-9a8b-5f6e7d8c9b0a"


def _one(db: Path, sql: str, *params: object) -> tuple[object, ...]:
    with duckdb.connect(str(db), read_only=True) as connection:
        rows = connection.execute(sql, list(params)).fetchall()
    assert len(rows) == 1, rows
    return tuple(rows[0])


def _all(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as connection:
        return [tuple(row) for row in connection.execute(sql).fetchall()]


EVENT_TABLES = (
    "condition_occurrence",
    "procedure_occurrence",
    "measurement",
    "observation",
    "drug_exposure",
    "device_exposure",
)


def _rows_from(db: Path, resource_type: str, tables: tuple[str, ...] = EVENT_TABLES) -> int:
    """Rows written from resources of ``resource_type`` into ``tables``, wherever the domain
    of their concept put them (id-map key ``Type/id``, or ``origin:Type/id`` once routed)."""
    total = 0
    for table in tables:
        (n,) = _one(
            db,
            f"SELECT count(*) FROM cdm.{table} t JOIN etl.id_map m "
            f"ON m.table_name = '{table}' AND m.id = t.{table}_id "
            "WHERE m.source_key LIKE ? OR m.source_key LIKE ?",
            f"{resource_type}/%",
            f"%:{resource_type}/%",
        )
        total += int(str(n))
    return total


def _id_of(db: Path, table: str, key: str) -> int:
    (value,) = _one(
        db, "SELECT id FROM etl.id_map WHERE table_name = ? AND source_key = ?", table, key
    )
    assert isinstance(value, int)
    return value


@pytest.fixture(scope="module")
def loaded(
    synthea_vocab_db: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The sample and the fixtures loaded once (2 workers, validation on)."""
    db = tmp_path_factory.mktemp("fhir-e2e") / synthea_vocab_db.name
    shutil.copyfile(synthea_vocab_db, db)
    connector = FhirConnector([shared_data / "fhir-synthea-10", FIXTURES], workers=2)
    run_connector(connector, CdmDatabase.parse(str(db)))
    return db


def test_person_birth_and_gender(loaded: Path) -> None:
    person_id = _id_of(loaded, "person", PATIENT)
    assert _one(
        loaded,
        "SELECT year_of_birth, month_of_birth, day_of_birth, gender_concept_id, race_concept_id "
        "FROM cdm.person WHERE person_id = ?",
        person_id,
    ) == (1963, 7, 15, 8532, 8527)


def test_condition_concept_and_dates(loaded: Path) -> None:
    key = "Condition/102de2ad-1850-047c-93be-1464072f41d9"  # SNOMED 73595000 Stress, 2021-04-05
    row = _one(
        loaded,
        "SELECT person_id, condition_concept_id, condition_source_concept_id, "
        "condition_source_value, "
        "condition_start_date, visit_occurrence_id FROM cdm.condition_occurrence "
        "WHERE condition_occurrence_id = ?",
        _id_of(loaded, "condition_occurrence", key),
    )
    visit = _id_of(loaded, "visit_occurrence", "Encounter/73f0269c-bb03-766c-52e0-48cb714e9f24")
    assert row == (
        _id_of(loaded, "person", PATIENT),
        4251306,
        4251306,
        "73595000",
        dt.date(2021, 4, 5),
        visit,
    )


def test_medication_drug_concept(loaded: Path) -> None:
    key = "MedicationRequest/03f0ec12-fbce-86a3-afc9-6bc828de162d"  # RxNorm 310798, 1995-09-25
    assert _one(
        loaded,
        "SELECT drug_concept_id, drug_exposure_start_date FROM cdm.drug_exposure "
        "WHERE drug_exposure_id = ?",
        _id_of(loaded, "drug_exposure", key),
    ) == (19078106, dt.date(1995, 9, 25))


def test_measurements_with_units(loaded: Path) -> None:
    person = _id_of(loaded, "person", PATIENT)
    rows = _all(
        loaded,
        "SELECT measurement_concept_id, value_as_number, unit_concept_id, measurement_date "
        "FROM cdm.measurement JOIN etl.id_map m ON m.table_name = 'measurement' "
        "AND m.id = measurement_id AND m.source_key LIKE 'Observation/%' "
        f"WHERE person_id = {person} ORDER BY measurement_concept_id",
    )
    assert rows == [
        (3004249, 127.0, 8876, dt.date(2021, 4, 5)),  # systolic, mm[Hg]
        (3004410, 5.9, 8554, dt.date(2020, 11, 2)),  # HbA1c, %
        (3012888, 81.0, 8876, dt.date(2021, 4, 5)),  # diastolic
        (3025315, 72.5, 9529, dt.date(2021, 4, 5)),  # body weight, kg
    ]
    assert _one(
        loaded,
        "SELECT observation_concept_id, value_as_string FROM cdm.observation "
        f"WHERE person_id = {person} AND value_as_string IS NOT NULL",
    ) == (43054909, "former smoker, quit in 2010")


def test_allergy_to_a_drug_is_an_observation_not_an_exposure(loaded: Path) -> None:
    """AllergyIntolerance 1b2ce4a9 is coded by its substance (RxNorm 1191, aspirin): the fact
    recorded is the allergy, so it stays an observation with the drug as its value."""
    key = "AllergyIntolerance/1b2ce4a9-9773-f40f-6692-cb4d1283a9ca"
    (aspirin,) = _one(
        loaded,
        "SELECT concept_id FROM vocab.concept WHERE vocabulary_id = 'RxNorm' "
        "AND concept_code = '1191'",
    )
    value, source_value = _one(
        loaded,
        "SELECT value_as_concept_id, observation_source_value FROM cdm.observation "
        "WHERE observation_id = ?",
        _id_of(loaded, "observation", key),
    )
    assert (value, source_value) == (aspirin, "1191")
    (exposures,) = _one(
        loaded, "SELECT count(*) FROM etl.id_map WHERE source_key LIKE ?", f"%:{key}"
    )
    assert exposures == 0


def test_bundle_resources_and_urn_uuid_references(loaded: Path) -> None:
    person = _id_of(loaded, "person", BUNDLE_PATIENT)
    assert _one(
        loaded,
        "SELECT year_of_birth, gender_concept_id, race_concept_id FROM cdm.person "
        f"WHERE person_id = {person}",
    ) == (1970, 8507, 8516)
    assert _one(
        loaded,
        "SELECT visit_concept_id, visit_start_date, visit_end_date FROM cdm.visit_occurrence "
        f"WHERE person_id = {person}",
    ) == (9201, dt.date(2020, 1, 10), dt.date(2020, 1, 14))
    assert _one(
        loaded,
        "SELECT c.condition_concept_id, c.condition_start_date, v.visit_concept_id "
        "FROM cdm.condition_occurrence c JOIN cdm.visit_occurrence v USING (visit_occurrence_id) "
        f"WHERE c.person_id = {person}",
    ) == (201826, dt.date(2020, 1, 11), 9201)
    assert _one(
        loaded,
        "SELECT drug_concept_id, drug_exposure_start_date, drug_exposure_end_date "
        "FROM cdm.drug_exposure "
        f"WHERE person_id = {person}",
    ) == (19080128, dt.date(2020, 1, 12), dt.date(2020, 4, 11))
    assert _one(
        loaded,
        "SELECT observation_period_start_date, observation_period_end_date "
        "FROM cdm.observation_period "
        f"WHERE person_id = {person}",
    ) == (dt.date(2020, 1, 10), dt.date(2020, 4, 11))


def test_counts_per_type_match_the_source_files(loaded: Path, shared_data: Path) -> None:
    expected: Counter[str] = Counter()
    for path in (shared_data / "fhir-synthea-10").glob("*.ndjson.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            expected[path.name.split(".")[0]] += sum(1 for line in stream if line.strip())
    persons = expected["Patient"] + 1  # and the Bundle's
    assert _one(loaded, "SELECT count(*) FROM cdm.person") == (persons,)
    assert _one(loaded, "SELECT count(*) FROM cdm.observation_period") == (persons,)
    assert _one(loaded, "SELECT count(*) FROM cdm.visit_occurrence") == (expected["Encounter"] + 1,)
    # Event rows by resource type, in whichever table their concept's domain put them.
    assert _rows_from(loaded, "Condition") == expected["Condition"] + 1
    assert _rows_from(loaded, "Procedure") == expected["Procedure"]
    drugs = expected["MedicationRequest"] + expected["Immunization"] + 1  # and the Bundle's
    medications = ("MedicationRequest", "MedicationStatement", "Immunization")
    assert sum(_rows_from(loaded, t) for t in medications) == drugs
    assert _rows_from(loaded, "Device") == expected["Device"]
    assert _rows_from(loaded, "AllergyIntolerance") == expected["AllergyIntolerance"]
    # and the fixture's two non-measurements
    assert _rows_from(loaded, "Observation", ("observation",)) == 2
    deaths = _one(loaded, "SELECT count(*) FROM cdm.death")
    assert deaths == (3,)


def test_rejections_are_quarantined_with_reasons(loaded: Path) -> None:
    rows = _all(
        loaded,
        "SELECT location, record_type, reason FROM etl.quarantine ORDER BY location",
    )
    assert rows == [
        ("observations.ndjson:4", "unknown", "fhir.invalid_json"),
        ("observations.ndjson:7", "Observation", "fhir.invalid_resource"),
        ("observations.ndjson:8", "Observation", "fhir.missing_subject"),
    ]


def test_cli_end_to_end_without_validation(
    vocab_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    status = main(
        [
            "etl",
            "fhir",
            str(FIXTURES / "bundle.json"),
            str(FIXTURES / "observations.ndjson"),
            "--db",
            str(vocab_db),
            "--workers",
            "1",
            "--no-validate",
            "--report-json",
            str(report),
        ]
    )
    assert status == 0
    assert "fhir.invalid_json" in capsys.readouterr().out
    assert json.loads(report.read_text(encoding="utf-8"))
    # without validation the invalid date is still rejected, by the mapping
    assert _one(
        vocab_db, "SELECT reason FROM etl.quarantine WHERE location = 'observations.ndjson:7'"
    ) == ("fhir.invalid_value",)
    assert _one(vocab_db, "SELECT count(*) FROM cdm.person") == (1,)
    # the fixture's 6 observation rows and its person's observation period reference a person
    # not in this run: quarantined at commit
    assert (
        _one(vocab_db, "SELECT count(*) FROM etl.quarantine WHERE reason = 'fk.person_missing'")[0]
        == 7
    )


def test_a_missing_source_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["etl", "fhir", str(tmp_path / "nothing"), "--db", str(tmp_path / "x.duckdb")])
    assert status == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_dq_conformance_checks_pass(loaded: Path) -> None:
    from ehds.omop.dq import run_dq

    report = run_dq(CdmDatabase.parse(str(loaded)))
    failed = [
        (r.check.dqd_name, r.check.table, r.check.field) for r in report.failed("conformance")
    ]
    assert failed == [], "\n".join(map(str, failed))
    assert not report.errors()
