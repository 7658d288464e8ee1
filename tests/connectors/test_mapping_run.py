"""``ehds etl csv``: the example extract mapped into a CDM that holds the Synthea27Nj
vocabulary; concrete values against the source files, rejections, a missing column, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from ehds.cli.main import main
from ehds.connectors.connector import run_connector
from ehds.connectors.mapping import MappingConnector, load_mapping
from ehds.omop.database import CdmDatabase

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"


@pytest.fixture
def extract(tmp_path: Path) -> Path:
    folder = tmp_path / "extract"
    shutil.copytree(FIXTURES, folder)
    with duckdb.connect() as con:  # the Parquet source, typed, from labs.csv
        con.execute(
            f"COPY (SELECT * FROM read_csv('{folder / 'labs.csv'}', types = "
            "{'lab_id': 'BIGINT', 'value': 'VARCHAR', 'taken_at': 'TIMESTAMP'})) "
            f"TO '{folder / 'labs.parquet'}' (FORMAT parquet)"
        )
    return folder / "hospital.yaml"


def _local_code_map(db: Path) -> None:
    """The partner's own mapping of its local diagnosis code, as data."""
    with duckdb.connect(str(db)) as con:
        con.execute(
            "INSERT INTO vocab.source_to_concept_map (source_code, source_concept_id, "
            "source_vocabulary_id, source_code_description, target_concept_id, "
            "target_vocabulary_id, valid_start_date, valid_end_date, invalid_reason) VALUES "
            "('HX-PSA', 0, 'HOSPX-DX', 'local: pseudomonas infection', 4008261, 'SNOMED', "
            "DATE '2000-01-01', DATE '2099-12-31', NULL)"
        )


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_example_extract_loads_with_concrete_values(extract: Path, vocab_db: Path) -> None:
    _local_code_map(vocab_db)
    report = run_connector(
        MappingConnector(load_mapping(extract)), CdmDatabase.parse(str(vocab_db))
    )

    # patients.csv: P001 M 14/03/1961; P002 F 02/11/1975 died 20/05/2021; P004 X 01/01/1990
    persons = _rows(
        vocab_db,
        "SELECT person_source_value, year_of_birth, gender_concept_id, gender_source_value "
        "FROM cdm.person ORDER BY 1",
    )
    assert persons == [("P001", 1961, 8507, "M"), ("P002", 1975, 8532, "F"), ("P004", 1990, 0, "X")]
    assert _rows(vocab_db, "SELECT death_date::VARCHAR FROM cdm.death") == [("2021-05-20",)]
    # stays.csv S1: IP from 2020-01-10 08:30; S4 names a patient that does not exist
    visits = _rows(
        vocab_db,
        "SELECT v.visit_source_value, v.visit_concept_id, v.visit_start_datetime::VARCHAR, "
        "p.person_source_value FROM cdm.visit_occurrence v JOIN cdm.person p USING (person_id) "
        "ORDER BY 1",
    )
    assert visits == [
        ("ER", 9203, "2021-05-19 23:10:00", "P002"),
        ("IP", 9201, "2020-01-10 08:30:00", "P001"),
        ("OP", 9202, "2020-06-01 09:00:00", "P001"),
    ]
    # diagnoses.csv: a standard SNOMED code, a non-standard one mapped by 'Maps to', a local
    # code mapped by source_to_concept_map, an unknown code (0); D5 has an impossible date
    conditions = _rows(
        vocab_db,
        "SELECT c.condition_source_value, c.condition_concept_id, "
        "c.condition_source_concept_id, c.condition_start_date::VARCHAR, v.visit_concept_id "
        "FROM cdm.condition_occurrence c "
        "LEFT JOIN cdm.visit_occurrence v USING (visit_occurrence_id) ORDER BY 4, 1",
    )
    assert conditions == [
        ("10509002", 260139, 260139, "2020-01-11", 9201),
        ("275272006", 4132546, 4166590, "2020-01-12", 9201),
        ("999999999", 0, 0, "2020-06-01", 9202),
        ("HX-PSA", 4008261, 0, "2021-05-19", 9203),
    ]
    measurements = _rows(
        vocab_db,
        "SELECT measurement_source_value, measurement_concept_id, value_as_number, "
        "unit_concept_id, measurement_datetime::VARCHAR FROM cdm.measurement ORDER BY 1",
    )
    assert measurements == [
        ("10834-0", 3027970, 3.2, 8713, "2021-05-19 23:30:00"),
        ("59032-3", 40762125, 2.1, 8753, "2020-01-11 10:00:00"),
    ]
    quarantine = _rows(
        vocab_db,
        "SELECT location, reason, detail FROM etl.quarantine ORDER BY location, reason",
    )
    assert quarantine == [
        (
            "diagnoses.csv:row 5",
            "csv.invalid_value",
            "column condition_start_date: not a valid date",
        ),
        ("labs.parquet:row 3", "csv.invalid_value", "column value_as_number: not a valid float"),
        ("patients.csv:row 3", "csv.invalid_value", "column birth_datetime: not a valid datetime"),
        # P003's observation period: its person was rejected, so the period is too
        (
            "patients.csv:row 3",
            "fk.person_missing",
            "person_id__key names no person of this run or the id map",
        ),
        ("patients.csv:row 5", "csv.missing_key", "key: the key expression gives no value"),
        ("patients.csv:row 5", "csv.missing_key", "key: the key expression gives no value"),
        (
            "patients.csv:row 6",
            "csv.duplicate_key",
            "key: the same source key as an earlier row of observation_period",
        ),
        (
            "patients.csv:row 6",
            "csv.duplicate_key",
            "key: the same source key as an earlier row of person",
        ),
        (
            "stays.csv:row 4",
            "fk.person_missing",
            "person_id__key names no person of this run or the id map",
        ),
    ]
    assert report.sources["patients"].read == 6
    assert report.sources["diagnoses"].read == 5
    assert report.tables["condition_occurrence"].written == 4


