"""The declarative CSV/Parquet mapping as a Spark job (local[2]): the example hospital extract
(``fixtures/mapping``, with its Parquet source and a local code the partner maps through
``source_to_concept_map``) gives the same OMOP rows, with the same ids, as the embedded DuckDB
run; ``ehds etl spark csv`` runs it from the command line.

One SparkSession for the module; skipped without Java 17+, except in CI (CI=true).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from ehds.cli.main import main
from ehds.connectors.connector import run_connector
from ehds.connectors.mapping import MappingConnector, load_mapping
from ehds.connectors.report import EtlReport
from ehds.omop.database import CdmDatabase
from etl_fixtures import db_rows, layout_rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example extract, with its Parquet source made from labs.csv."""
    folder = tmp_path_factory.mktemp("spark-csv") / "extract"
    shutil.copytree(FIXTURES, folder)
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * FROM read_csv('{folder / 'labs.csv'}', types = "
            "{'lab_id': 'BIGINT', 'value': 'VARCHAR', 'taken_at': 'TIMESTAMP'})) "
            f"TO '{folder / 'labs.parquet'}' (FORMAT parquet)"
        )
    return folder / "hospital.yaml"


@pytest.fixture(scope="module")
def vocab(synthea_vocab_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vocabulary plus the partner's own mapping of its local diagnosis code."""
    db = tmp_path_factory.mktemp("spark-csv-vocab") / synthea_vocab_db.name
    shutil.copyfile(synthea_vocab_db, db)
    with duckdb.connect(str(db)) as con:
        con.execute(
            "INSERT INTO vocab.source_to_concept_map (source_code, source_concept_id, "
            "source_vocabulary_id, source_code_description, target_concept_id, "
            "target_vocabulary_id, valid_start_date, valid_end_date, invalid_reason) VALUES "
            "('HX-PSA', 0, 'HOSPX-DX', 'local: pseudomonas infection', 4008261, 'SNOMED', "
            "DATE '2000-01-01', DATE '2099-12-31', NULL)"
        )
    return db


@pytest.fixture(scope="module")
def duck(
    extract: Path, vocab: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, EtlReport]:
    db = tmp_path_factory.mktemp("spark-csv-duck") / vocab.name
    shutil.copyfile(vocab, db)
    report = run_connector(MappingConnector(load_mapping(extract)), CdmDatabase.parse(str(db)))
    return db, report


@pytest.fixture(scope="module")
def layout(
    spark: object, extract: Path, vocab: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, object]]:
    """The job run by ``ehds etl spark csv`` (in this module's SparkSession), and its report."""
    folder = tmp_path_factory.mktemp("spark-csv-out")
    root, report = folder / "layout", folder / "report.json"
    code = main(
        ["etl", "spark", "csv", str(extract), "--out", str(root), "--vocab", str(vocab),
         "--report-json", str(report), "--work-dir", str(folder / "work")]
    )  # fmt: skip
    assert code == 0
    return root, json.loads(report.read_text(encoding="utf-8"))


def test_same_rows_and_ids_as_the_duckdb_run(
    layout: tuple[Path, dict[str, object]], duck: tuple[Path, EtlReport], extract: Path
) -> None:
    tables = load_mapping(extract).table_names()
    assert "condition_occurrence" in tables
    for table in tables:
        expected = db_rows(duck[0], table)
        assert layout_rows(layout[0], table) == expected, table
    assert db_rows(duck[0], "person")


def test_report_counts_match(
    layout: tuple[Path, dict[str, object]], duck: tuple[Path, EtlReport]
) -> None:
    spark_report, duck_report = layout[1], duck[1].to_json()
    for key in ("sources", "tables", "concepts", "routed"):
        assert spark_report[key] == duck_report[key], key


def test_local_code_mapped_through_source_to_concept_map(
    layout: tuple[Path, dict[str, object]],
) -> None:
    rows = layout_rows(layout[0], "condition_occurrence")
    assert any(row[2] == 4008261 for row in rows)  # condition_concept_id of HX-PSA
