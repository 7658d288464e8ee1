"""Bad input: a typed error naming file, line, column and expected type, never the value,
and a target left exactly as it was - on DuckDB and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg
import pytest

from ehds.core.errors import InputError
from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.loader import (
    CdmLoadError,
    DuplicateKeyError,
    MalformedRowError,
    MissingColumnError,
    MissingValueError,
    UnknownColumnError,
    UnknownTableError,
    ValueTooLongError,
    WrongTypeError,
    load_cdm,
)

PERSON_HEADER = (
    "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id,"
    "person_source_value"
)
PERSON_ROWS = [
    "1,8507,1970,8527,38003564,p-one",
    "2,8532,1981,8527,38003564,p-two",
    "3,8532,1992,8516,38003564,p-three",
    "4,8507,2003,8516,38003564,p-four",
]
CONDITION_HEADER = (
    "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,"
    "condition_start_datetime,condition_type_concept_id"
)
CONDITION_ROWS = [
    "10,1,192671,2020-01-02,2020-01-02 10:00:00,32817",
    "11,2,192671,2020-02-03,,32817",
    "12,3,4112343,2021-03-04,2021-03-04 00:00:00,32817",
]


def write_cdm(folder: Path, person: list[str], condition: list[str]) -> Path:
    """A small valid CDM folder: PERSON.csv and CONDITION_OCCURRENCE.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "PERSON.csv").write_text("\n".join(person) + "\n", encoding="utf-8")
    (folder / "CONDITION_OCCURRENCE.csv").write_text("\n".join(condition) + "\n", encoding="utf-8")
    return folder


def good_cdm(folder: Path) -> Path:
    return write_cdm(folder, [PERSON_HEADER, *PERSON_ROWS], [CONDITION_HEADER, *CONDITION_ROWS])