def test_a_source_missing_a_column_is_quarantined_and_the_rest_loads(
    extract: Path, vocab_db: Path
) -> None:
    diagnoses = extract.parent / "diagnoses.csv"
    lines = diagnoses.read_text(encoding="utf-8").splitlines()
    diagnoses.write_text(  # the partner's new extract lost the code_system column
        "\n".join(",".join(line.split(",")[:3] + line.split(",")[4:]) for line in lines) + "\n",
        encoding="utf-8",
    )
    connector = MappingConnector(load_mapping(extract))
    assert [str(p) for p in connector.check().errors] == [
        f"{extract}:66: tables.condition_occurrence.concepts.condition_concept_id.vocabulary_sql: "
        "column 'code_system' is not in source 'diagnoses' (its columns: diag_id, stay_id, "
        "patient_id, code, diag_date)"
    ]
    run_connector(connector, CdmDatabase.parse(str(vocab_db)))
    assert _rows(vocab_db, "SELECT count(*) FROM cdm.condition_occurrence") == [(0,)]
    assert _rows(vocab_db, "SELECT count(*) FROM cdm.person") == [(3,)]
    missing = _rows(
        vocab_db,
        "SELECT reason, detail, count(*) FROM etl.quarantine WHERE record_type = 'diagnoses' "
        "GROUP BY ALL",
    )
    assert missing == [
        (
            "csv.missing_column",
            "condition_occurrence: column(s) code_system not in source diagnoses",
            5,
        )
    ]


def test_cli_validate_and_run(
    extract: Path, vocab_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["etl", "validate", str(extract)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {extract} has 6 table mapping(s)")

    bad = extract.parent / "bad.yaml"
    bad.write_text(
        extract.read_text(encoding="utf-8").replace("year_of_birth:", "year_of_brith:"),
        encoding="utf-8",
    )
    assert main(["etl", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:20: tables.person.columns.year_of_brith: person has no column" in out
    assert f"{bad}:14: tables.person: required column year_of_birth of person is not mapped" in out

    # a mapping with an error is refused before any write
    assert main(["etl", "csv", str(bad), "--db", str(vocab_db)]) == 2
    assert "year_of_brith" in capsys.readouterr().err
    assert _rows(vocab_db, "SELECT count(*) FROM cdm.person") == [(0,)]

    report = extract.parent / "report.json"
    code = main(["etl", "csv", str(extract), "--db", str(vocab_db), "--report-json", str(report)])
    assert code == 0
    assert report.is_file()
    assert _rows(vocab_db, "SELECT count(*) FROM cdm.person") == [(3,)]
