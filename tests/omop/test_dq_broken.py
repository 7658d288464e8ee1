"""Each named data-quality check fails on a CDM broken on purpose for it.

The clean CDM is a small synthetic one (``ehds.omop.synth``), generated once; every case
copies it, applies its SQL breakage with DuckDB, and runs only the check under test.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from ehds.omop.database import CdmDatabase
from ehds.omop.dq import CheckResult, run_dq
from ehds.omop.synth import SynthOptions, generate


def unconstrained(table: str) -> list[str]:
    """SQL re-creating ``cdm.table`` without its primary key and NOT NULL constraints."""
    return [
        f"CREATE TABLE cdm.{table}_copy AS SELECT * FROM cdm.{table}",
        f"DROP TABLE cdm.{table}",
        f"ALTER TABLE cdm.{table}_copy RENAME TO {table}",
    ]


@dataclass(frozen=True)
class Breakage:
    check: str
    table: str
    field: str | None
    sql: tuple[str, ...]
    concept_id: int | None = None

    @property
    def id(self) -> str:
        where = f"{self.table}.{self.field}" if self.field else self.table
        return f"{self.check}-{where}" + (f"-{self.concept_id}" if self.concept_id else "")


FIRST = "(SELECT MIN({id}) FROM cdm.{table})"

BREAKAGES = (
    Breakage("cdmTable", "note", None, ("DROP TABLE cdm.note",)),
    Breakage("cdmField", "death", "cause_source_value",
             ("ALTER TABLE cdm.death DROP COLUMN cause_source_value",)),
    Breakage("isRequired", "person", "year_of_birth", (
        *unconstrained("person"),
        "UPDATE cdm.person SET year_of_birth = NULL "
        "WHERE person_id = (SELECT MIN(person_id) FROM cdm.person)",
    )),
    Breakage("cdmDatatype", "person", "month_of_birth", (
        "ALTER TABLE cdm.person ALTER COLUMN month_of_birth TYPE VARCHAR",
        "UPDATE cdm.person SET month_of_birth = 'June' "
        "WHERE person_id = (SELECT MIN(person_id) FROM cdm.person)",
    )),
    Breakage("isPrimaryKey", "visit_occurrence", "visit_occurrence_id", (
        *unconstrained("visit_occurrence"),
        "INSERT INTO cdm.visit_occurrence SELECT * FROM cdm.visit_occurrence LIMIT 1",
    )),
    Breakage("isForeignKey", "condition_occurrence", "person_id", (
        "UPDATE cdm.condition_occurrence SET person_id = 999999999 WHERE condition_occurrence_id "
        "= (SELECT MIN(condition_occurrence_id) FROM cdm.condition_occurrence)",
    )),
    Breakage("isForeignKey", "drug_exposure", "drug_concept_id", (
        "UPDATE cdm.drug_exposure SET drug_concept_id = 123456789 WHERE drug_exposure_id "
        "= (SELECT MIN(drug_exposure_id) FROM cdm.drug_exposure)",
    )),
    Breakage("fkDomain", "condition_occurrence", "condition_concept_id", (
        "UPDATE cdm.condition_occurrence SET condition_concept_id = 3025315 "  # body weight
        "WHERE condition_occurrence_id "
        "= (SELECT MIN(condition_occurrence_id) FROM cdm.condition_occurrence)",
    )),
    Breakage("fkClass", "drug_era", "drug_concept_id", (
        "INSERT INTO cdm.drug_era (drug_era_id, person_id, drug_concept_id, drug_era_start_date, "
        "drug_era_end_date, drug_exposure_count, gap_days) SELECT 1, MIN(person_id), 1115171, "
        "DATE '2020-01-01', DATE '2020-02-01', 1, 0 FROM cdm.person",  # a Clinical Drug
    )),
    Breakage("isStandardValidConcept", "visit_occurrence", "visit_concept_id", (
        "UPDATE vocab.concept SET standard_concept = NULL WHERE concept_id = 9202",
    )),
    Breakage("measurePersonCompleteness", "observation_period", None, (
        "DELETE FROM cdm.observation_period "
        "WHERE person_id = (SELECT MIN(person_id) FROM cdm.person)",
    )),
    Breakage("measureValueCompleteness", "visit_occurrence", "visit_end_date", (
        *unconstrained("visit_occurrence"),
        "UPDATE cdm.visit_occurrence SET visit_end_date = NULL",
    )),
    Breakage("standardConceptRecordCompleteness", "condition_occurrence", "condition_concept_id",
             ("UPDATE cdm.condition_occurrence SET condition_concept_id = 0",)),
    Breakage("sourceValueCompleteness", "condition_occurrence", "condition_source_value", (
        "UPDATE cdm.condition_occurrence SET "
        "condition_source_value = 'C' || (condition_occurrence_id % 20)",
        "UPDATE cdm.condition_occurrence SET condition_concept_id = 0 "
        "WHERE condition_occurrence_id % 20 < 5",
    )),
    Breakage("plausibleValueLow", "visit_occurrence", "visit_start_date", (
        "UPDATE cdm.visit_occurrence SET visit_start_date = DATE '1900-01-01' "
        "WHERE visit_occurrence_id % 10 = 0",
    )),
    Breakage("plausibleValueHigh", "procedure_occurrence", "procedure_date",
             ("UPDATE cdm.procedure_occurrence SET procedure_date = DATE '2200-01-01'",)),
    Breakage("plausibleValueLow", "measurement", "value_as_number", (
        "UPDATE cdm.measurement SET value_as_number = -5 "
        "WHERE measurement_concept_id = 3025315 AND unit_concept_id = 9529",
    ), concept_id=3025315),
    Breakage("plausibleValueHigh", "measurement", "value_as_number", (
        "UPDATE cdm.measurement SET value_as_number = 1000 "
        "WHERE measurement_concept_id = 3004249 AND unit_concept_id = 8876",
    ), concept_id=3004249),
    Breakage("plausibleStartBeforeEnd", "drug_exposure", "drug_exposure_start_date", (
        "UPDATE cdm.drug_exposure SET drug_exposure_end_date = drug_exposure_start_date - 10",
    )),
    Breakage("plausibleAfterBirth", "condition_occurrence", "condition_start_date", (
        "UPDATE cdm.person SET year_of_birth = 2099, birth_datetime = TIMESTAMP '2099-01-01'",
    )),
    Breakage("plausibleDuringLife", "visit_occurrence", "visit_start_date", (
        "INSERT INTO cdm.death (person_id, death_date, death_type_concept_id) "
        "SELECT person_id, DATE '2000-01-01', 32817 FROM cdm.person "
        "WHERE person_id NOT IN (SELECT person_id FROM cdm.death)",
    )),
    Breakage("withinVisitDates", "condition_occurrence", "condition_start_date", (
        "UPDATE cdm.condition_occurrence SET condition_start_date = condition_start_date + 400 "
        "WHERE visit_occurrence_id IS NOT NULL",
    )),
    Breakage("withinObservationPeriod", "measurement", "measurement_date",
             ("UPDATE cdm.measurement SET measurement_date = DATE '2001-01-01'",)),
    Breakage("measureObservationPeriodOverlap", "observation_period", None, (
        "INSERT INTO cdm.observation_period SELECT observation_period_id + 100000000, person_id, "
        "observation_period_start_date, observation_period_end_date, period_type_concept_id "
        "FROM cdm.observation_period WHERE observation_period_id "
        "= (SELECT MIN(observation_period_id) FROM cdm.observation_period)",
    )),
)  # fmt: skip


@pytest.fixture(scope="session")
def clean_cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dq") / "clean.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=150, seed=3, profile="fr"))
    return path


def broken_copy(clean: Path, directory: Path, statements: tuple[str, ...]) -> CdmDatabase:
    path = directory / "broken.duckdb"
    shutil.copy(clean, path)
    with duckdb.connect(str(path)) as con:
        for statement in statements:
            con.execute(statement)
    return CdmDatabase.parse(str(path))


def find(results: tuple[CheckResult, ...], case: Breakage) -> CheckResult:
    found = [
        r
        for r in results
        if r.check.dqd_name == case.check
        and r.check.table == case.table
        and r.check.field == case.field
        and r.check.concept_id == case.concept_id
    ]
    assert len(found) == 1, f"expected one {case.id} check, found {len(found)}"
    return found[0]


def test_every_named_check_has_a_breakage() -> None:
    from ehds.omop.dq import known_check_names

    assert {b.check for b in BREAKAGES} == set(known_check_names())


@pytest.mark.parametrize("case", BREAKAGES, ids=lambda b: b.id)
def test_check_fails_on_its_breakage(clean_cdm: Path, tmp_path: Path, case: Breakage) -> None:
    clean = find(run_dq(CdmDatabase.parse(str(clean_cdm)), only=[case.check]).results, case)
    assert clean.status in ("PASS", "NA")

    db = broken_copy(clean_cdm, tmp_path, case.sql)
    result = find(run_dq(db, only=[case.check]).results, case)

    assert result.status == "FAIL", (result.num_violated_rows, result.num_denominator_rows)
    assert result.num_violated_rows > 0


def test_a_failing_query_is_an_error_of_its_check_only(clean_cdm: Path, tmp_path: Path) -> None:
    """A text person_id holding a non-number makes the foreign-key query fail: that check is an
    error (its message withholds the value), the others on the table still run."""
    db = broken_copy(clean_cdm, tmp_path, (
        "ALTER TABLE cdm.condition_occurrence ALTER COLUMN person_id TYPE VARCHAR",
        "UPDATE cdm.condition_occurrence SET person_id = 'zq-secret' WHERE condition_occurrence_id "
        "= (SELECT MIN(condition_occurrence_id) FROM cdm.condition_occurrence)",
    ))  # fmt: skip
    report = run_dq(db, only=["isForeignKey", "isRequired", "cdmDatatype"])

    fk = report.result("isForeignKey", "condition_occurrence", "person_id")
    assert fk.is_error
    assert fk.error is not None
    assert "zq-secret" not in fk.error
    assert report.result("isRequired", "condition_occurrence", "person_id").passed
    assert report.result("cdmDatatype", "condition_occurrence", "person_id").failed
    assert report.result("isForeignKey", "condition_occurrence", "visit_occurrence_id").passed
    assert "zq-secret" not in report.render_table()
