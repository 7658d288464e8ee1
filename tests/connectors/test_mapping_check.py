"""``check_mapping``: the OMOP model, SQL syntax, source headers and DuckDB binding, each
problem at its file:line and key; and ``compile_mapping`` for DuckDB and Spark."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pytest
import sqlglot

from ehds.connectors.mapping import check_mapping, compile_mapping, load_mapping
from ehds.connectors.mapping.sources import create_view

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"


def write_labs(folder: Path) -> None:
    """The Parquet source of the example mapping, made from ``labs.csv`` (typed: an integer
    id, a timestamp; one value is not a number, one row has no LOINC code and is filtered)."""
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * FROM read_csv('{folder / 'labs.csv'}', types = "
            "{'lab_id': 'BIGINT', 'value': 'VARCHAR', 'taken_at': 'TIMESTAMP'})) "
            f"TO '{folder / 'labs.parquet'}' (FORMAT parquet)"
        )


@pytest.fixture
def extract(tmp_path: Path) -> Path:
    """A copy of the example extract with its Parquet source; returns the mapping file."""
    folder = tmp_path / "extract"
    shutil.copytree(FIXTURES, folder)
    write_labs(folder)
    return folder / "hospital.yaml"


def _mapping(folder: Path, tables: str, sources: str | None = None) -> Path:
    path = folder / "m.yaml"
    sources = sources or (
        "  patients: {file: patients.csv, delimiter: ';', date_format: '%d/%m/%Y'}\n"
        "  diagnoses: {file: diagnoses.csv}\n"
    )
    path.write_text(f"version: 1\nsources:\n{sources}tables:\n{tables}", encoding="utf-8")
    return path


def _check(path: Path) -> list[str]:
    return [str(p) for p in check_mapping(load_mapping(path)).problems]


def test_the_example_mapping_is_clean(extract: Path) -> None:
    assert check_mapping(load_mapping(extract)).problems == []


def test_omop_model_errors(extract: Path) -> None:
    path = _mapping(
        extract.parent,
        """  persn: {source: patients, key: patient_id}
  concept: {source: patients, key: patient_id}
  person:
    source: patients
    key: patient_id
    columns:
      person_id: patient_id
      gender_concept_id: 8507
      year_of_brith: 1970
      care_site_id: 1
    concepts:
      race_source_value: {vocabulary: Race, code: sex}
      gender_concept_id: {vocabulary: Gender, code: sex}
    references:
      visit_occurrence_id: patient_id
  condition_occurrence:
    source: diagnoses
    key: diag_id
    columns: {condition_start_date: diag_date}
""",
    )
    assert _check(path) == [
        f"{path}:6: tables.persn: 'persn' is not a clinical OMOP CDM v5.4 table (did you mean "
        "person?)",
        f"{path}:7: tables.concept: 'concept' is a vocabulary table: load vocabularies with "
        "`ehds omop vocab load`",
        f"{path}:8: tables.person: required column year_of_birth of person is not mapped",
        f"{path}:8: tables.person: warning: race_concept_id is not mapped: every row gets "
        "concept 0",
        f"{path}:8: tables.person: warning: ethnicity_concept_id is not mapped: every row gets "
        "concept 0",
        f"{path}:12: tables.person.columns.person_id: person_id is assigned from the key at "
        "commit: remove it",
        f"{path}:13: tables.person.columns.gender_concept_id: gender_concept_id is also given "
        "under concepts: keep one",
        f"{path}:14: tables.person.columns.year_of_brith: person has no column 'year_of_brith' "
        "(did you mean year_of_birth?)",
        f"{path}:15: tables.person.columns.care_site_id: care_site_id is a reference: give the "
        "source key of the row it points to under references",
        f"{path}:17: tables.person.concepts.race_source_value: race_source_value cannot be "
        "looked up by code (concept columns of person: gender_concept_id, race_concept_id, "
        "ethnicity_concept_id)",
        f"{path}:20: tables.person.references.visit_occurrence_id: visit_occurrence_id is not a "
        "reference of person (references: location_id, provider_id, care_site_id)",
        f"{path}:21: tables.condition_occurrence: references.person_id is required: "
        "condition_occurrence rows belong to a person",
        f"{path}:21: tables.condition_occurrence: warning: condition_concept_id is not mapped: "
        "every row gets concept 0",
        f"{path}:21: tables.condition_occurrence: warning: condition_type_concept_id is not "
        "mapped: every row gets concept 0",
    ]


def test_sql_errors_found_before_reading(extract: Path) -> None:
    path = _mapping(
        extract.parent,
        """  death:
    source: patients
    key: "patient_id) UNION (SELECT 1"
    where: "death_date IS NOT NULL; DROP TABLE cdm.person"
    columns:
      death_date: "death_date +"
      death_type_concept_id: (SELECT 32817)
""",
    )
    assert _check(path) == [  # a parenthesised sub-query is an expression: accepted
        f"{path}:8: tables.death.key: not a valid SQL expression (Invalid expression / "
        "Unexpected token)",
        f"{path}:9: tables.death.where: expected one SQL expression, found several statements",
        f"{path}:11: tables.death.columns.death_date: not a valid SQL expression (incomplete "
        "expression)",
    ]


def test_source_errors_are_found_with_duckdb(extract: Path) -> None:
    path = _mapping(
        extract.parent,
        """  death:
    source: patients
    key: patient_id
    where: death_dat IS NOT NULL
    columns:
      death_date: no_such_function(death_date)
      death_type_concept_id: 32817
  condition_occurrence:
    source: diagnoses
    key: diag_id
    where: length(code)
    columns:
      condition_start_date: "CAST(diag_date AS DATE)"
      condition_end_date: "42"
      condition_type_concept_id: "DATE '2020-01-01'"
    references: {person_id: patient_id}
  visit_occurrence:
    source: stays
    key: stay_id
    columns: {visit_start_date: admitted, visit_end_date: discharged}
    references: {person_id: patient_id}
