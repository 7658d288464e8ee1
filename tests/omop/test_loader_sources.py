"""Every kind of source a CDM comes in, and the replace/keep semantics of a load."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from ehds.omop.database import CdmDatabase
from ehds.omop.loader import SourceError, UnknownTableError, load_cdm
from ehds.omop.parquet_layout import export_layout
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES, VOCAB_TABLES

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SYNTHEA_ZIP = SHARED_DATA / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip"
ALL_TABLES = (*CDM_TABLES, *VOCAB_TABLES, *RESULTS_TABLES)

PERSON = (
    "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
    "1,8507,1970,0,0\n"
    "2,8532,1985,0,0\n"
)
CONCEPT = (
    "concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,"
    "concept_code,valid_start_date,valid_end_date,invalid_reason\n"
    "8507,MALE,Gender,Gender,Gender,S,M,1970-01-01,2099-12-31,\n"
)
COHORT = (
    "cohort_definition_id,subject_id,cohort_start_date,cohort_end_date\n1,1,2020-01-01,2020-12-31\n"
)


@pytest.fixture(scope="module")
def synthea_zip() -> Path:
    if not SYNTHEA_ZIP.is_file():
        pytest.skip(f"test data not found: {SYNTHEA_ZIP} (the shared data folder)")
    return SYNTHEA_ZIP


@pytest.fixture(scope="module")
def synthea_duckdb(tmp_path_factory: pytest.TempPathFactory, synthea_zip: Path) -> Path:
    path = tmp_path_factory.mktemp("synthea") / "synthea.duckdb"
    load_cdm(synthea_zip, CdmDatabase.parse(str(path)))
    return path


def counts(path: Path) -> dict[str, int]:
    db = CdmDatabase.parse(str(path))
    conn = duckdb.connect(str(path), read_only=True)
    try:
        union = " UNION ALL ".join(
            f"SELECT '{t}', count(*) FROM {db.qualified(t)}" for t in ALL_TABLES
        )
        return {str(name): int(n) for name, n in conn.execute(union).fetchall()}
    finally:
        conn.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("file_name", "header_case"),
    [("person.csv", str.lower), ("PERSON.csv", str.upper), ("Person.CSV", str.title)],
)
def test_file_and_column_names_in_any_letter_case(
    tmp_path: Path, file_name: str, header_case: Callable[[str], str]
) -> None:
    header, *data = PERSON.splitlines()
    text = "\n".join([header_case(header), *data]) + "\n"
    folder = write(tmp_path / "cdm", {file_name: text})
    target = tmp_path / "node.duckdb"
    report = load_cdm(folder, CdmDatabase.parse(str(target)))
    assert report.loaded("person") == 2
    assert rows(target, "SELECT person_id, year_of_birth FROM cdm.person ORDER BY 1") == [
        (1, 1970),
        (2, 1985),
    ]


def test_zip_clutter_is_skipped_and_other_files_are_listed(tmp_path: Path) -> None:
    archive = tmp_path / "cdm.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("extract/PERSON.csv", PERSON)
        zipped.writestr("__MACOSX/extract/._PERSON.csv", b"\x00\x05\x16\x07 resource fork")
        zipped.writestr("extract/.DS_Store", b"\x00\x00\x00\x01Bud1")
        zipped.writestr("extract/README.md", "# an OMOP extract\n")
        zipped.writestr("extract/empty/", "")
    target = tmp_path / "node.duckdb"
    report = load_cdm(archive, CdmDatabase.parse(str(target)))
    assert report.loaded("person") == 2
    assert report.ignored == ["cdm.zip:extract/README.md: not a .csv or .parquet file"]
    person = next(t for t in report.tables if t.table == "person")
    assert person.origin == "cdm.zip:extract/PERSON.csv"


def test_synthea_zip_with_macosx_clutter_loads(tmp_path: Path, synthea_zip: Path) -> None:
    with zipfile.ZipFile(synthea_zip) as zipped:
        assert any(name.startswith("__MACOSX/") for name in zipped.namelist())
    report = load_cdm(synthea_zip, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    assert report.ignored == []
    assert report.loaded("measurement") == 10_040


def test_parquet_layout_round_trip(tmp_path: Path, synthea_duckdb: Path) -> None:
    layout = tmp_path / "layout"
    exported = export_layout(CdmDatabase.parse(str(synthea_duckdb)), layout)
    assert exported["measurement"] == 10_040
    target = tmp_path / "reloaded.duckdb"
    report = load_cdm(layout, CdmDatabase.parse(str(target)))
    assert report.source == f"Parquet layout {layout}"
    assert counts(target) == counts(synthea_duckdb)
    for sql in [
        "SELECT * FROM cdm.person ORDER BY person_id",
        "SELECT * FROM cdm.visit_detail ORDER BY visit_detail_id",
        "SELECT * FROM vocab.concept ORDER BY concept_id",
    ]:
        assert rows(target, sql) == rows(synthea_duckdb, sql)


def test_flat_parquet_files_in_a_folder(tmp_path: Path) -> None:
    folder = write(tmp_path / "csv", {"PERSON.csv": PERSON})
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    conn = duckdb.connect()
    # upper-case columns, BIGINT and DOUBLE ids, as other tools write them
    conn.execute(
        f"COPY (SELECT CAST(person_id AS DOUBLE) AS PERSON_ID, * EXCLUDE (person_id) "
        f"FROM read_csv('{folder / 'PERSON.csv'}')) TO '{parquet / 'Person.parquet'}' "
        "(FORMAT parquet)"
    )
    conn.close()
    target = tmp_path / "node.duckdb"
    report = load_cdm(parquet, CdmDatabase.parse(str(target)))
    assert report.loaded("person") == 2
    assert rows(target, "SELECT person_id FROM cdm.person ORDER BY 1") == [(1,), (2,)]


def test_another_duckdb_cdm_with_tier_schemas(tmp_path: Path, synthea_duckdb: Path) -> None:
    target = tmp_path / "copy.duckdb"
    report = load_cdm(synthea_duckdb, CdmDatabase.parse(str(target)))
    assert counts(target) == counts(synthea_duckdb)
    person = next(t for t in report.tables if t.table == "person")
    assert person.origin == "synthea.duckdb cdm.person"


def test_a_duckdb_file_is_attached_read_only(tmp_path: Path, synthea_duckdb: Path) -> None:
    before = synthea_duckdb.stat().st_mtime_ns
    load_cdm(synthea_duckdb, CdmDatabase.parse(str(tmp_path / "copy.duckdb")))
    assert synthea_duckdb.stat().st_mtime_ns == before


def test_source_that_is_the_target_is_refused(synthea_duckdb: Path) -> None:
    with pytest.raises(SourceError, match="the source is the target"):
        load_cdm(synthea_duckdb, CdmDatabase.parse(str(synthea_duckdb)))


def test_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        load_cdm(tmp_path / "nowhere", CdmDatabase.parse(str(tmp_path / "node.duckdb")))


def test_two_files_for_one_table_are_refused(tmp_path: Path) -> None:
    folder = write(tmp_path / "cdm", {"PERSON.csv": PERSON, "person.csv": PERSON})
    target = tmp_path / "node.duckdb"
    with pytest.raises(SourceError, match="both hold table person"):
        load_cdm(folder, CdmDatabase.parse(str(target)))
    assert not target.exists()


def test_unknown_data_file_names_a_suggestion(tmp_path: Path) -> None:
    folder = write(tmp_path / "cdm", {"PERSON.csv": PERSON, "CONDITION_OCURRENCE.csv": "x\n"})
    with pytest.raises(UnknownTableError, match="did you mean condition_occurrence"):
        load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))


def test_empty_file_is_an_empty_table(tmp_path: Path) -> None:
    folder = write(tmp_path / "cdm", {"PERSON.csv": PERSON, "DEATH.csv": ""})
    report = load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    death = next(t for t in report.tables if t.table == "death")
    assert (death.rows_loaded, death.note) == (0, "empty file: no header")


def test_cdm_tables_are_replaced_vocabulary_and_cohorts_kept(tmp_path: Path) -> None:
    target = tmp_path / "node.duckdb"
    db = CdmDatabase.parse(str(target))
    load_cdm(
        write(
            tmp_path / "full", {"PERSON.csv": PERSON, "CONCEPT.csv": CONCEPT, "COHORT.csv": COHORT}
        ),
        db,
    )
    assert (counts(target)["concept"], counts(target)["cohort"]) == (1, 1)

    one_person = PERSON.splitlines()[0] + "\n3,8507,2001,0,0\n"
    report = load_cdm(write(tmp_path / "clinical", {"PERSON.csv": one_person}), db)
    after = counts(target)
    assert after["person"] == 1
    assert rows(target, "SELECT person_id FROM cdm.person") == [(3,)]
    assert after["concept"] == 1, "no vocabulary table in the source: vocabulary kept"
    assert after["cohort"] == 1, "no cohort table in the source: cohorts kept"
    assert report.replaced_tiers == ["cdm"]
    concept = next(t for t in report.tables if t.table == "concept")
    assert concept.note == "kept: the source has no vocabulary table"

    report = load_cdm(
        write(
            tmp_path / "vocab",
            {
                "PERSON.csv": PERSON,
                "VOCABULARY.csv": (
                    "vocabulary_id,vocabulary_name,vocabulary_reference,vocabulary_version,"
                    "vocabulary_concept_id\nGender,OMOP Gender,OMOP,,44819109\n"
                ),
            },
        ),
        db,
    )
    after = counts(target)
    assert (after["vocabulary"], after["concept"]) == (1, 0), "vocabulary tier replaced whole"
    assert after["cohort"] == 1


def test_missing_vocabulary_and_results_tables_are_created(tmp_path: Path) -> None:
    target = tmp_path / "node.duckdb"
    load_cdm(write(tmp_path / "cdm", {"PERSON.csv": PERSON}), CdmDatabase.parse(str(target)))
    assert counts(target) == {t: (2 if t == "person" else 0) for t in ALL_TABLES}