def snapshot(db: CdmDatabase) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the loaded tables, sorted: equal snapshots mean an unchanged target."""
    queries = {
        "person": f"SELECT * FROM {db.qualified('person')} ORDER BY person_id",
        "condition_occurrence": (
            f"SELECT * FROM {db.qualified('condition_occurrence')} ORDER BY condition_occurrence_id"
        ),
        "measurement": f"SELECT count(*) FROM {db.qualified('measurement')}",
    }
    if db.backend is Backend.DUCKDB:
        conn = duckdb.connect(str(db.duckdb_path), read_only=True)
        try:
            return {k: [tuple(r) for r in conn.execute(q).fetchall()] for k, q in queries.items()}
        finally:
            conn.close()
    with psycopg.connect(db.libpq_conninfo) as pg:
        return {k: [tuple(r) for r in pg.execute(q).fetchall()] for k, q in queries.items()}


@dataclass(frozen=True)
class Case:
    error: type[CdmLoadError]
    file: str
    line: int | None
    column: str | None
    secret: str | None
    """A value planted in the bad row that the message must not contain."""
    corrupt: Callable[[Path], None]


def _person(rows: list[str], header: str = PERSON_HEADER) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        (folder / "PERSON.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")

    return corrupt


def _condition(rows: list[str]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        text = "\n".join([CONDITION_HEADER, *rows]) + "\n"
        (folder / "CONDITION_OCCURRENCE.csv").write_text(text, encoding="utf-8")

    return corrupt


def _rename_person(name: str) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        (folder / "PERSON.csv").rename(folder / name)

    return corrupt


CASES = {
    "wrong type": Case(
        WrongTypeError,
        "PERSON.csv",
        4,
        "year_of_birth",
        "NOTAYEAR4711",
        _person([*PERSON_ROWS[:2], "3,8532,NOTAYEAR4711,8516,38003564,p-three"]),
    ),
    "fraction in an integer column": Case(
        WrongTypeError,
        "PERSON.csv",
        3,
        "person_id",
        "2.25",
        _person([PERSON_ROWS[0], "2.25,8532,1981,8527,38003564,p-two"]),
    ),
    "integer out of range": Case(
        WrongTypeError,
        "PERSON.csv",
        2,
        "race_concept_id",
        "98765432109",
        _person(["1,8507,1970,98765432109,38003564,p-one"]),
    ),
    "bad date": Case(
        WrongTypeError,
        "CONDITION_OCCURRENCE.csv",
        3,
        "condition_start_date",
        "2020-13-45",
        _condition([CONDITION_ROWS[0], "11,2,192671,2020-13-45,,32817"]),
    ),
    "empty required value": Case(
        MissingValueError,
        "PERSON.csv",
        5,
        "gender_concept_id",
        None,
        _person([*PERSON_ROWS[:3], "4,,2003,8516,38003564,SECRET-ROW-4"]),
    ),
    "duplicate primary key": Case(
        DuplicateKeyError,
        "PERSON.csv",
        6,
        "person_id",
        "987654",
        _person(["987654,8507,1970,8527,38003564,a", *PERSON_ROWS[1:], "987654,8532,1,0,0,b"]),
    ),
    "text too long": Case(
        ValueTooLongError,
        "PERSON.csv",
        3,
        "person_source_value",
        "S" * 51,
        _person([PERSON_ROWS[0], "2,8532,1981,8527,38003564," + "S" * 51]),
    ),
    "missing required column": Case(
        MissingColumnError,
        "PERSON.csv",
        1,
        "year_of_birth",
        None,
        _person(
            ["1,8507,8527,38003564,p-one"],
            header="person_id,gender_concept_id,race_concept_id,ethnicity_concept_id,"
            "person_source_value",
        ),
    ),
    "unknown column": Case(
        UnknownColumnError,
        "PERSON.csv",
        1,
        "shoe_size",
        None,
        _person(["1,8507,1970,8527,38003564,p-one,44"], header=PERSON_HEADER + ",shoe_size"),
    ),
    "row with a missing field": Case(
        MalformedRowError,
        "PERSON.csv",
        4,
        None,
        "p-three-SECRET",
        _person([*PERSON_ROWS[:2], "3,8532,1992,38003564,p-three-SECRET"]),
    ),
    "unknown table": Case(
        UnknownTableError, "PERSONS.csv", None, None, None, _rename_person("PERSONS.csv")
    ),
}


def _check_error(error: CdmLoadError, case: Case) -> None:
    assert isinstance(error, case.error)
    assert isinstance(error, InputError)
    message = str(error)
    assert case.file in message
    assert error.location is not None
    assert error.location.origin == case.file
    assert error.location.line == case.line
    if case.line is not None:
        assert f"line {case.line}" in message
    assert error.column == case.column
    if case.column is not None:
        assert f"column {case.column}" in message
    if case.error in (WrongTypeError, MissingValueError, MissingColumnError, ValueTooLongError):
        assert error.expected
        assert f"expected {error.expected}" in message
    if case.secret is not None:
        assert case.secret not in message


def _load_corrupted_and_compare(tmp_path: Path, db: CdmDatabase, case: Case) -> CdmLoadError:
    load_cdm(good_cdm(tmp_path / "good"), db)
    before = snapshot(db)
    assert len(before["person"]) == 4
    bad = good_cdm(tmp_path / "bad")
    case.corrupt(bad)
    with pytest.raises(CdmLoadError) as raised:
        load_cdm(bad, db)
    assert snapshot(db) == before
    return raised.value


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_located_and_leaves_duckdb_unchanged(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    _check_error(_load_corrupted_and_compare(tmp_path, db, case), case)


@pytest.mark.postgres
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_located_and_leaves_postgres_unchanged(
    tmp_path: Path, fresh_postgres_url: str, name: str
) -> None:
    case = CASES[name]
    db = CdmDatabase.parse(fresh_postgres_url)
    _check_error(_load_corrupted_and_compare(tmp_path, db, case), case)


def test_wrong_type_message_exactly(tmp_path: Path) -> None:
    folder = good_cdm(tmp_path / "cdm")
    CASES["wrong type"].corrupt(folder)
    with pytest.raises(WrongTypeError) as raised:
        load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    assert str(raised.value) == (
        "PERSON.csv, line 4, column year_of_birth: the value is not a whole number within the "
        "INTEGER range (expected integer)"
    )


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    folder = good_cdm(tmp_path / "cdm")
    CASES["duplicate primary key"].corrupt(folder)
    with pytest.raises(DuplicateKeyError, match="first seen at line 2"):
        load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))


def test_lines_count_line_breaks_inside_quoted_fields(tmp_path: Path) -> None:
    rows = [
        '1,8507,1970,8527,38003564,"two\nlines"',
        "2,8532,1981,8527,38003564,p-two",
        '3,8532,1992,8516,38003564,"three\nline\nvalue"',
        "4,8507,2003,8516,38003564,p-four",
        "5,8507,20x3,8516,38003564,p-five",
    ]
    folder = write_cdm(tmp_path / "cdm", [PERSON_HEADER, *rows], [CONDITION_HEADER])
    with pytest.raises(WrongTypeError) as raised:
        load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    assert raised.value.location is not None
    assert raised.value.location.line == 9  # header, 2 lines, 1, 3 lines, 1, then the row


def test_line_of_a_late_row_in_a_larger_file(tmp_path: Path) -> None:
    rows = [f"{i},8507,1970,8527,38003564,p{i}" for i in range(1, 50_001)]
    rows[41_999] = "42000,,1970,8527,38003564,p42000"
    folder = write_cdm(tmp_path / "cdm", [PERSON_HEADER, *rows], [CONDITION_HEADER])
    with pytest.raises(MissingValueError) as raised:
        load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    assert raised.value.location is not None
    assert raised.value.location.line == 42_001
    assert raised.value.column == "gender_concept_id"


def test_integral_doubles_load_as_integers(tmp_path: Path) -> None:
    rows = ["10204.0,8507.0,1970,8527,38003564,x", "10205,8532,1.981e3,8527,38003564,"]
    folder = write_cdm(tmp_path / "cdm", [PERSON_HEADER, *rows], [CONDITION_HEADER])
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    load_cdm(folder, db)
    assert snapshot(db)["person"] == [
        (10204, 8507, 1970, None, None, None, 8527, 38003564, None, None, None, "x") + (None,) * 6,
        (10205, 8532, 1981, None, None, None, 8527, 38003564) + (None,) * 10,
    ]
