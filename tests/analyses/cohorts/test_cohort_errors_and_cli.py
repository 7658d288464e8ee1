"""Bad YAML cohorts give errors naming the field; CohortSpec in analysis parameters;
fingerprints; the ``ehds cohort`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ehds.analyses.base import AnalysisParameters
from ehds.analyses.cohorts import (
    CohortDefinitionError,
    CohortSpec,
    fingerprint,
    load_cohort_file,
    make_spec,
)
from ehds.cli.main import main as cli_main

GI_BLEED = Path(__file__).parent / "fixtures" / "gi_bleed.json"

VALID: dict[str, Any] = {
    "concept_sets": {"t2dm": {"include": [{"concept": 201826, "descendants": True}]}},
    "entry": {"events": [{"condition": "t2dm"}]},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    """VALID with ``value`` set at a dotted ``path`` (list indices as numbers)."""
    import copy

    document = copy.deepcopy(VALID)
    node: Any = document
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value
    return document


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (with_("entry.events", [{"condition": "t2dm", "drug": "t2dm"}]), "entry.events.0"),
        (with_("entry.events", [{"conditon": "t2dm"}]), "entry.events.0.conditon"),
        (with_("entry.events", [{"condition": "unknown set"}]), "entry.events.0.condition"),
        (with_("entry.prior_observation_days", -1), "entry.prior_observation_days"),
        (with_("entry.prior_observation_days", "365"), "entry.prior_observation_days"),
        (with_("entry.events_per_person", "last"), "entry.events_per_person"),
        (with_("entry.events", [{"condition": "t2dm", "value": {"min": 1}}]), "entry.events.0"),
        (with_("concept_sets.t2dm.include", []), "concept_sets.t2dm.include"),
        (with_("concept_sets.t2dm.include", [{"concept": "201826"}]), "include.0.concept"),
        (with_("concept_sets.t2dm.exclude", [{"concep": 1}]), "exclude.0.concep"),
        (
            with_("inclusion", [{"name": "x", "drug": "t2dm", "window": {"from": 5, "to": 1}}]),
            "inclusion.0.window",
        ),
        (
            with_("inclusion", [{"name": "x", "drug": "t2dm", "at_least": 1, "exactly": 0}]),
            "inclusion.0",
        ),
        (with_("inclusion", [{"drug": "t2dm"}]), "inclusion.0.name"),
        (with_("demographics", {"sex": ["woman"]}), "demographics.sex.0"),
        (with_("demographics", {"age": {"min": 80, "max": 18}}), "demographics.age"),
        (with_("exit", {"days_after_start": 30, "end_of_observation": True}), "exit"),
        (with_("exit", {"on_events": [{"drug": "nope"}]}), "exit.on_events.0.drug"),
        (with_("exitt", {}), "exitt"),
    ],
)
def test_bad_yaml_names_the_field(document: dict[str, Any], path: str) -> None:
    with pytest.raises(CohortDefinitionError) as raised:
        make_spec("bad", yaml=document)
    assert path in str(raised.value)


def test_spec_needs_exactly_one_definition() -> None:
    with pytest.raises(CohortDefinitionError, match="exactly one of yaml, circe"):
        make_spec("none")
    with pytest.raises(ValidationError, match="exactly one of yaml, circe"):
        CohortSpec(name="both", yaml=VALID, circe={})


class _Params(AnalysisParameters):
    cohort: CohortSpec | None = None


def test_spec_inside_analysis_parameters_is_validated() -> None:
    params = _Params.model_validate({"cohort": {"name": "t2dm", "yaml": VALID}})
    assert params.cohort is not None
    assert params.cohort.name == "t2dm"
    with pytest.raises(ValidationError) as raised:
        _Params.model_validate({"cohort": {"name": "t2dm", "yaml": with_("entry", {})}})
    assert "entry.events" in str(raised.value)
    with pytest.raises(ValidationError, match="extra"):
        _Params.model_validate({"cohort": {"name": "t2dm", "yaml": VALID, "sql": "x"}})


def test_fingerprint_ignores_names_but_not_meaning() -> None:
    base = make_spec("a", yaml=VALID)
    renamed = make_spec("b", yaml={**VALID, "name": "other", "description": "words"})
    assert fingerprint(base) == fingerprint(renamed)
    narrower = make_spec("a", yaml=with_("entry.prior_observation_days", 365))
    assert fingerprint(base) != fingerprint(narrower)
    assert len(fingerprint(base)) == 64


def test_yaml_file_loading(tmp_path: Path) -> None:
    path = tmp_path / "t2dm.yaml"
    path.write_text(
        "name: Type 2 diabetes\n"
        "concept_sets:\n"
        "  t2dm:\n"
        "    include: [{concept: 201826, descendants: true}]\n"
        "entry:\n"
        "  events: [{condition: t2dm}]\n"
    )
    spec = load_cohort_file(path)
    assert spec.name == "Type 2 diabetes"
    assert spec.yaml is not None
    broken = tmp_path / "broken.yaml"
    broken.write_text("concept_sets: [\n")
    with pytest.raises(CohortDefinitionError, match="not valid YAML at line"):
        load_cohort_file(broken)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(CohortDefinitionError, match=r"expected a \.yaml"):
        load_cohort_file(tmp_path / "x.txt")


def test_cli_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["cohort", "check", str(GI_BLEED)]) == 0
    out = capsys.readouterr().out
    assert "cohort: gi_bleed" in out
    assert "condition occurrences of 'Gastrointestinal hemorrhage'" in out
    assert "192671 Gastrointestinal hemorrhage (with descendants)" in out


def test_cli_check_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("concept_sets: {}\nentry: {events: []}\n")
    assert cli_main(["cohort", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "concept_sets" in err
    assert "entry.events" in err


def test_cli_count(synth_cdm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t2dm.yaml"
    path.write_text(
        "concept_sets: {t2dm: {include: [{concept: 201826}]}}\n"
        "entry: {events: [{condition: t2dm}], events_per_person: first}\n"
    )
    assert cli_main(["cohort", "count", str(path), "--db", str(synth_cdm)]) == 0
    out = capsys.readouterr().out
    import duckdb

    con = duckdb.connect(str(synth_cdm), read_only=True)
    try:
        row = con.execute(
            "SELECT count(DISTINCT c.person_id) FROM cdm.condition_occurrence c "
            "JOIN cdm.observation_period op ON op.person_id = c.person_id AND "
            "c.condition_start_date BETWEEN op.observation_period_start_date "
            "AND op.observation_period_end_date WHERE c.condition_concept_id = 201826"
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    assert row[0] > 0
    assert f"persons: {row[0]}\nentries: {row[0]}\n" in out


def test_the_documented_example_is_valid() -> None:
    import yaml

    text = (Path(__file__).parents[3] / "docs" / "cohorts.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = make_spec("doc", yaml=yaml.safe_load(example))
    assert spec.yaml is not None
    assert spec.yaml["name"].startswith("Incident type 2 diabetes")
