"""The FHIR connector as a Spark job (local[2]): the Synthea sample plus this folder's FHIR
fixtures (an Observation NDJSON with a malformed line and an invalid resource, a Bundle) give
the same OMOP rows, with the same ids, as the embedded DuckDB connector; the layout is typed
as the models, loads with ``ehds omop load --from``, and holds the quarantine and the report.
The Spark job runs through ``ehds etl spark fhir`` itself.

One SparkSession for the module (starting one costs seconds); skipped without Java 17+,
except in CI (CI=true), where that fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehds.cli.main import main
from ehds.connectors.connector import run_connector
from ehds.connectors.fhir.connector import FhirConnector
from ehds.connectors.fhir.mappers import TABLES
from ehds.connectors.report import EtlReport
from ehds.omop.database import CdmDatabase
from ehds.omop.parquet_layout import is_layout, table_files
from etl_fixtures import db_rows, layout_rows

pytestmark = [
    pytest.mark.slow,
    # PySpark 4.0 leaves the socket of each collected result to the garbage collector.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
PATIENT = "Patient/6a4160eb-a793-2f86-2302-378626f46cce"
ID_OFFSET = 1000
"""Both runs number ids above it: the ids compared test the offset too."""


@pytest.fixture(scope="module")
def sources(shared_data: Path) -> list[Path]:
    return [shared_data / "fhir-synthea-10", FIXTURES]


@pytest.fixture(scope="module")
def duck(
    synthea_vocab_db: Path, sources: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, EtlReport]:
    """The embedded connector's CDM (a copy of the vocabulary database) and its report."""
    db = tmp_path_factory.mktemp("spark-fhir-duck") / synthea_vocab_db.name
    shutil.copyfile(synthea_vocab_db, db)
    connector = FhirConnector(sources, workers=1)
    report = run_connector(connector, CdmDatabase.parse(str(db)), id_offset=ID_OFFSET)
    return db, report


@pytest.fixture(scope="module")
def layout(
    spark: object,
    synthea_vocab_db: Path,
    sources: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Any]]:
    """The job run by ``ehds etl spark fhir`` (in this module's SparkSession), and its report."""
    folder = tmp_path_factory.mktemp("spark-fhir")
    root, report = folder / "layout", folder / "report.json"
    code = main(
        ["etl", "spark", "fhir", *map(str, sources), "--out", str(root),
         "--vocab", str(synthea_vocab_db), "--id-offset", str(ID_OFFSET),
         "--report-json", str(report), "--work-dir", str(folder / "work")]
    )  # fmt: skip
    assert code == 0
    assert not any((folder / "work").iterdir()), "the scratch folder is removed"
    return root, json.loads(report.read_text(encoding="utf-8"))


@pytest.mark.parametrize("table", TABLES)
def test_same_rows_and_ids_as_the_duckdb_connector(
    table: str, layout: tuple[Path, dict[str, Any]], duck: tuple[Path, EtlReport]
) -> None:
    expected = db_rows(duck[0], table)
    assert layout_rows(layout[0], table) == expected


def test_sample_is_not_trivial(duck: tuple[Path, EtlReport]) -> None:
    """The comparison above compares real rows: every table the sample feeds has some."""
    for table in (
        "person",
        "visit_occurrence",
        "condition_occurrence",
        "drug_exposure",
        "procedure_occurrence",
        "measurement",
        "observation_period",
        "death",
    ):
        assert db_rows(duck[0], table), table


def test_report_counts_match(
    layout: tuple[Path, dict[str, Any]], duck: tuple[Path, EtlReport]
) -> None:
    spark_report, duck_report = layout[1], duck[1].to_json()
    for key in ("sources", "tables", "concepts", "routed"):
        assert spark_report[key] == duck_report[key], key
    assert spark_report["sources"]["Patient"]["read"] == 13 + 1  # the sample's, the Bundle's
    assert spark_report["sources"]["unknown"]["rejected"]  # the malformed line


def test_quarantine_matches(
    layout: tuple[Path, dict[str, Any]], duck: tuple[Path, EtlReport]
) -> None:
    root = layout[0]
    folder = root / "_etl" / "quarantine"
    spark_rows = pq.read_table(sorted(folder.glob("*.parquet"))).to_pylist()
    with duckdb.connect(str(duck[0]), read_only=True) as con:
        duck_rows = con.execute(
            "SELECT omop_table, location, record_type, record_key, reason, detail "
            "FROM etl.quarantine ORDER BY ALL"
        ).fetchall()
    columns = ("omop_table", "location", "record_type", "record_key", "reason", "detail")
    got = sorted(tuple(r[c] for c in columns) for r in spark_rows)
    assert got == sorted(tuple(r) for r in duck_rows)
    assert {r["reason"] for r in spark_rows} >= {"fhir.invalid_json", "fhir.invalid_resource"}
    assert all(r["run_id"] == layout[1]["run_id"] for r in spark_rows)


def test_layout_is_typed_as_the_models(layout: tuple[Path, dict[str, Any]]) -> None:
    root = layout[0]
    assert is_layout(root)
    person = pq.read_schema(table_files(root, "person")[0])
    assert person.field("person_id").type == pa.int32()
    assert person.field("birth_datetime").type == pa.timestamp("us")
    condition = pq.read_schema(table_files(root, "condition_occurrence")[0])
    assert condition.field("condition_start_date").type == pa.date32()
    assert condition.names[0] == "condition_occurrence_id"
    assert "_key" not in condition.names
    assert table_files(root, "concept"), "the vocabulary is copied into the layout"
    report = json.loads((root / "_etl" / "report.json").read_text(encoding="utf-8"))
    assert report == layout[1]


def test_a_patient_as_in_the_source(layout: tuple[Path, dict[str, Any]]) -> None:
    rows = [r for r in layout_rows(layout[0], "person") if r[11] == PATIENT.split("/")[1]]
    assert len(rows) == 1
    ids = sorted(int(str(r[0])) for r in layout_rows(layout[0], "person"))
    assert ids == list(range(ID_OFFSET + 1, ID_OFFSET + 15))  # 14 persons, above the offset
    assert rows[0][1:4] == (8532, 1963, 7)  # female, born 1963-07


def test_loads_with_omop_load(layout: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    target = tmp_path / "loaded.duckdb"
    assert main(["omop", "load", "--from", str(layout[0]), "--db", str(target)]) == 0
    assert db_rows(target, "person") == layout_rows(layout[0], "person")
    with duckdb.connect(str(target), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM vocab.concept").fetchone()
    assert row is not None
    assert row[0] > 0