""",
        sources="  patients: {file: patients.csv, delimiter: ';'}\n"
        "  diagnoses: {file: diagnoses.csv}\n"
        "  stays: {file: stays_2024.csv}\n",
    )
    result = check_mapping(load_mapping(path))
    errors = [str(p) for p in result.errors]
    assert errors == [
        f"{path}:5: sources.stays: file not found: {extract.parent / 'stays_2024.csv'}",
        f"{path}:10: tables.death.where: column 'death_dat' is not in source 'patients' (its "
        "columns: patient_id, sex, birth_date, death_date, followed_from, followed_to)",
        f"{path}:12: tables.death.columns.death_date: DuckDB cannot evaluate it: Catalog Error: "
        "Scalar Function with name no_such_function does not exist!",
        f"{path}:17: tables.condition_occurrence.where: a filter must be true or false, not BIGINT",
        f"{path}:20: tables.condition_occurrence.columns.condition_end_date: gives INTEGER, "
        "which cannot go into date column condition_end_date",
        f"{path}:21: tables.condition_occurrence.columns.condition_type_concept_id: gives DATE, "
        "which cannot go into integer column condition_type_concept_id",
    ]
    assert [p.kind for p in result.errors][:2] == ["mapping", "missing_column"]
    assert result.missing_columns == {("death", 0): ("death_dat",)}


def test_compiled_duckdb_queries_stage_typed_rows_and_rejections(extract: Path) -> None:
    mapping = load_mapping(extract)
    queries = {q.table: q for q in compile_mapping(mapping, "duckdb")}
    con = duckdb.connect()
    for name, source in mapping.sources.items():
        create_view(con, name, source.file)
    person = queries["person"]
    assert set(person.sources) == {"patients"}
    rows = con.execute(
        f"SELECT _key, _source, year_of_birth, birth_datetime, gender_concept_id FROM "
        f"({person.sql}) ORDER BY _key"
    ).fetchall()
    assert rows == [
        ("P001", "patients.csv:row 1", 1961, dt.datetime(1961, 3, 14), 8507),
        ("P002", "patients.csv:row 2", 1975, dt.datetime(1975, 11, 2), 8532),
        ("P004", "patients.csv:row 4", 1990, dt.datetime(1990, 1, 1), 0),
    ]
    rejected = con.execute(
        f"SELECT location, record_key, reason, detail FROM ({person.reject_sql}) ORDER BY 1"
    ).fetchall()
    assert rejected == [
        (
            "patients.csv:row 3",
            "P003",
            "csv.invalid_value",
            "column birth_datetime: not a valid datetime",
        ),
        ("patients.csv:row 5", None, "csv.missing_key", "key: the key expression gives no value"),
        (
            "patients.csv:row 6",
            "P001",
            "csv.duplicate_key",
            "key: the same source key as an earlier row of person",
        ),
    ]
    condition = queries["condition_occurrence"]
    staged = con.execute(
        f"SELECT condition_concept_id__vocab, condition_concept_id__code, "
        f"condition_source_value, person_id__key, visit_occurrence_id__key FROM ({condition.sql}) "
        "WHERE _key = 'D3'"
    ).fetchall()
    assert staged == [("HOSPX-DX", "HX-PSA", "HX-PSA", "P002", "S2")]
    record = con.execute(f"SELECT record FROM ({condition.reject_sql})").fetchall()
    assert record == [
        (
            '{"diag_id":"D5","patient_id":"P002","stay_id":"S9","diag_date":"2021-13-45",'
            '"code_system":"SNOMED","code":"10509002"}',
        )
    ]


def test_spark_sql_is_transpiled(extract: Path) -> None:
    queries = {q.table: q for q in compile_mapping(load_mapping(extract), "spark")}
    person = queries["person"]
    for sql in (person.sql, person.reject_sql):
        sqlglot.parse_one(sql, read="spark")  # valid Spark SQL
    assert "MONOTONICALLY_INCREASING_ID() + 1 AS `__row`" in person.sql
    assert "TRY_TO_TIMESTAMP(CAST(`__raw_birth_datetime` AS STRING), 'dd/MM/yyyy')" in person.sql
    assert "TRY_STRPTIME" not in person.sql.upper()
    assert "TO_JSON(STRUCT(" in person.reject_sql
    with pytest.raises(ValueError, match="dialect must be one of"):
        compile_mapping(load_mapping(extract), "oracle")


def test_a_sub_query_over_another_source_is_an_expression(extract: Path) -> None:
    path = _mapping(
        extract.parent,
        """  condition_occurrence:
    source: diagnoses
    key: diag_id
    columns:
      condition_start_date: diag_date
      condition_type_concept_id: 32817
      condition_status_source_value: >-
        (SELECT max(sex) FROM patients p WHERE p.patient_id = diagnoses.patient_id)
    references: {person_id: patient_id}
""",
    )
    mapping = load_mapping(path)
    assert [p.severity for p in check_mapping(mapping).problems] == ["warning"]
    (query,) = compile_mapping(mapping, "duckdb")
    assert set(query.sources) == {"diagnoses", "patients"}
    con = duckdb.connect()
    for name, source in query.sources.items():
        create_view(con, name, source)
    rows = con.execute(f"SELECT _key, condition_status_source_value FROM ({query.sql}) ORDER BY 1")
    assert rows.fetchall()[:3] == [("D1", "M"), ("D2", "M"), ("D3", "F")]
