"""SNDS extract discovery and loading: year-suffixed PMSI names, Parquet input, errors that
name the file and column, and the 10-row synthetic tables of the Health Data Hub (incoherent
on purpose) staged without a crash, every rejected row with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from ehds.connectors.rejection import QUARANTINE_DIR
from ehds.connectors.snds import SndsConnector
from ehds.connectors.snds.sources import SndsSourceError, discover
from ehds.connectors.snds.stcm import StcmError, read_stcm
from ehds.connectors.staging import StagingArea

FIXTURE = Path(__file__).parent / "fixtures" / "snds"


def _count(area: StagingArea, table: str, where: str = "true") -> int:
    files = [str(p) for p in area.parts(table)]
    row = duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r}) WHERE {where}").fetchone()
    return int(row[0]) if row else 0


def test_discover_reads_year_suffixes_and_ignores_other_files() -> None:
    found = discover(FIXTURE)
    assert [f.year for f in found["T_MCOaaB"]] == ["20"]
    assert [f.relative for f in found["ER_PRS_F"]] == ["DCIR/ER_PRS_F.csv"]
    assert found["IR_BEN_R"][0].relative == "IR_BEN_R.csv"


def test_missing_beneficiary_table_is_an_error(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "PMSI", tmp_path / "PMSI")
    with pytest.raises(SndsSourceError, match="no IR_BEN_R file"):
        discover(tmp_path)


def test_same_table_twice_is_an_error(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "IR_BEN_R.csv", tmp_path / "IR_BEN_R.csv")
    duckdb.sql(
        f"COPY (SELECT * FROM read_csv('{FIXTURE / 'IR_BEN_R.csv'}', all_varchar = true)) "
        f"TO '{tmp_path / 'IR_BEN_R.parquet'}' (FORMAT parquet)"
    )
    with pytest.raises(SndsSourceError, match="both hold table IR_BEN_R"):
        discover(tmp_path)


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "IR_BEN_R.csv").write_text(
        "BEN_NIR_PSA,BEN_RNG_GEM,BEN_SEX_COD\nAAAAAAAAAAAAAAAA1,1,1\n", encoding="utf-8"
    )
    with pytest.raises(SndsSourceError, match=r"IR_BEN_R\.csv .*missing column\(s\) BEN_NAI_ANN"):
        SndsConnector(tmp_path).stage(StagingArea(tmp_path / "stage"))


def test_parquet_extract_stages_like_csv(tmp_path: Path) -> None:
    source = tmp_path / "parquet"
    for csv in FIXTURE.rglob("*.csv"):
        if csv.name == "source_to_concept_map.csv":
            continue
        target = source / csv.relative_to(FIXTURE).with_suffix(".parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Typed columns (dates, integers) as a real Parquet extract would have them.
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{target}' (FORMAT parquet)")
    from_csv = StagingArea(tmp_path / "csv-stage")
    from_parquet = StagingArea(tmp_path / "parquet-stage")
    SndsConnector(FIXTURE).stage(from_csv)
    SndsConnector(source).stage(from_parquet)
    assert from_parquet.tables() == from_csv.tables()
    for table in from_csv.tables():
        csv_keys = duckdb.sql(
            f"SELECT _key FROM read_parquet({[str(p) for p in from_csv.parts(table)]!r}) ORDER BY 1"
        ).fetchall()
        parquet_keys = duckdb.sql(
            f"SELECT _key FROM read_parquet({[str(p) for p in from_parquet.parts(table)]!r}) "
            "ORDER BY 1"
        ).fetchall()
        assert parquet_keys == csv_keys, table
    assert _count(from_parquet, QUARANTINE_DIR) == _count(from_csv, QUARANTINE_DIR)


def test_synthetic_snds_tables_stage_with_reasons(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "synthetic-snds" / "schemas"
    if not source.is_dir():
        pytest.skip(f"synthetic SNDS tables not found at {source}")
    area = StagingArea(tmp_path / "stage")
    SndsConnector(source).stage(area)
    read = area.read_counts()
    assert (read["IR_BEN_R"], read["T_MCOaaB"], read["ER_PRS_F"]) == (10, 10, 10)
    staged_persons = _count(area, "person")
    rejected_persons = _count(area, QUARANTINE_DIR, "record_type = 'IR_BEN_R'")
    assert staged_persons + rejected_persons == 10
    # Every PMSI stay of the synthetic data fails the SNDS quality rules (random return codes,
    # missing patient links): each is rejected with its reason, none is lost.
    stays = _count(area, "visit_occurrence", "_key LIKE 'T_MCO%'")
    rejected_stays = _count(area, QUARANTINE_DIR, "record_type = 'T_MCOaaB'")
    assert stays + rejected_stays == 10
    parts = [str(p) for p in area.parts(QUARANTINE_DIR)]
    reasons = duckdb.sql(f"SELECT DISTINCT reason FROM read_parquet({parts!r})").fetchall()
    assert all(str(r[0]).startswith("snds.") for r in reasons)
    assert _count(area, QUARANTINE_DIR, "detail IS NULL OR detail = ''") == 0


def test_stcm_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "stcm.csv"
    path.write_text(
        "source_code,source_vocabulary_id,target_concept_id,target_vocabulary_id\n"
        "I10,CIM10,320128,SNOMED\nE11,CIM10,x,SNOMED\n",
        encoding="utf-8",
    )
    with pytest.raises(StcmError, match=r"stcm\.csv:3: target_concept_id: not an integer"):
        read_stcm(path)
    path.write_text("source_code,target_concept_id\nI10,1\n", encoding="utf-8")
    with pytest.raises(StcmError, match="missing column"):
        read_stcm(path)
