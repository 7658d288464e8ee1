"""``run_dq`` on a clean CDM, the DQD results format, the CLI, and the generated rules.

A clean synthetic CDM passes every check (conformance included, which is what ETL runs are
held to); the JSON carries the keys OHDSI's Data Quality Dashboard viewer reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import psycopg
import pytest

from ehds.cli.main import main as cli_main
from ehds.omop.database import CdmDatabase
from ehds.omop.dq import Category, DqReport, UnknownCheckError, known_check_names, run_dq
from ehds.omop.dq.generate_rules import render
from ehds.omop.synth import SynthOptions, generate

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT.parent / "shared" / "reference" / "omop-cdm-5.4"
RULES_FILE = ROOT / "omop" / "ehds" / "omop" / "dq" / "field_rules.py"

# The keys of one CheckResults entry as DQD (2.x) writes them and its viewer reads them.
DQD_RESULT_KEYS = {
    "NUM_VIOLATED_ROWS", "PCT_VIOLATED_ROWS", "NUM_DENOMINATOR_ROWS", "EXECUTION_TIME",
    "QUERY_TEXT", "CHECK_NAME", "CHECK_LEVEL", "CHECK_DESCRIPTION", "CDM_TABLE_NAME",
    "CDM_FIELD_NAME", "CONCEPT_ID", "UNIT_CONCEPT_ID", "SQL_FILE", "CATEGORY", "SUBCATEGORY",
    "CONTEXT", "WARNING", "ERROR", "checkId", "FAILED", "PASSED", "IS_ERROR", "NOT_APPLICABLE",
    "NOT_APPLICABLE_REASON", "THRESHOLD_VALUE", "NOTES_VALUE",
}  # fmt: skip
DQD_OVERVIEW_KEYS = {
    "countTotal", "countPassed", "countErrorFailed", "countThresholdFailed", "countOverallFailed",
    "percentPassed", "percentFailed", "countTotalPlausibility", "countTotalConformance",
    "countTotalCompleteness", "countFailedPlausibility", "countFailedConformance",
    "countFailedCompleteness", "countPassedPlausibility", "countPassedConformance",
    "countPassedCompleteness",
}  # fmt: skip


@pytest.fixture(scope="module")
def clean_cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dq") / "clean.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=150, seed=5, profile="fi"))
    return path


@pytest.fixture(scope="module")
def clean_report(clean_cdm: Path) -> DqReport:
    return run_dq(CdmDatabase.parse(str(clean_cdm)))


def test_clean_synthetic_cdm_passes_every_check(clean_report: DqReport) -> None:
    assert clean_report.failed("conformance") == []
    assert clean_report.failed() == []
    assert clean_report.errors() == []
    names = {r.check.dqd_name for r in clean_report.results}
    assert names == set(known_check_names())
    # The checks really looked at rows: the populated tables are judged, not skipped.
    judged = {r.check.table for r in clean_report.results if r.passed and r.num_denominator_rows}
    assert {"person", "visit_occurrence", "condition_occurrence", "measurement"} <= judged


def test_clean_report_figures_are_concrete(clean_cdm: Path, clean_report: DqReport) -> None:
    with duckdb.connect(str(clean_cdm), read_only=True) as con:
        row = con.execute("SELECT COUNT(*) FROM cdm.measurement").fetchone()
    assert row is not None
    required = clean_report.result("isRequired", "measurement", "measurement_concept_id")
    assert required.num_denominator_rows == row[0]
    assert required.num_violated_rows == 0
    empty = clean_report.result("isRequired", "note", "note_id")
    assert empty.not_applicable
    assert empty.not_applicable_reason == "table note is empty"


def test_dqd_json_has_the_dashboard_keys(clean_report: DqReport) -> None:
    document = json.loads(json.dumps(clean_report.to_dqd_json()))
    assert set(document) == {
        "startTimestamp", "endTimestamp", "executionTime", "CheckResults", "Metadata", "Overview",
    }  # fmt: skip
    assert all(set(row) == DQD_RESULT_KEYS for row in document["CheckResults"])
    assert set(document["Overview"]) >= DQD_OVERVIEW_KEYS
    assert document["Overview"]["countTotal"] == len(document["CheckResults"])
    assert document["Overview"]["countOverallFailed"] == 0
    metadata = document["Metadata"][0]
    assert metadata["CDM_SOURCE_NAME"].startswith("EHDS synthetic CDM")
    assert metadata["CDM_VERSION"] == "5.4"
    row = next(r for r in document["CheckResults"] if r["CHECK_NAME"] == "isForeignKey")
    assert row["CATEGORY"] == "Conformance"
    assert row["CHECK_LEVEL"] == "FIELD"
    assert row["CDM_TABLE_NAME"] == row["CDM_TABLE_NAME"].upper()
    assert row["checkId"].startswith("field_isforeignkey_")
    assert {r["CATEGORY"] for r in document["CheckResults"]} == {c.value for c in Category}
    concept_rows = [r for r in document["CheckResults"] if r["CHECK_LEVEL"] == "CONCEPT"]
    assert {r["CHECK_NAME"] for r in concept_rows} == {"plausibleValueLow", "plausibleValueHigh"}
    assert all(isinstance(r["CONCEPT_ID"], int) for r in concept_rows)


def test_renderings(clean_report: DqReport) -> None:
    table = clean_report.render_table()
    assert "conformance" in table
    assert "every check passed" in table
    page = clean_report.render_html()
    assert page.startswith("<!DOCTYPE html>")
    assert "src=" not in page
    assert "<link" not in page
    assert "isForeignKey" in page
    assert "0 failed" not in clean_report.summary()


def test_cli_formats_and_fail_on(
    clean_cdm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dq.json"
    assert (
        cli_main(["omop", "dq", "--db", str(clean_cdm), "--format", "json", "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["Overview"]["countOverallFailed"] == 0
    assert cli_main(["omop", "dq", "--db", str(clean_cdm), "--fail-on", "any"]) == 0
    assert "category" in capsys.readouterr().out

    broken = tmp_path / "broken.duckdb"
    shutil.copy(clean_cdm, broken)
    with duckdb.connect(str(broken)) as con:
        con.execute("UPDATE cdm.drug_exposure SET drug_concept_id = 123456789")
    html = tmp_path / "dq.html"
    args = ["omop", "dq", "--db", str(broken), "--format", "html", "--out", str(html),
            "--check", "isForeignKey"]  # fmt: skip
    assert cli_main(args) == 0
    assert "FAIL" in html.read_text()
    assert cli_main([*args, "--fail-on", "conformance"]) == 1
    assert cli_main(["omop", "dq", "--db", str(broken), "--check", "isRequired",
                     "--fail-on", "conformance"]) == 0  # fmt: skip
    assert cli_main(["omop", "dq", "--db", str(broken), "--check", "noSuchCheck"]) == 2
    assert "noSuchCheck" in capsys.readouterr().err


def test_unknown_check_name_is_refused(clean_cdm: Path) -> None:
    with pytest.raises(UnknownCheckError, match="noSuchCheck"):
        run_dq(CdmDatabase.parse(str(clean_cdm)), only=["noSuchCheck"])


def test_generated_rules_match_the_specification() -> None:
    if not SPEC_DIR.is_dir():
        pytest.skip(f"OMOP CDM specification not found at {SPEC_DIR}")
    assert RULES_FILE.read_text(encoding="utf-8") == render(SPEC_DIR), (
        "regenerate: python -m ehds.omop.dq.generate_rules ../shared/reference/omop-cdm-5.4 "
        "omop/ehds/omop/dq/field_rules.py"
    )


@pytest.mark.postgres
def test_postgresql_clean_and_broken(fresh_postgres_url: str) -> None:
    db = CdmDatabase.parse(fresh_postgres_url)
    generate(db, SynthOptions(persons=80, seed=2, profile="dk"))
    report = run_dq(db)
    assert report.failed() == []
    assert report.errors() == []

    with psycopg.connect(db.libpq_conninfo) as conn:
        conn.execute("ALTER TABLE cdm.person ALTER COLUMN month_of_birth TYPE varchar")
        conn.execute(
            "UPDATE cdm.person SET month_of_birth = 'June' "
            "WHERE person_id = (SELECT MIN(person_id) FROM cdm.person)"
        )
        conn.execute(
            "UPDATE cdm.condition_occurrence SET person_id = 999999999 "
            "WHERE condition_occurrence_id "
            "= (SELECT MIN(condition_occurrence_id) FROM cdm.condition_occurrence)"
        )
    broken = run_dq(db, only=["cdmDatatype", "isForeignKey", "plausibleAfterBirth"])
    assert broken.result("cdmDatatype", "person", "month_of_birth").num_violated_rows == 1
    assert broken.result("isForeignKey", "condition_occurrence", "person_id").failed
    assert broken.result("cdmDatatype", "person", "year_of_birth").passed
    assert broken.errors() == []
