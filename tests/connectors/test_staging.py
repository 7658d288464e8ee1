"""The staging area: typed staged schemas, parts, rejections, counts, worker processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehds.connectors import staging
from ehds.connectors.rejection import REJECTION_SCHEMA, Rejection
from ehds.connectors.staging import StagingArea, StagingError, staged_schema


def test_staged_schema_of_condition_occurrence() -> None:
    schema = staged_schema("condition_occurrence")
    names = schema.names
    assert names[:2] == ["_key", "_source"]
    assert "condition_occurrence_id" not in names
    assert schema.field("condition_start_date").type == pa.date32()
    assert schema.field("condition_start_datetime").type == pa.timestamp("us")
    assert schema.field("person_id").type == pa.int32()
    for extra in (
        "person_id__key",
        "visit_occurrence_id__key",
        "provider_id__key",
        "condition_concept_id__vocab",
        "condition_concept_id__code",
    ):
        assert schema.field(extra).type == pa.string()
    assert "condition_source_concept_id__code" not in names
    assert "person_id" in staged_schema("death").names  # no id column to drop
    assert "person_id__key" not in staged_schema("person").names


def test_unknown_table_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="'persons' is not an OMOP CDM"):
        StagingArea(tmp_path).writer("0").add("persons", {"_key": "x"})


def stage_rows(root: Path, part: str, n: int) -> None:
    with StagingArea(root).writer(part) as writer:
        for i in range(n):
            writer.add("person", {"_key": f"P/{part}/{i}", "year_of_birth": 1900 + i % 100})
            writer.count_read("Patient")
        writer.reject(Rejection("f", "f:1", "Patient", None, "fhir.invalid_json", "not JSON"))


def test_parts_flush_counts_and_rejections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "FLUSH_ROWS", 4)
    area = StagingArea(tmp_path)
    stage_rows(tmp_path, "a", 10)
    assert [p.name for p in area.parts("person")] == [
        "part-a-00000.parquet",
        "part-a-00001.parquet",
        "part-a-00002.parquet",
    ]
    assert sum(pq.read_metadata(p).num_rows for p in area.parts("person")) == 10
    assert area.tables() == ["person"]
    assert area.read_counts() == {"Patient": 10}
    [quarantine] = area.parts("_quarantine")
    assert pq.read_schema(quarantine) == REJECTION_SCHEMA


def test_writers_in_worker_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        pool.starmap(stage_rows, [(tmp_path, "w1", 3), (tmp_path, "w2", 5)])
    area = StagingArea(tmp_path)
    assert area.read_counts() == {"Patient": 8}
    assert len(area.parts("_quarantine")) == 2


def test_unknown_column_and_wrong_type_name_the_column_not_the_value(tmp_path: Path) -> None:
    writer = StagingArea(tmp_path).writer("0")
    writer.add("person", {"_key": "P/1", "year_of_brith": 1970})
    with pytest.raises(StagingError, match="column 'year_of_brith' is not a staged column"):
        writer.close()
    writer = StagingArea(tmp_path).writer("1")
    writer.add("person", {"_key": "P/1", "year_of_birth": "secret-1970"})
    with pytest.raises(StagingError) as raised:
        writer.close()
    assert "column 'year_of_birth', expected int32" in str(raised.value)
    assert "secret" not in str(raised.value)
    writer = StagingArea(tmp_path).writer("2")
    writer.add("person", {"year_of_birth": 1970})
    with pytest.raises(StagingError, match="a row has no _key"):
        writer.close()


def test_add_parquet_checks_names_and_casts(tmp_path: Path) -> None:
    area = StagingArea(tmp_path / "stage")
    made = tmp_path / "made.parquet"
    pq.write_table(
        pa.table(
            {
                "_key": ["C/1"],
                "condition_start_date": ["2020-01-02"],
                "person_id__key": ["P/1"],
            }
        ),
        made,
    )
    staged = area.add_parquet("condition_occurrence", made, part="sql")
    assert staged == area.root / "condition_occurrence" / "part-sql.parquet"
    table = pq.read_table(staged)
    assert table.schema.field("condition_start_date").type == pa.date32()
    assert table.column("condition_start_date").to_pylist() == [dt.date(2020, 1, 2)]
    with pytest.raises(StagingError, match="column 'condition_date' is not a staged column"):
        area.add_parquet("condition_occurrence", pa.table({"_key": ["C/1"], "condition_date": [1]}))
    with pytest.raises(StagingError, match="required column '_key' is missing"):
        area.add_parquet("condition_occurrence", pa.table({"person_id__key": ["P/1"]}))
    with pytest.raises(StagingError, match="column 'year_of_birth': values do not convert"):
        area.add_parquet("person", pa.table({"_key": ["P/1"], "year_of_birth": ["x"]}))
    rejections = pa.table(
        {
            "source": ["f"],
            "location": ["f:1"],
            "record_type": ["T"],
            "reason": ["csv.invalid_value"],
            "detail": ["column x"],
        }
    )
    area.add_parquet("_quarantine", rejections)
    assert len(area.parts("_quarantine")) == 1
