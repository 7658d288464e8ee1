"""The mapping file parser: typed objects with their lines, every structural error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehds.connectors.mapping import MappingError, load_mapping

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    return [str(p) for p in caught.value.problems]


def test_the_example_mapping_parses_with_lines_and_resolved_paths() -> None:
    mapping = load_mapping(FIXTURES / "hospital.yaml")
    assert mapping.name == "hospital-x"
    assert mapping.table_names() == [
        "person",
        "observation_period",
        "death",
        "visit_occurrence",
        "condition_occurrence",
        "measurement",
    ]
    patients = mapping.sources["patients"]
    assert patients.file.path == FIXTURES / "patients.csv"
    assert patients.file.format == "csv"
    assert patients.file.options == {"delimiter": ";"}
    assert patients.date_format == "%d/%m/%Y"
    assert mapping.sources["labs"].file.format == "parquet"
    person = mapping.tables[0]
    assert person.key.sql == "patient_id"
    assert (person.key.at.line, person.key.at.key) == (16, "tables.person.key")
    assert person.columns["race_concept_id"].sql == "0"  # a YAML number is SQL text too
    lookup = mapping.tables[5].concepts["unit_concept_id"]
    assert lookup.vocabulary.sql == "'UCUM'"  # a vocabulary id becomes a SQL literal
    assert lookup.code.sql == "unit"


def test_source_dir_option_overrides_the_mapping_folder(tmp_path: Path) -> None:
    mapping = load_mapping(FIXTURES / "hospital.yaml", source_dir=tmp_path)
    assert mapping.sources["stays"].file.path == tmp_path / "stays.csv"


def test_every_structural_error_names_file_line_and_key_in_line_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """version: 1
sources:
  patients: {file: patients.csv, delimter: ";"}
  labs: {file: labs.xlsx}
tables:
  person:
    source: patiens
    key: patient_id
    colums: {year_of_birth: yob}
  condition_occurrence:
    - source: patients
      concepts:
        condition_concept_id: {vocabulary: ICD10, vocabulary_sql: "'x'", code: dx}
""",
    )
    assert _problems(path) == [
        f"{path}:3: sources.patients.delimter: unknown key (expected one of: file, format, "
        "delimiter, null_values, encoding, quote, date_format, datetime_format)",
        f"{path}:4: sources.labs.file: cannot tell the format from the file name; add "
        "format: csv or format: parquet",
        f"{path}:7: tables.person.source: unknown source 'patiens' (sources: patients)",
        f"{path}:9: tables.person.colums: unknown key (expected one of: source, key, where, "
        "columns, concepts, references)",
        f"{path}:11: tables.condition_occurrence[0].key: required key is missing",
        f"{path}:13: tables.condition_occurrence[0].concepts.condition_concept_id: give exactly "
        "one of vocabulary (a vocabulary id) or vocabulary_sql (an expression)",
    ]


def test_version_is_required_and_duplicates_are_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """sources:
  a: {file: a.csv}
  a: {file: b.csv}
tables:
  person: {source: a, key: id}
""",
    )
    assert _problems(path) == [  # sorted by line
        f"{path}:1: version: required key is missing (write version: 1)",
        f"{path}:3: sources.a: duplicate key",
    ]


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nsources:\n  a: {file: a.csv\ntables: {}\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:4: (file): not valid YAML")


def test_an_expression_must_be_a_single_text_value(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """version: 1
sources: {a: {file: a.csv}}
tables:
  person:
    source: a
    key: [patient_id]
    columns: {year_of_birth: ""}
""",
    )
    assert _problems(path) == [
        f"{path}:6: tables.person.key: expected a SQL expression (a single text value)",
        f"{path}:7: tables.person.columns.year_of_birth: empty SQL expression",
    ]
