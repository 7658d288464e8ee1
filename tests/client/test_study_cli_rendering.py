"""Plain-text rendering of `ehds study` and `ehds admin`: a sample result document as table,
JSON and CSV, aligned columns, and documents this client cannot interpret."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from ehds.analyses.person_count import PersonCount, PersonCountParameters
from ehds.cli.admin_commands import render_nodes
from ehds.cli.study_commands import (
    format_csv,
    format_table,
    progress_text,
    render_list,
    render_results,
    render_status,
)
from ehds.federation.model import (
    AnalysisRef,
    ErrorCode,
    NodeTaskState,
    Study,
    StudyNodeStatus,
    StudySpec,
    StudyState,
)


def _released(counts: dict[tuple[str, str], int | None]) -> dict[str, Any]:
    cells = [
        {"sex": s, "age_band": b, "count": counts.get((s, b), 0),
         "suppressed": counts.get((s, b), 0) is None}
        for s in ("FEMALE", "MALE", "OTHER/UNKNOWN")
        for b in ("0-17", "18-44", "45-64", "65+")
    ]  # fmt: skip
    return {"cells": cells, "min_cell_count": 10}


def sample_document() -> dict[str, Any]:
    """A result document as the coordinator builds it (see the federation contract)."""
    params = PersonCountParameters()
    node_results = {
        "dk": _released({("FEMALE", "0-17"): 310, ("MALE", "65+"): None}),
        "fi": _released({("FEMALE", "0-17"): 205, ("MALE", "65+"): 44}),
    }
    return {
        "study_id": "st-42",
        "analysis": {"name": "person_count", "version": "1.0.0"},
        "min_cell_count": 10,
        "pooled": PersonCount().aggregate(params, node_results),
        "contributors": ["dk", "fi"],
        "nodes": [
            {"node": "dk", "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0 22-JAN-25", "result": node_results["dk"]},
            {"node": "fi", "state": "DONE", "error_code": "", "reason": "",
             "vocabulary_version": "v5.0 30-AUG-24", "result": node_results["fi"]},
            {"node": "fr", "state": "TIMED_OUT", "error_code": "DEADLINE_EXCEEDED",
             "reason": "no result before the deadline", "vocabulary_version": "",
             "result": None},
        ],
    }  # fmt: skip


def test_table_shows_who_contributed_and_the_pooled_cells() -> None:
    text = render_results(sample_document(), "table")
    assert text == (
        "study st-42: person_count 1.0.0, cells under 10 suppressed at each node\n"
        "\n"
        "node  state      error              reason                         vocabulary\n"
        "----  ---------  -----------------  -----------------------------  --------------\n"
        "dk    DONE                                                         v5.0 22-JAN-25\n"
        "fi    DONE                                                         v5.0 30-AUG-24\n"
        "fr    TIMED_OUT  DEADLINE_EXCEEDED  no result before the deadline\n"
        "\n"
        "pooled over: dk, fi\n"
        "sex            age_band  persons  flags\n"
        "-------------  --------  -------  ----------------------------\n"
        "FEMALE         0-17          515\n"
        "FEMALE         18-44           0\n"
        "FEMALE         45-64           0\n"
        "FEMALE         65+             0\n"
        "MALE           0-17            0\n"
        "MALE           18-44           0\n"
        "MALE           45-64           0\n"
        "MALE           65+            44  incomplete: suppressed at dk\n"
        "OTHER/UNKNOWN  0-17            0\n"
        "OTHER/UNKNOWN  18-44           0\n"
        "OTHER/UNKNOWN  45-64           0\n"
        "OTHER/UNKNOWN  65+             0\n"
    )


def test_json_is_the_whole_document() -> None:
    document = sample_document()
    text = render_results(document, "json")
    assert json.loads(text) == document
    assert text.endswith("}\n")


def test_csv_is_the_pooled_table() -> None:
    rows = list(csv.reader(io.StringIO(render_results(sample_document(), "csv"))))
    assert rows[0] == ["sex", "age_band", "persons", "flags"]
    assert rows[1] == ["FEMALE", "0-17", "515", ""]
    assert rows[8] == ["MALE", "65+", "44", "incomplete: suppressed at dk"]
    assert len(rows) == 13


def test_an_analysis_this_client_does_not_know_falls_back_to_json() -> None:
    document = {**sample_document(), "analysis": {"name": "km_survival", "version": "2.0.0"}}
    document["pooled"] = {"curve": [1, 0.9]}
    assert render_results(document, "csv").splitlines() == ["result", '"{""curve"": [1, 0.9]}"']


def test_format_table_aligns_numbers_right_and_text_left() -> None:
    text = format_table(
        ["name", "n", "ok", "note"], [["a", 5, True, "x"], ["long-name", None, False, ""]]
    )
    assert text.splitlines() == [
        "name       n  ok   note",
        "---------  -  ---  ----",
        "a          5  yes  x",
        "long-name  -  no",
    ]


def test_format_csv_quotes_what_needs_quoting() -> None:
    text = format_csv(["a", "b"], [["x,y", None], ['say "hi"', 3]])
    assert text == 'a,b\r\n"x,y",\r\n"say ""hi""",3\r\n'


def _study() -> Study:
    spec = StudySpec("Persons", AnalysisRef("person_count", "1.0.0"), b"{}", 2, 600, ("dk", "fr"))
    when = datetime(2025, 3, 1, 14, 2, 7, tzinfo=UTC)
    return Study(
        id="st-42",
        spec=spec,
        state=StudyState.FAILED,
        state_reason="1 result, fewer than min_nodes 2",
        nodes=(
            StudyNodeStatus("dk", NodeTaskState.RELEASED, vocabulary_version="v5.0"),
            StudyNodeStatus(
                "fr", NodeTaskState.REFUSED, ErrorCode.POLICY_REFUSED, "not allowed", "v5.0"
            ),
        ),
        submitted_by="alice",
        created_at=when,
        updated_at=when,
    )


def test_status_and_list_and_progress() -> None:
    status = render_status(_study())
    assert status.splitlines()[:8] == [
        "study st-42: FAILED",
        "  title         Persons",
        "  analysis      person_count 1.0.0",
        "  submitted     2025-03-01 14:02:07Z by alice",
        "  updated       2025-03-01 14:02:07Z",
        "  targets       dk, fr (at least 2 must contribute)",
        "  deadline      600 s",
        "  reason        1 result, fewer than min_nodes 2",
    ]
    assert "fr    REFUSED   POLICY_REFUSED  not allowed  v5.0" in status
    assert progress_text(_study()) == "FAILED      nodes done 2/2  dk:released fr:refused"
    listing = render_list([_study()]).splitlines()
    assert listing[2].split() == [
        "st-42", "FAILED", "person_count", "1.0.0", "2/2", "2025-03-01", "14:02:07Z", "Persons",
    ]  # fmt: skip
    assert render_list([]) == "(no studies)"
    assert render_nodes([]) == "(no node has connected yet)"
