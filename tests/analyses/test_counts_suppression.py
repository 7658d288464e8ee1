"""`counts` disclosure control on a small-cell table: what is suppressed, and that no suppressed
cell can be recomputed from what is released (checked with the relations written out here,
independently of the analysis, and with `disclosure.recomputable`'s exact test)."""

from __future__ import annotations

import itertools

import pytest

from ehds.analyses.base import ComputeContext, JsonObject
from ehds.analyses.counts import Counts
from ehds.analyses.disclosure import recomputable
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.results import validate_node_result
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

THRESHOLD = 10
SEXES = ["FEMALE", "MALE", "OTHER/UNKNOWN"]
BANDS = ["0-17", "18-44", "45-64", "65+"]
VARIABLES = ["number subjects", "number records"]

Key = tuple[str, str, str]  # strata_name, strata_level, variable


@pytest.fixture(scope="module")
def released(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[JsonObject, dict[Key, int]]:
    folder = tmp_path_factory.mktemp("small")
    cdm = folder / "small.duckdb"
    generate(CdmDatabase.parse(str(cdm)), SynthOptions(persons=90, seed=5, profile="dk"))
    analysis = Counts()
    params = analysis.parse_parameters({"strata": ["age_band", "sex"]})
    with duckdb_session(cdm, folder / "node_results.duckdb") as engine:
        result = analysis.compute(
            params, ComputeContext(cdm=None, min_cell_count=THRESHOLD, engine=engine)
        )
        truth = _truth(engine)
    return result, truth


def _truth(engine: IbisCdm) -> dict[Key, int]:
    """The unsuppressed table by plain DuckDB SQL on the same connection."""
    rows = engine.backend.con.execute(
        """
        WITH e AS (
            SELECT op.person_id, op.observation_period_start_date AS start,
                   CASE p.gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE'
                        ELSE 'OTHER/UNKNOWN' END AS sex,
                   year(op.observation_period_start_date) - p.year_of_birth AS age
            FROM ehds_cdm.cdm.observation_period op JOIN ehds_cdm.cdm.person p USING (person_id)),
        f AS (SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY start) = 1 AS first,
                     CASE WHEN age >= 65 THEN '65+' WHEN age >= 45 THEN '45-64'
                          WHEN age >= 18 THEN '18-44' ELSE '0-17' END AS band
              FROM e WHERE age >= 0)
        SELECT sex, band, count(*) FILTER (WHERE first), count(*) FROM f GROUP BY ALL
        """
    ).fetchall()
    cross = {(sex, band): (s, r) for sex, band, s, r in rows}
    truth: dict[Key, int] = {}
    for v, variable in enumerate(VARIABLES):
        for sex, band in itertools.product(SEXES, BANDS):
            truth[("sex &&& age_group", f"{sex} &&& {band}", variable)] = cross.get(
                (sex, band), (0, 0)
            )[v]
        for sex in SEXES:
            truth[("sex", sex, variable)] = sum(cross.get((sex, b), (0, 0))[v] for b in BANDS)
        for band in BANDS:
            truth[("age_group", band, variable)] = sum(
                cross.get((s, band), (0, 0))[v] for s in SEXES
            )
        truth[("overall", "overall", variable)] = sum(c[v] for c in cross.values())
    return truth


def _relations() -> list[tuple[Key, list[Key]]]:
    relations = []
    for variable in VARIABLES:
        overall = ("overall", "overall", variable)

        def cross(sex: str, band: str, variable: str = variable) -> Key:
            return ("sex &&& age_group", f"{sex} &&& {band}", variable)

        relations.append((overall, [("sex", s, variable) for s in SEXES]))
        relations.append((overall, [("age_group", b, variable) for b in BANDS]))
        relations.append((overall, [cross(s, b) for s in SEXES for b in BANDS]))
        for s in SEXES:
            relations.append((("sex", s, variable), [cross(s, b) for b in BANDS]))
        for b in BANDS:
            relations.append((("age_group", b, variable), [cross(s, b) for s in SEXES]))
    return relations


def _rows(result: JsonObject) -> dict[Key, JsonObject]:
    return {(r["strata_name"], r["strata_level"], r["variable_name"]): r for r in result["rows"]}


def test_small_cells_are_null_and_flagged(released: tuple[JsonObject, dict[Key, int]]) -> None:
    result, truth = released
    rows = _rows(result)
    assert set(rows) == set(truth)
    small = [k for k, v in truth.items() if 0 < v < THRESHOLD]
    assert len(small) >= 4, "the fixture must have small cells"
    for key, row in rows.items():
        if row["suppressed"]:
            assert row["estimate_value"] is None
            assert truth[key] > 0, "zero is released, never suppressed"
        else:
            assert row["estimate_value"] == truth[key]
    assert all(rows[k]["suppressed"] for k in small)
    validate_node_result("counts@1.0.0", "dk", result)


def test_complementary_suppression_holds(released: tuple[JsonObject, dict[Key, int]]) -> None:
    result, truth = released
    rows = _rows(result)
    hidden = {k for k, row in rows.items() if row["suppressed"]}
    primary = {k for k, v in truth.items() if 0 < v < THRESHOLD}
    assert hidden > primary, "complementary cells are suppressed beside the small ones"
    for total, parts in _relations():
        members = [total, *parts]
        assert sum(m in hidden for m in members) != 1, (total, "gives its one hidden cell away")
    assert recomputable(truth, _relations(), hidden) == set()


def test_subject_suppression_hides_the_record_count(
    released: tuple[JsonObject, dict[Key, int]],
) -> None:
    rows = _rows(released[0])
    for (name, level, variable), row in rows.items():
        if variable == "number subjects" and row["suppressed"]:
            assert rows[(name, level, "number records")]["suppressed"]
