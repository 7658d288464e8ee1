"""``EtlReport``: the text table and the JSON an operator (or the lead's demo) reads."""

from __future__ import annotations

import json

from ehds.connectors.report import (
    ConceptCounts,
    EtlReport,
    SourceCounts,
    TableCounts,
    UnmappedCode,
)


def make_report() -> EtlReport:
    report = EtlReport(7, "fhir", "bulk/", "duckdb:///x.duckdb", "replace", seconds=1.25)
    report.sources["Condition"] = SourceCounts(read=10, rejected={"fhir.invalid_json": 1})
    report.tables["condition_occurrence"] = TableCounts(
        staged=9,
        written=8,
        rejected={"fk.person_missing": 1},
        fk_unresolved={"fk.visit_missing": 2},
    )
    report.concepts.append(
        ConceptCounts(
            "condition_occurrence",
            "condition_concept_id",
            8,
            6,
            [UnmappedCode("SNOMED", "123", 2)],
        )
    )
    return report


def test_render() -> None:
    text = make_report().render()
    assert text.splitlines()[0] == "ETL run 7: fhir (replace) bulk/ -> duckdb:///x.duckdb"
    assert "8 rows written, 2 rejected in 1.2 s" in text
    assert "Condition      10         1  fhir.invalid_json 1" in text
    assert "fk.person_missing 1, fk.visit_missing (NULL) 2" in text
    assert "condition_occurrence.condition_concept_id          8       6  25.0" in text
    assert "top unmapped condition_occurrence.condition_concept_id: SNOMED:123 (2)" in text


def test_json_round_trips() -> None:
    data = json.loads(json.dumps(make_report().to_json()))
    assert data["run_id"] == 7
    assert data["tables"]["condition_occurrence"]["fk_unresolved"] == {"fk.visit_missing": 2}
    assert data["concepts"][0]["unmapped_rate"] == 0.25
    assert data["concepts"][0]["top_unmapped"] == [
        {"vocabulary_id": "SNOMED", "code": "123", "rows": 2}
    ]
