"""``ehds etl snds`` end to end: loads the partner's mapping file, maps the hand-made extract,
prints the report and writes it as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from ehds.cli.main import main

FIXTURE = Path(__file__).parent / "fixtures" / "snds"


def test_etl_snds_command(
    vocab_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    status = main(
        [
            "etl",
            "snds",
            str(FIXTURE),
            "--db",
            str(vocab_db),
            "--stcm",
            str(FIXTURE / "source_to_concept_map.csv"),
            "--report-json",
            str(report),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "source_to_concept_map: 12 row(s) loaded" in out
    assert json.loads(report.read_text(encoding="utf-8"))
    with duckdb.connect(str(vocab_db), read_only=True) as con:
        row = con.execute(
            "SELECT year_of_birth, gender_concept_id FROM cdm.person "
            "WHERE person_source_value = 'BBBBBBBBBBBBBBBB2|1'"
        ).fetchone()
        assert row == (1962, 8532)
        mapped = con.execute(
            "SELECT count(*) FROM vocab.source_to_concept_map WHERE source_vocabulary_id = 'CCAM'"
        ).fetchone()
        assert mapped == (3,)


def test_etl_snds_command_missing_source(vocab_db: Path, tmp_path: Path) -> None:
    assert main(["etl", "snds", str(tmp_path / "absent"), "--db", str(vocab_db)]) == 2
