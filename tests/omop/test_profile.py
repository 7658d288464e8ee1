"""``ehds omop profile`` reports exactly what a small hand-built CDM holds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from ehds.cli.main import main
from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.install import create_empty_cdm
from ehds.omop.profile import profile_cdm


def _build(db: CdmDatabase) -> None:
    create_empty_cdm(db)
    with bulk_writer(db) as writer:
        writer.insert_arrow(
            "person",
            pa.table(
                {
                    "person_id": [1, 2, 3, 4],
                    "gender_concept_id": [8507, 8532, 8532, 0],
                    "year_of_birth": [1950, 1985, 1989, 2015],
                    "race_concept_id": [0, 0, 0, 0],
                    "ethnicity_concept_id": [0, 0, 0, 0],
                }
            ),
        )
        writer.insert_arrow(
            "observation_period",
            pa.table(
                {
                    "observation_period_id": [1, 2, 3, 4],
                    "person_id": [1, 2, 3, 4],
                    "observation_period_start_date": [dt.date(2010, 1, 1)] * 4,
                    "observation_period_end_date": [dt.date(2020, 6, 30)] * 3
                    + [dt.date(2019, 1, 1)],
                    "period_type_concept_id": [32817] * 4,
                }
            ),
        )
        writer.insert_arrow(
            "cdm_source",
            pa.table(
                {
                    "cdm_source_name": ["test"],
                    "cdm_source_abbreviation": ["t"],
                    "cdm_holder": ["us"],
                    "source_release_date": [dt.date(2020, 7, 1)],
                    "cdm_release_date": [dt.date(2020, 7, 1)],
                    "cdm_version": ["5.4"],
                    "cdm_version_concept_id": [756265],
                    "vocabulary_version": ["v5.0 01-JAN-24"],
                }
            ),
        )


def test_profile_counts_bands_ranges_and_versions(tmp_path: Path) -> None:
    db = CdmDatabase.parse(str(tmp_path / "node.duckdb"))
    _build(db)
    profile = profile_cdm(db)
    assert profile.persons == 4
    assert profile.counts["observation_period"] == 4
    assert profile.counts["measurement"] == 0
    assert profile.cdm_version == "5.4"
    assert profile.vocabulary_version == "v5.0 01-JAN-24"
    assert profile.reference_date == dt.date(2020, 6, 30)
    # ages at 2020: 70, 35, 31, 5
    assert profile.persons_by_sex_age == {
        ("male", "70-79"): 1,
        ("female", "30-39"): 2,
        ("other/unknown", "0-9"): 1,
    }
    ranges = {r.table: (r.column, r.first, r.last) for r in profile.date_ranges}
    assert ranges["observation_period"] == (
        "observation_period_start_date",
        dt.date(2010, 1, 1),
        dt.date(2010, 1, 1),
    )


def test_profile_command_prints_the_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.duckdb"
    _build(CdmDatabase.parse(str(path)))
    assert main(["omop", "profile", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "CDM version         5.4" in out
    assert "person" in out
    assert "4" in out
    assert "30-39" in out


def test_init_then_profile_of_an_empty_cdm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.duckdb"
    assert main(["omop", "init", "--db", str(path)]) == 0
    assert "39 OMOP CDM v5.4 tables" in capsys.readouterr().out
    assert main(["omop", "profile", "--db", f"duckdb:///{path}"]) == 0
    assert "39 empty tables" in capsys.readouterr().out


def test_bad_database_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["omop", "profile", "--db", "mysql://x/y"]) == 2
    assert "unsupported engine 'mysql'" in capsys.readouterr().err
