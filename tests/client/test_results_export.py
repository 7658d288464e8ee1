"""Exports of summarised results by `ehds study results` and the client's table helpers,
on sample result documents (the same code against a coordinator is in
test_client_fake_coordinator.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from ehds.analyses.person_count import PersonCount, PersonCountParameters
from ehds.analyses.results import (
    COLUMNS,
    SummarisedResult,
    label_rows,
    make_row,
    pool_additive,
    suppression_summary,
    validate_node_result,
)
from ehds.cli.study_commands import render_results, suppressed_cells
from ehds.coordinator.client import document_table, export_document
from ehds.core.errors import InputError


def _released(overall: int, female: int | None, male: int | None) -> dict[str, Any]:
    rows = [
        make_row("number subjects", "count", overall, group=("cohort_name", "t2dm")),
        *(
            make_row(
                "number subjects",
                "count",
                value,
                group=("cohort_name", "t2dm"),
                strata=("sex", sex),
                suppressed=value is None,
            )
            for sex, value in (("FEMALE", female), ("MALE", male))
        ),
    ]
    return SummarisedResult(min_cell_count=5, rows=rows).to_json()


def summarised_document() -> dict[str, Any]:
    """A counts-like document: fi suppressed one cell, dk refused."""
    released = {"fi": _released(13, None, None), "fr": _released(50, 20, 30)}
    # fi's two cells are both hidden (complementary suppression keeps 13 = ? + ? safe).
    parsed = {node: validate_node_result("counts 1.0.0", node, r) for node, r in released.items()}
    rows = [row for node in sorted(parsed) for row in label_rows(node, parsed[node])]
    rows += pool_additive(parsed)
    pooled = SummarisedResult(
        min_cell_count=5, rows=rows, suppressed_cells=suppression_summary(parsed)
    ).to_json()
    return {
        "study_id": "st-9",
        "analysis": {"name": "counts", "version": "1.0.0"},
        "min_cell_count": 5,
        "pooled": pooled,
        "contributors": ["fi", "fr"],
        "nodes": [
            {"node": "dk", "state": "REFUSED", "error_code": "DISCLOSURE_REFUSED",
             "reason": "refused by disclosure rule differencing", "vocabulary_version": "",
             "result": None},
            {"node": "fi", "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0", "result": released["fi"]},
            {"node": "fr", "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0", "result": released["fr"]},
        ],
    }  # fmt: skip


def person_count_document() -> dict[str, Any]:
    """A document of an analysis that predates summarised results."""
    cells = [
        {"sex": s, "age_band": b, "count": 20, "suppressed": False}
        for s in ("FEMALE", "MALE", "OTHER/UNKNOWN")
        for b in ("0-17", "18-44", "45-64", "65+")
    ]
    node_results = {"dk": {"cells": cells, "min_cell_count": 10}}
    return {
        "study_id": "st-42",
        "analysis": {"name": "person_count", "version": "1.0.0"},
        "min_cell_count": 10,
        "pooled": PersonCount().aggregate(PersonCountParameters(), node_results),
        "contributors": ["dk"],
        "nodes": [{"node": "dk", "state": "DONE", "result": node_results["dk"]}],
    }


def test_table_shows_nodes_rows_flags_and_suppressions() -> None:
    text = render_results(summarised_document(), "table")
    assert text.startswith("study st-9: counts 1.0.0, cells under 5 suppressed at each node")
    assert "dk    REFUSED  DISCLOSURE_REFUSED" in text
    assert "pooled over: fi, fr" in text
    lines = text.splitlines()
    male = next(line for line in lines if line.startswith("pooled") and "sex=MALE" in line)
    assert male.split()[-6:] == ["30", "lower", "bound", "(suppressed", "at", "fi)"]
    fi_female = next(line for line in lines if line.startswith("fi") and "sex=FEMALE" in line)
    assert fi_female.split()[-1] == "suppressed"
    assert lines[-1] == "2 cells suppressed at fi"


def test_json_is_the_long_table_and_document_the_whole_document() -> None:
    document = summarised_document()
    records = json.loads(render_results(document, "json"))
    assert [r["cdm_name"] for r in records] == ["fi"] * 3 + ["fr"] * 3 + ["pooled"] * 3
    assert {r["result_id"] for r in records} == {"st-9"}
    assert list(records[0]) == list(COLUMNS)
    assert json.loads(render_results(document, "document")) == document


def test_csv_is_the_long_table() -> None:
    records = list(csv.DictReader(io.StringIO(render_results(summarised_document(), "csv"))))
    assert len(records) == 9
    pooled_male = records[-1]
    assert (pooled_male["strata_level"], pooled_male["estimate_value"]) == ("MALE", "30")
    assert (pooled_male["complete"], pooled_male["suppressed_at"]) == ("FALSE", "fi")


def test_parquet_needs_a_file() -> None:
    with pytest.raises(InputError, match=r"-o FILE\.parquet"):
        render_results(summarised_document(), "parquet")


def test_suppressed_cells_come_from_the_aggregate_else_from_the_node_rows() -> None:
    document = summarised_document()
    assert suppressed_cells(document) == {"fi": 2, "fr": 0}
    del document["pooled"]["suppressed_cells"]
    assert suppressed_cells(document) == {"fi": 2, "fr": 0}


def test_document_table_and_export_of_summarised_results(tmp_path: Path) -> None:
    document = summarised_document()
    table = document_table(document)
    assert tuple(table.column_names) == COLUMNS
    assert table.num_rows == 9
    assert set(table.column("cdm_name").to_pylist()) == {"fi", "fr", "pooled"}
    for fmt in ("json", "csv", "parquet"):
        path = export_document(document, tmp_path / f"r.{fmt}", fmt)
        assert path.stat().st_size > 0
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == table.to_pylist()
    assert pa_csv.read_csv(tmp_path / "r.csv").num_rows == 9
    assert len(json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))) == 9


def test_an_analysis_without_summarised_results_exports_its_pooled_table(
    tmp_path: Path,
) -> None:
    document = person_count_document()
    table = document_table(document)
    assert table.column_names == ["result_id", "sex", "age_band", "persons", "flags"]
    assert table.num_rows == 12
    assert set(table.column("result_id").to_pylist()) == {"st-42"}
    export_document(document, tmp_path / "p.parquet", "parquet")
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 12
    export_document(document, tmp_path / "p.json", "json")
    assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))[0]["sex"] == "FEMALE"
    # The CLI's text formats for it are unchanged: json is the whole document.
    assert json.loads(render_results(document, "json")) == document
    with pytest.raises(InputError, match="unknown export format"):
        export_document(document, tmp_path / "p.xlsx", "xlsx")  # type: ignore[arg-type]
