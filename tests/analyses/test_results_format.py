"""The summarised result format: rows, node result validation, pooling, exports, rendering."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ehds.analyses.results import (
    COLUMNS,
    FORMAT,
    InvalidNodeResultError,
    Row,
    SummarisedResult,
    document_rows,
    is_count,
    is_summarised,
    label_rows,
    make_row,
    pool_additive,
    render,
    suppression_line,
    suppression_summary,
    to_arrow,
    to_csv,
    validate_node_result,
    write,
)
from ehds.federation.model import AnalysisRef

REF = AnalysisRef("counts", "1.0.0")


def _node(*rows: Row, threshold: int = 5) -> dict[str, Any]:
    return SummarisedResult(min_cell_count=threshold, rows=list(rows)).to_json()


def _counts(female: int | None, male: int | None, overall: int | None) -> dict[str, Any]:
    return _node(
        make_row("number subjects", "count", overall, suppressed=overall is None),
        make_row(
            "number subjects",
            "count",
            female,
            strata=("sex", "FEMALE"),
            suppressed=female is None,
        ),
        make_row("number subjects", "count", male, strata=("sex", "MALE"), suppressed=male is None),
    )


# --------------------------------------------------------------------------- rows


def test_make_row_uses_omopgenerics_defaults_and_joins_strata() -> None:
    row = make_row(
        "number subjects",
        "count",
        12,
        group=("cohort_name", "t2dm"),
        strata=[("sex", "FEMALE"), ("age_group", "18-44")],
    )
    assert row.to_json() == {
        "cdm_name": "",
        "group_name": "cohort_name",
        "group_level": "t2dm",
        "strata_name": "sex &&& age_group",
        "strata_level": "FEMALE &&& 18-44",
        "variable_name": "number subjects",
        "variable_level": "",
        "estimate_name": "count",
        "estimate_type": "integer",
        "estimate_value": 12,
        "suppressed": False,
    }
    assert Row.model_validate(row.to_json()) == row
    mean = make_row("age", "mean", 51.5)
    assert (mean.estimate_type, mean.strata_name, mean.group_level) == (
        "numeric",
        "overall",
        "overall",
    )


def test_a_row_is_suppressed_exactly_when_its_value_is_null() -> None:
    with pytest.raises(ValueError, match="suppressed exactly when"):
        make_row("number subjects", "count", 3, suppressed=True)
    with pytest.raises(ValueError, match="suppressed exactly when"):
        make_row("number subjects", "count", None)
    assert make_row("number subjects", "count", None, suppressed=True).estimate_type == "integer"


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        make_row("age", "mean", float("nan"))


def test_counts_are_integer_estimates_named_count_events_or_star_count() -> None:
    assert is_count(make_row("number subjects", "count", 10))
    assert is_count(make_row("incidence", "outcome_count", 10))
    assert is_count(make_row("incidence", "events", 10))
    assert not is_count(make_row("age", "sum", 10))
    assert not is_count(make_row("incidence", "person_days", 10))
    assert not is_count(make_row("number subjects", "count", 10.0, estimate_type="numeric"))


# --------------------------------------------------------------------------- node results


def test_a_well_formed_node_result_validates() -> None:
    parsed = validate_node_result(REF, "fi", _counts(10, None, 13), min_cell_count=5)
    assert parsed.min_cell_count == 5
    assert [r.estimate_value for r in parsed.rows] == [13, 10, None]
    assert is_summarised(_counts(10, 0, 10))
    assert not is_summarised({"cells": []})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["rows"][0].update(estimate_value=3), "breaks the node's disclosure rule"),
        (lambda d: d["rows"][0].update(estimate_value=-1), "breaks the node's disclosure rule"),
        (lambda d: d["rows"][2].update(estimate_value=42), "suppressed and a null value"),
        (lambda d: d["rows"][0].update(suppressed=True), "suppressed and a null value"),
        (lambda d: d["rows"][0].update(cdm_name="fi"), "a node row has no cdm_name"),
        (lambda d: d["rows"][0].update(complete=True), "a node row has no cdm_name"),
        (lambda d: d["rows"].append(dict(d["rows"][0])), "the same estimate occurs twice"),
        (lambda d: d["rows"][0].update(secret=1), "malformed at rows.0.secret"),
        (lambda d: d.update(format="other/1"), "malformed at format"),
        (lambda d: d.update(min_cell_count=0), "malformed at min_cell_count"),
        (lambda d: d.update(suppressed_cells={"fi": 1}), "belongs to pooled results"),
        (lambda d: d["rows"][0].update(estimate_value=12.5), "whole number"),
    ],
)
def test_a_node_result_that_breaks_the_format_or_the_rule_is_refused(
    mutate: Any, message: str
) -> None:
    document = _counts(10, None, 13)
    mutate(document)
    with pytest.raises(InvalidNodeResultError, match=message) as caught:
        validate_node_result(REF, "fi", document)
    assert "counts 1.0.0" in str(caught.value) or "counts" in str(caught.value)
    assert "'fi'" in str(caught.value)


def test_the_message_never_echoes_a_value() -> None:
    document = _counts(10, None, 13)
    document["rows"][0]["estimate_value"] = 3
    with pytest.raises(InvalidNodeResultError) as caught:
        validate_node_result(REF, "fi", document)
    assert " 3" not in str(caught.value).replace("min_cell_count 5", "")


def test_a_small_non_count_is_not_a_disclosure_breach() -> None:
    document = _node(make_row("age", "sum", 3), make_row("age", "sum_squares", 2))
    assert len(validate_node_result(REF, "fi", document).rows) == 2


def test_a_node_threshold_below_the_studys_is_refused() -> None:
    with pytest.raises(InvalidNodeResultError, match="below the study's 10"):
        validate_node_result(REF, "fi", _counts(10, 0, 10), min_cell_count=10)


# --------------------------------------------------------------------------- pooling


def _results(**documents: dict[str, Any]) -> dict[str, SummarisedResult]:
    return {node: validate_node_result(REF, node, doc) for node, doc in documents.items()}


def test_pooling_sums_released_counts_and_flags_suppressed_nodes() -> None:
    results = _results(fr=_counts(20, 30, 50), fi=_counts(10, None, 13), dk=_counts(7, 8, 15))
    pooled = {r.strata_level: r for r in pool_additive(results)}
    assert pooled["overall"].estimate_value == 78
    assert pooled["overall"].complete is True
    assert pooled["overall"].suppressed_at == []
    assert pooled["FEMALE"].estimate_value == 37
    male = pooled["MALE"]
    assert (male.estimate_value, male.complete, male.suppressed_at) == (38, False, ["fi"])
    assert not male.suppressed
    assert {r.cdm_name for r in pooled.values()} == {"pooled"}
    assert suppression_summary(results) == {"dk": 0, "fi": 1, "fr": 0}


def test_a_cell_no_node_released_stays_suppressed_when_pooled() -> None:
    results = _results(a=_counts(10, None, 13), b=_counts(10, None, 12))
    male = next(r for r in pool_additive(results) if r.strata_level == "MALE")
    assert (male.estimate_value, male.suppressed, male.complete) == (None, True, False)
    assert male.suppressed_at == ["a", "b"]


def test_a_key_absent_at_a_node_is_unknown_unless_said_to_be_zero() -> None:
    a = _node(make_row("condition_occurrence", "count", 40, variable_level="320128"))
    b = _node(make_row("condition_occurrence", "count", 25, variable_level="201826"))
    results = _results(a=a, b=b)
    rows = pool_additive(results)
    assert [(r.variable_level, r.estimate_value, r.suppressed_at) for r in rows] == [
        ("320128", 40, ["b"]),
        ("201826", 25, ["a"]),
    ]
    zero = pool_additive(results, absent_is_zero=lambda node, key: node == "a")
    assert [(r.estimate_value, r.complete) for r in zero] == [(40, False), (25, True)]
    assert all(r.complete for r in pool_additive(results, absent_is_zero=True))


def test_pooling_selects_rows_and_refuses_mixed_types() -> None:
    a = _node(make_row("age", "sum", 300), make_row("age", "mean", 30.0))
    b = _node(make_row("age", "sum", 200), make_row("age", "mean", 40.0))
    rows = pool_additive(_results(a=a, b=b), select=lambda r: r.estimate_name == "sum")
    assert [(r.estimate_name, r.estimate_value) for r in rows] == [("sum", 500)]
    c = _node(make_row("age", "sum", 2.5, estimate_type="numeric"))
    with pytest.raises(InvalidNodeResultError, match="another type"):
        pool_additive(_results(a=a, c=c))


def test_label_rows_names_the_node() -> None:
    result = validate_node_result(REF, "fi", _counts(10, 0, 10))
    assert {r.cdm_name for r in label_rows("fi", result)} == {"fi"}


def test_suppression_line() -> None:
    assert suppression_line({"fi": 3, "dk": 1, "fr": 0}) == "3 cells suppressed at fi, 1 cell at dk"
    assert suppression_line({"fi": 0}) == "no cell suppressed"


# --------------------------------------------------------------------------- documents


def _aggregate_document() -> dict[str, Any]:
    results = _results(fi=_counts(10, None, 13), fr=_counts(20, 30, 50))
    pooled = SummarisedResult(
        min_cell_count=5,
        rows=[*label_rows("fi", results["fi"]), *pool_additive(results)],
        suppressed_cells=suppression_summary(results),
    ).to_json()
    return {
        "study_id": "st-7",
        "analysis": {"name": "counts", "version": "1.0.0"},
        "min_cell_count": 5,
        "pooled": pooled,
        "contributors": ["fi", "fr"],
        "nodes": [
            {"node": "fi", "state": "DONE", "result": _counts(10, None, 13)},
            {"node": "fr", "state": "DONE", "result": _counts(20, 30, 50)},
            {"node": "dk", "state": "REFUSED", "result": None},
        ],
    }


def test_document_rows_adds_node_rows_the_aggregate_left_out() -> None:
    rows = document_rows(_aggregate_document())
    assert [r.cdm_name for r in rows] == ["fi"] * 3 + ["pooled"] * 3 + ["fr"] * 3
    assert document_rows({"pooled": {"cells": []}, "nodes": []}) == []


# --------------------------------------------------------------------------- exports


def test_arrow_table_has_every_column_and_nulls_where_not_applicable() -> None:
    rows = document_rows(_aggregate_document())
    table = to_arrow(rows, result_id="st-7")
    assert tuple(table.column_names) == COLUMNS
    data = table.to_pylist()
    assert data[0]["result_id"] == "st-7"
    fi_male = data[2]
    assert (fi_male["estimate_value"], fi_male["suppressed"], fi_male["complete"]) == (
        None,
        True,
        None,
    )
    pooled_male = data[5]
    assert pooled_male["estimate_value"] == 30.0
    assert (pooled_male["complete"], pooled_male["suppressed_at"]) == (False, ["fi"])
    assert tuple(to_arrow(rows).column_names) == COLUMNS[1:]


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_write_round_trips_every_format(fmt: Any, tmp_path: Path) -> None:
    rows = document_rows(_aggregate_document())
    path = write(rows, tmp_path / f"result.{fmt}", fmt, result_id="st-7")
    if fmt == "parquet":
        records = pq.read_table(path).to_pylist()
        assert records == to_arrow(rows, result_id="st-7").to_pylist()
        return
    text = path.read_text(encoding="utf-8")
    if fmt == "json":
        records = json.loads(text)
        assert records[5]["estimate_value"] == 30
        assert records[5]["suppressed_at"] == ["fi"]
        assert records[2]["estimate_value"] is None
    else:
        records = list(csv.DictReader(io.StringIO(text)))
        assert list(records[0]) == list(COLUMNS)
        assert records[5]["estimate_value"] == "30"
        assert (records[5]["complete"], records[5]["suppressed_at"]) == ("FALSE", "fi")
        assert (records[2]["estimate_value"], records[2]["suppressed"]) == ("", "TRUE")
    assert {r["result_id"] for r in records} == {"st-7"}


def test_csv_keeps_integers_and_floats_apart() -> None:
    text = to_csv([make_row("age", "mean", 51.25), make_row("age", "sum", 205)])
    values = [r["estimate_value"] for r in csv.DictReader(io.StringIO(text))]
    assert values == ["51.25", "205"]


def test_render_shows_flags_and_the_suppression_line() -> None:
    document = _aggregate_document()
    text = render(document_rows(document), {"fi": 3, "fr": 0})
    lines = text.splitlines()
    assert lines[0].split() == [
        "cdm_name",
        "group",
        "strata",
        "variable",
        "estimate",
        "value",
        "flags",
    ]
    male = [line for line in lines if line.startswith("pooled") and "sex=MALE" in line]
    assert male
    assert male[0].rstrip().endswith("lower bound (suppressed at fi)")
    assert any("suppressed" in line and line.startswith("fi") for line in lines)
    assert lines[-1] == "3 cells suppressed at fi"


def test_render_formats_numbers_by_type() -> None:
    text = render(
        [
            make_row("age", "mean", 51.2345),
            make_row("sex", "percentage", 48.123, estimate_type="percentage"),
            make_row("number subjects", "count", 12345),
        ]
    )
    assert "51.23" in text
    assert "48.12%" in text
    assert "12,345" in text


def test_format_tag() -> None:
    assert FORMAT == "ehds-summarised-result/1"
    assert SummarisedResult(min_cell_count=5, rows=[]).to_json()["format"] == FORMAT


def test_render_of_no_rows_is_the_header() -> None:
    assert render([]).splitlines()[0].split()[0] == "cdm_name"
