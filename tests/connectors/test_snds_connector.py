"""SNDS connector end to end on the hand-made extract (tests/connectors/fixtures/snds): concrete
mapped values against the source records, rejections with their reasons, repeatability."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ehds.connectors.connector import run_connector
from ehds.connectors.report import EtlReport
from ehds.connectors.snds import SndsConnector
from ehds.connectors.snds.stcm import load_stcm
from ehds.omop.database import CdmDatabase

FIXTURE = Path(__file__).parent / "fixtures" / "snds"
P1 = "AAAAAAAAAAAAAAAA1|1"
P2 = "BBBBBBBBBBBBBBBB2|1"


def _run(db_path: Path, tmp_path: Path) -> EtlReport:
    db = CdmDatabase.parse(str(db_path))
    load_stcm(FIXTURE / "source_to_concept_map.csv", db)
    return run_connector(SndsConnector(FIXTURE), db, work_dir=tmp_path / "work")


@pytest.fixture
def loaded(vocab_db: Path, tmp_path: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, EtlReport]]:
    report = _run(vocab_db, tmp_path)
    con = duckdb.connect(str(vocab_db), read_only=True)
    yield con, report
    con.close()


def _person_id(con: duckdb.DuckDBPyConnection, source_value: str) -> int:
    row = con.execute(
        "SELECT person_id FROM cdm.person WHERE person_source_value = ?", [source_value]
    ).fetchone()
    assert row is not None, source_value
    return int(row[0])


def test_persons_from_ir_ben_r(loaded: tuple[duckdb.DuckDBPyConnection, EtlReport]) -> None:
    con, _ = loaded
    rows = con.execute(
        "SELECT person_source_value, year_of_birth, month_of_birth, gender_concept_id "
        "FROM cdm.person ORDER BY person_source_value"
    ).fetchall()
    assert rows == [
        (P1, 1950, 3, 8507),
        (P2, 1962, 7, 8532),
        ("CCCCCCCCCCCCCCCC3|1", 1990, 5, 8507),
        ("CCCCCCCCCCCCCCCC3|2", 1990, 5, 8532),
    ]


def test_death_from_cepidc_certificate(
    loaded: tuple[duckdb.DuckDBPyConnection, EtlReport],
) -> None:
    con, _ = loaded
    rows = con.execute(
        "SELECT person_id, death_date, death_type_concept_id, cause_concept_id, "
        "cause_source_value FROM cdm.death"
    ).fetchall()
    assert rows == [(_person_id(con, P2), dt.date(2021, 11, 5), 32815, 4115276, "C349")]


def test_pmsi_stay_and_its_diagnoses(loaded: tuple[duckdb.DuckDBPyConnection, EtlReport]) -> None:
    con, _ = loaded
    p1 = _person_id(con, P1)
    visits = con.execute(
        "SELECT visit_concept_id, visit_start_date, visit_end_date, visit_source_value "
        "FROM cdm.visit_occurrence WHERE person_id = ? ORDER BY visit_start_date",
        [p1],
    ).fetchall()
    assert visits == [
        (9202, dt.date(2020, 1, 15), dt.date(2020, 1, 15), "DCIR"),
        (581458, dt.date(2020, 1, 16), dt.date(2020, 1, 16), "DCIR"),
        (262, dt.date(2020, 3, 2), dt.date(2020, 3, 6), "PMSI MCO"),  # through the ER
        (9202, dt.date(2020, 9, 1), dt.date(2020, 9, 1), "PMSI MCO"),  # same-day stay
    ]
    conditions = con.execute(
        "SELECT c.condition_source_value, c.condition_concept_id, c.condition_start_date, "
        "c.condition_end_date, c.condition_status_concept_id, v.visit_concept_id "
        "FROM cdm.condition_occurrence c JOIN cdm.visit_occurrence v "
        "USING (visit_occurrence_id) WHERE c.person_id = ? ORDER BY 1",
        [p1],
    ).fetchall()
    stay = (dt.date(2020, 3, 2), dt.date(2020, 3, 6))
    assert conditions == [
        ("I10", 320128, *stay, 32908, 262),
        ("I210", 4329847, *stay, 32902, 262),  # DP, also DAS and unit DP: one condition
        ("R509", 0, *stay, 32908, 262),  # no mapping supplied: unmapped, kept
        ("Z121", 0, dt.date(2020, 9, 1), dt.date(2020, 9, 1), 32902, 9202),
    ]


def test_pmsi_act_dated_from_the_stay_start(
    loaded: tuple[duckdb.DuckDBPyConnection, EtlReport],
) -> None:
    con, _ = loaded
    rows = con.execute(
        "SELECT procedure_source_value, procedure_concept_id, procedure_date, quantity "
        "FROM cdm.procedure_occurrence WHERE person_id = ? ORDER BY procedure_date",
        [_person_id(con, P2)],
    ).fetchall()
    assert rows == [("HHFA016", 4198190, dt.date(2020, 6, 11), 1)]


def test_dcir_pharmacy_and_act(loaded: tuple[duckdb.DuckDBPyConnection, EtlReport]) -> None:
    con, _ = loaded
    p1 = _person_id(con, P1)
    drugs = con.execute(
        "SELECT drug_source_value, drug_concept_id, drug_exposure_start_date, quantity, "
        "visit_occurrence_id IS NOT NULL FROM cdm.drug_exposure ORDER BY 3"
    ).fetchall()
    assert drugs == [
        ("3400935955838", 19073188, dt.date(2020, 1, 16), 2.0, True),
        ("3400936252639", 19075601, dt.date(2021, 3, 12), 1.0, True),
    ]
    acts = con.execute(
        "SELECT procedure_source_value, procedure_concept_id, procedure_date "
        "FROM cdm.procedure_occurrence WHERE person_id = ? ORDER BY procedure_date",
        [p1],
    ).fetchall()
    assert acts == [
        ("DEQP003", 4163951, dt.date(2020, 1, 15)),
        ("HHQE005", 4249893, dt.date(2020, 9, 1)),
    ]


def test_long_term_condition_and_observation_period(
    loaded: tuple[duckdb.DuckDBPyConnection, EtlReport],
) -> None:
    con, _ = loaded
    p1 = _person_id(con, P1)
    ald = con.execute(
        "SELECT condition_concept_id, condition_start_date, condition_end_date "
        "FROM cdm.condition_occurrence WHERE person_id = ? AND condition_source_value = 'E11'",
        [p1],
    ).fetchall()
    assert ald == [(201826, dt.date(2015, 4, 1), None)]  # 2999-12-31 is an open end
    periods = con.execute(
        "SELECT person_id, observation_period_start_date, observation_period_end_date "
        "FROM cdm.observation_period ORDER BY person_id"
    ).fetchall()
    assert (p1, dt.date(2015, 4, 1), dt.date(2020, 9, 1)) in periods
    assert (_person_id(con, P2), dt.date(2020, 6, 10), dt.date(2021, 11, 5)) in periods


def test_rejections_are_counted_with_reasons(
    loaded: tuple[duckdb.DuckDBPyConnection, EtlReport],
) -> None:
    con, report = loaded
    rows = con.execute(
        "SELECT record_type, reason, count(*) FROM etl.quarantine GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [
        ("ER_CAM_F", "snds.dcir_orphan", 1),
        ("ER_PHA_F", "snds.dcir_regularisation", 1),
        ("ER_PRS_F", "snds.dcir_information_line", 1),
        ("IR_BEN_R", "snds.invalid_birth_year", 1),
        ("IR_IMB_R", "snds.unsupported_nomenclature", 1),
        ("KI_CCI_R", "snds.person_unlinked", 1),
        ("T_MCOaaA", "snds.act_outside_stay", 1),
        ("T_MCOaaA", "snds.pmsi_stay_missing", 1),
        ("T_MCOaaB", "snds.person_ambiguous", 1),
        ("T_MCOaaB", "snds.pmsi_link_invalid", 1),
        ("visit_occurrence", "fk.person_missing", 1),  # ER_PRS_F of a non-beneficiary
    ]
    details = con.execute("SELECT detail FROM etl.quarantine").fetchall()
    assert not any("AAAAAAAAAAAAAAAA1" in str(d[0]) for d in details)
    assert report.to_json()


def test_same_input_same_ids(vocab_db: Path, tmp_path: Path) -> None:
    _run(vocab_db, tmp_path)
    query = "SELECT person_source_value, person_id FROM cdm.person ORDER BY 1"
    with duckdb.connect(str(vocab_db), read_only=True) as con:
        first = con.execute(query).fetchall()
        first_conditions = con.execute(
            "SELECT condition_occurrence_id, condition_source_value FROM "
            "cdm.condition_occurrence ORDER BY 1"
        ).fetchall()
    _run(vocab_db, tmp_path)
    with duckdb.connect(str(vocab_db), read_only=True) as con:
        assert con.execute(query).fetchall() == first
        assert (
            con.execute(
                "SELECT condition_occurrence_id, condition_source_value FROM "
                "cdm.condition_occurrence ORDER BY 1"
            ).fetchall()
            == first_conditions
        )


def test_dq_conformance_checks_pass(vocab_db: Path, tmp_path: Path) -> None:
    from ehds.omop.dq import run_dq

    _run(vocab_db, tmp_path)
    report = run_dq(CdmDatabase.parse(str(vocab_db)))
    failed = [
        (r.check.dqd_name, r.check.table, r.check.field) for r in report.failed("conformance")
    ]
    assert failed == [], "\n".join(map(str, failed))
