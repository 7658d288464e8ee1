"""`counts`: node-side numbers equal hand-written DuckDB SQL; parameters; pooling; guard call.

The reference is independent of the analysis: DuckDB SQL with ``GROUPING SETS`` over the CDM
file (the analysis runs Ibis, groups once and adds the margins up in Python). The cohort used
is "hypertension (320128 with descendants), all events, exit at end of observation": circe
merges a person's overlapping entries, so there is one entry per person and observation period
holding an event, starting at the first event in it, which plain SQL can state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ehds.analyses.base import (
    ComputeContext,
    DisclosureRefusedError,
    InvalidParametersError,
    JsonObject,
)
from ehds.analyses.cohorts import fingerprint, make_spec
from ehds.analyses.counts import Counts, CountsParameters
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.results import InvalidNodeResultError
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

THRESHOLD = 5
HYPERTENSION = {
    "concept_sets": {"hypertension": {"include": [{"concept": 320128, "descendants": True}]}},
    "entry": {"events": [{"condition": "hypertension"}]},
    "exit": {"end_of_observation": True},
}

SEX_SQL = (
    "CASE gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE' ELSE 'OTHER/UNKNOWN' END"
)
BAND_SQL = """CASE WHEN age >= 65 THEN '65+' WHEN age >= 45 THEN '45-64'
                   WHEN age >= 18 THEN '18-44' ELSE '0-17' END"""


def year_sql(first: int, last: int) -> str:
    return f"""CASE WHEN year(start) < {first} THEN '<{first}'
                    WHEN year(start) > {last} THEN '>{last}'
                    ELSE CAST(year(start) AS VARCHAR) END"""


def observation_entries(catalog: str) -> str:
    return f"""SELECT person_id, observation_period_start_date AS start
               FROM {catalog}.cdm.observation_period"""


def hypertension_entries(catalog: str) -> str:
    return f"""
        SELECT c.person_id, min(c.condition_start_date) AS start
        FROM {catalog}.cdm.condition_occurrence AS c
        JOIN {catalog}.cdm.observation_period AS op
          ON op.person_id = c.person_id
         AND c.condition_start_date BETWEEN op.observation_period_start_date
                                        AND op.observation_period_end_date
        WHERE c.condition_concept_id IN (
            SELECT concept_id FROM {catalog}.vocab.concept WHERE concept_id = 320128
            UNION
            SELECT ca.descendant_concept_id FROM {catalog}.vocab.concept_ancestor AS ca
            JOIN {catalog}.vocab.concept AS k ON k.concept_id = ca.descendant_concept_id
            WHERE ca.ancestor_concept_id = 320128 AND k.invalid_reason IS NULL)
        GROUP BY c.person_id, op.observation_period_id"""


Truth = dict[tuple[str, str, str], int]

COLUMNS = {"sex": "sex", "age_band": "band", "calendar_year": "year"}
RELEASED = {"sex": "sex", "age_band": "age_group", "calendar_year": "calendar_year"}


def reference_counts(
    files: list[Path],
    entries_sql: Any,
    strata: list[str],
    first: int = 2014,
    last: int = 2023,
) -> Truth:
    """(strata_name, strata_level, variable) -> count over the union of ``files``: overall,
    each stratum of ``strata`` (in canonical order) and their cross, with released names."""
    sets = ["()", *(f"({COLUMNS[s]})" for s in strata)]
    if len(strata) > 1:
        sets.append("(" + ", ".join(COLUMNS[s] for s in strata) + ")")

    def column(stratum: str) -> str:
        return COLUMNS[stratum] if stratum in strata else "NULL"

    def grouping(stratum: str) -> str:
        return f"grouping({COLUMNS[stratum]})" if stratum in strata else "1"

    with duckdb.connect() as db:
        parts = []
        for i, path in enumerate(files):
            db.execute(f"ATTACH '{path}' AS n{i} (READ_ONLY)")
            parts.append(
                f"""SELECT e.person_id, e.start, p.gender_concept_id,
                           year(e.start) - p.year_of_birth AS age
                    FROM ({entries_sql(f"n{i}")}) AS e
                    JOIN n{i}.cdm.person AS p ON p.person_id = e.person_id"""
            )
        rows = db.execute(
            f"""
            WITH entries AS (SELECT * FROM ({" UNION ALL ".join(parts)}) WHERE age >= 0),
            flagged AS (
                SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY start) = 1 AS first
                FROM entries),
            classified AS (
                SELECT {SEX_SQL} AS sex, {BAND_SQL} AS band, {year_sql(first, last)} AS year,
                       first FROM flagged)
            SELECT {grouping("sex")} AS gs, {grouping("age_band")} AS gb,
                   {grouping("calendar_year")} AS gy, {column("sex")}, {column("age_band")},
                   {column("calendar_year")}, count(*) FILTER (WHERE first), count(*)
            FROM classified
            GROUP BY GROUPING SETS ({", ".join(sets)})
            """
        ).fetchall()
    truth: Truth = {}
    for gs, gb, gy, sex, band, year, subjects, records in rows:
        grouped = {"sex": (sex, gs), "age_band": (band, gb), "calendar_year": (year, gy)}
        present = [(RELEASED[s], grouped[s][0]) for s in strata if not grouped[s][1]]
        name = " &&& ".join(n for n, _ in present) or "overall"
        level = " &&& ".join(str(lv) for _, lv in present) or "overall"
        truth[(name, level, "number subjects")] = subjects
        truth[(name, level, "number records")] = records
    return truth


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("counts") / "site.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=1500, seed=11, profile="fi"))
    return path


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "node_results.duckdb") as cdm:
        yield cdm


def results_tables(engine: IbisCdm) -> list[str]:
    """Tables left in the node's results place (through DuckDB: ibis' list_tables warns)."""
    rows = engine.backend.con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
        [engine.results_database],
    ).fetchall()
    return [name for (name,) in rows]


class RecordingGuard:
    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[int, str]] = []
        self.refuse = refuse

    def check_population(self, engine: IbisCdm, persons: Any, *, fingerprint: str) -> None:
        (row,) = engine.collect(persons.aggregate(n=persons.count()), max_rows=1)
        self.calls.append((int(row["n"]), fingerprint))
        if self.refuse:
            raise DisclosureRefusedError("differencing", "differs by 1 to 4 persons")


def run(
    engine: IbisCdm, raw: dict[str, Any], guard: RecordingGuard | None = None
) -> tuple[CountsParameters, JsonObject]:
    analysis = Counts()
    params = analysis.parse_parameters(raw)
    ctx = ComputeContext(cdm=None, min_cell_count=THRESHOLD, engine=engine, release_guard=guard)
    return params, analysis.compute(params, ctx)


def check_against(result: JsonObject, truth: Truth) -> int:
    """Every released value equals the truth; every suppressed one is non-zero; every small one
    is suppressed. Returns the number of released values compared."""
    compared = 0
    for row in result["rows"]:
        key = (row["strata_name"], row["strata_level"], row["variable_name"])
        true_value = truth.get(key, 0)
        if row["suppressed"]:
            assert row["estimate_value"] is None
            assert true_value > 0, key
        else:
            assert row["estimate_value"] == true_value, key
            assert true_value == 0 or true_value >= THRESHOLD, key
            compared += 1
    return compared


def test_all_strata_without_cohort_equal_sql(engine: IbisCdm, cdm_file: Path) -> None:
    raw = {"strata": ["calendar_year", "sex", "age_band"], "first_year": 2014, "last_year": 2023}
    _params, result = run(engine, raw)
    truth = reference_counts([cdm_file], observation_entries, ["sex", "age_band", "calendar_year"])
    names = {row["strata_name"] for row in result["rows"]}
    assert names == {
        "overall",
        "sex",
        "age_group",
        "calendar_year",
        "sex &&& age_group &&& calendar_year",
    }
    assert len(result["rows"]) == 2 * (1 + 3 + 4 + 12 + 3 * 4 * 12)
    assert check_against(result, truth) >= 100
    overall = {r["variable_name"]: r["estimate_value"] for r in result["rows"][:2]}
    assert overall == {
        "number subjects": 1500,
        "number records": truth[("overall", "overall", "number records")],
    }
    assert overall["number records"] > 1500  # several observation periods per person
    # only the crossed grouped cells came into Python
    assert engine.rows_collected <= 3 * 4 * 12


def test_cohort_subjects_by_first_entry_records_by_own(engine: IbisCdm, cdm_file: Path) -> None:
    cohort = {"name": "hypertension", "yaml": HYPERTENSION}
    _, result = run(engine, {"cohort": cohort, "strata": ["sex", "calendar_year"]})
    truth = reference_counts([cdm_file], hypertension_entries, ["sex", "calendar_year"], 2000, 2025)
    subjects = truth[("overall", "overall", "number subjects")]
    records = truth[("overall", "overall", "number records")]
    assert records > subjects > 100
    rows = {(r["strata_name"], r["strata_level"], r["variable_name"]): r for r in result["rows"]}
    assert rows[("overall", "overall", "number subjects")]["estimate_value"] == subjects
    assert rows[("overall", "overall", "number records")]["estimate_value"] == records
    assert {r["group_level"] for r in result["rows"]} == {"hypertension"}
    assert check_against(result, truth) >= 20


def test_no_strata_releases_overall_only(engine: IbisCdm) -> None:
    _, result = run(engine, {})
    assert [(r["strata_name"], r["variable_name"]) for r in result["rows"]] == [
        ("overall", "number subjects"),
        ("overall", "number records"),
    ]
    assert result["rows"][0]["estimate_value"] == 1500
    assert result["format"] == "ehds-summarised-result/1"
    assert result["min_cell_count"] == THRESHOLD


def test_guard_sees_the_described_population_before_release(engine: IbisCdm) -> None:
    cohort = {"name": "hypertension", "yaml": HYPERTENSION}
    guard = RecordingGuard()
    _, result = run(engine, {"cohort": cohort}, guard)
    ((persons, key),) = guard.calls
    assert persons == result["rows"][0]["estimate_value"]
    assert key == fingerprint(make_spec("other name", yaml=HYPERTENSION))


def test_refusal_propagates_and_cleans_up(engine: IbisCdm) -> None:
    cohort = {"name": "hypertension", "yaml": HYPERTENSION}
    with pytest.raises(DisclosureRefusedError):
        run(engine, {"cohort": cohort, "strata": ["sex"]}, RecordingGuard(refuse=True))
    assert engine.rows_collected == 1  # the guard's own count
    assert [t for t in results_tables(engine) if t.startswith(("ehds_", "__c_"))] == []


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"strata": ["sex", "sex"]}, "each stratum at most once"),
        ({"strata": ["region"]}, "parameters.strata.0"),
        ({"age_band_edges": [5, 10]}, "must start at 0"),
        ({"age_band_edges": [0, 10, 10]}, "strictly increasing"),
        ({"first_year": 2020, "last_year": 2010}, "last_year"),
        ({"first_year": 1900, "last_year": 2100}, "at most 100 years"),
        ({"cohort": {"name": "x"}}, "parameters.cohort"),
        ({"unknown": 1}, "unknown parameter"),
    ],
)
def test_invalid_parameters_are_named(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidParametersError, match=where):
        Counts().parse_parameters(raw)


def _node_result(values: list[int | None]) -> JsonObject:
    names = ["number subjects", "number records"]
    levels = [("overall", "overall"), ("sex", "FEMALE"), ("sex", "MALE"), ("sex", "OTHER/UNKNOWN")]
    rows = []
    for (name, level), variable_values in zip(
        levels, zip(values[::2], values[1::2], strict=True), strict=True
    ):
        for variable, value in zip(names, variable_values, strict=True):
            rows.append(
                {
                    "cdm_name": "",
                    "group_name": "overall",
                    "group_level": "overall",
                    "strata_name": name,
                    "strata_level": level,
                    "variable_name": variable,
                    "variable_level": "",
                    "estimate_name": "count",
                    "estimate_type": "integer",
                    "estimate_value": value,
                    "suppressed": value is None,
                }
            )
    return {"format": "ehds-summarised-result/1", "min_cell_count": 5, "rows": rows}


def test_aggregate_pools_labels_and_flags_lower_bounds() -> None:
    analysis = Counts()
    params = analysis.parse_parameters({"strata": ["sex"]})
    fi = _node_result([30, 40, 20, 25, 10, 15, 0, 0])
    fr = _node_result([None, None, 15, 18, None, None, 0, 0])
    pooled = analysis.aggregate(params, {"fr": fr, "fi": fi})
    assert pooled["suppressed_cells"] == {"fi": 0, "fr": 4}
    places = [row["cdm_name"] for row in pooled["rows"]]
    assert places == ["fi"] * 8 + ["fr"] * 8 + ["pooled"] * 8
    out = {
        (r["strata_level"], r["variable_name"]): r
        for r in pooled["rows"]
        if r["cdm_name"] == "pooled"
    }
    female = out[("FEMALE", "number subjects")]
    assert (female["estimate_value"], female["complete"], female["suppressed_at"]) == (35, True, [])
    male = out[("MALE", "number records")]
    assert (male["estimate_value"], male["complete"], male["suppressed_at"]) == (15, False, ["fr"])
    header, lines = analysis.table(pooled)
    assert header[0] == "cdm_name"
    assert len(lines) == 24
    assert any("lower bound (suppressed at fr)" in line[-1] for line in lines)


def test_aggregate_rejects_a_result_of_other_cells() -> None:
    analysis = Counts()
    params = analysis.parse_parameters({"strata": ["age_band"]})
    with pytest.raises(InvalidNodeResultError, match="does not hold the cells"):
        analysis.aggregate(params, {"fi": _node_result([30, 40, 20, 25, 10, 15, 0, 0])})
