"""`characterization`: node-side numbers equal hand-written DuckDB SQL; cap, window and
suppression; the coordinator's ranking, proportions and lower-bound flags.

Cohort: type 2 diabetes (201826 with descendants), first occurrence, exit at end of
observation. In plain SQL: each person's first-ever event of the concept set, if it lies in an
observation period; the index date is that event's date.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ehds.analyses.base import ComputeContext, InvalidParametersError, JsonObject
from ehds.analyses.characterization import Characterization
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

THRESHOLD = 5
T2DM = {
    "concept_sets": {"t2dm": {"include": [{"concept": 201826, "descendants": True}]}},
    "entry": {"events": [{"condition": "t2dm"}], "first_occurrence": True},
    "exit": {"end_of_observation": True},
}
COHORT = {"name": "t2dm", "yaml": T2DM}
DOMAINS = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
    "observation": ("observation_concept_id", "observation_date"),
    "visit_occurrence": ("visit_concept_id", "visit_start_date"),
}


def subjects_sql(catalog: str, ancestor: int) -> str:
    """person_id, index_date, gender_concept_id, age of the first-occurrence cohort."""
    return f"""
        WITH codes AS (
            SELECT concept_id FROM {catalog}.vocab.concept WHERE concept_id = {ancestor}
            UNION
            SELECT ca.descendant_concept_id FROM {catalog}.vocab.concept_ancestor ca
            JOIN {catalog}.vocab.concept k ON k.concept_id = ca.descendant_concept_id
            WHERE ca.ancestor_concept_id = {ancestor} AND k.invalid_reason IS NULL),
        firsts AS (
            SELECT person_id, min(condition_start_date) AS index_date
            FROM {catalog}.cdm.condition_occurrence
            WHERE condition_concept_id IN (SELECT concept_id FROM codes)
            GROUP BY person_id)
        SELECT f.person_id, f.index_date, p.gender_concept_id,
               year(f.index_date) - p.year_of_birth AS age
        FROM firsts f JOIN {catalog}.cdm.person p USING (person_id)
        WHERE EXISTS (SELECT 1 FROM {catalog}.cdm.observation_period op
                      WHERE op.person_id = f.person_id
                        AND f.index_date BETWEEN op.observation_period_start_date
                                             AND op.observation_period_end_date)
          AND year(f.index_date) - p.year_of_birth >= 0"""


def reference(
    files: list[Path], ancestor: int = 201826, window: tuple[int, int] = (-365, 0)
) -> dict[str, Any]:
    """Demographics and per-domain concept counts over the union of ``files``."""
    with duckdb.connect() as db:
        for i, path in enumerate(files):
            db.execute(f"ATTACH '{path}' AS n{i} (READ_ONLY)")
        subjects = " UNION ALL ".join(
            f"SELECT * FROM ({subjects_sql(f'n{i}', ancestor)})" for i in range(len(files))
        )
        db.execute(f"CREATE TEMP TABLE subjects AS {subjects}")
        n, age_sum, age_sq, mean, sd = db.execute(
            "SELECT count(*), sum(age), sum(age * age), avg(age), stddev_samp(age) FROM subjects"
        ).fetchone() or (0, 0, 0, None, None)
        sex = dict(
            db.execute(
                """SELECT CASE gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE'
                          ELSE 'OTHER/UNKNOWN' END, count(*) FROM subjects GROUP BY 1"""
            ).fetchall()
        )
        bands = dict(
            db.execute(
                """SELECT CASE WHEN age >= 65 THEN '65+' WHEN age >= 45 THEN '45-64'
                               WHEN age >= 18 THEN '18-44' ELSE '0-17' END, count(*)
                   FROM subjects GROUP BY 1"""
            ).fetchall()
        )
        concepts: dict[str, dict[str, int]] = {}
        for domain, (concept, date) in DOMAINS.items():
            events = " UNION ALL ".join(
                f"SELECT person_id, {concept} AS concept_id, {date} AS d FROM n{i}.cdm.{domain}"
                for i in range(len(files))
            )
            rows = db.execute(
                f"""SELECT e.concept_id, count(DISTINCT e.person_id)
                    FROM ({events}) e JOIN subjects s USING (person_id)
                    WHERE e.concept_id <> 0
                      AND e.d BETWEEN s.index_date + {window[0]} AND s.index_date + {window[1]}
                    GROUP BY 1"""
            ).fetchall()
            concepts[domain] = {str(c): k for c, k in rows}
    return {
        "subjects": n,
        "age_sum": age_sum or 0,
        "age_squares": age_sq or 0,
        "mean": mean,
        "sd": sd,
        "sex": sex,
        "age_group": bands,
        "concepts": concepts,
    }


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("characterization") / "site.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=2500, seed=13, profile="fr"))
    return path


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "node_results.duckdb") as cdm:
        yield cdm


def run(engine: IbisCdm, raw: dict[str, Any], threshold: int = THRESHOLD) -> JsonObject:
    analysis = Characterization()
    params = analysis.parse_parameters(raw)
    return analysis.compute(
        params, ComputeContext(cdm=None, min_cell_count=threshold, engine=engine)
    )


def values(result: JsonObject) -> dict[tuple[str, str, str], Any]:
    return {
        (r["variable_name"], r["variable_level"], r["estimate_name"]): r["estimate_value"]
        for r in result["rows"]
    }


def test_node_result_equals_sql(engine: IbisCdm, cdm_file: Path) -> None:
    result = run(engine, {"cohort": COHORT})
    truth = reference([cdm_file])
    got = values(result)
    assert truth["subjects"] >= 100
    assert got[("number subjects", "", "count")] == truth["subjects"]
    assert got[("age", "", "sum")] == truth["age_sum"]
    assert got[("age", "", "sum_squares")] == truth["age_squares"]
    for sex in ("FEMALE", "MALE", "OTHER/UNKNOWN"):
        assert got[("sex", sex, "count")] == truth["sex"].get(sex, 0)
    for band in ("0-17", "18-44", "45-64", "65+"):
        expected = truth["age_group"].get(band, 0)
        if 0 < expected < THRESHOLD:
            assert got[("age_group", band, "count")] is None
        elif got[("age_group", band, "count")] is not None:
            assert got[("age_group", band, "count")] == expected
    listed_total = 0
    for domain, counts in truth["concepts"].items():
        listed = {level: v for (var, level, est), v in got.items() if var == domain and level}
        releasable = {c: k for c, k in counts.items() if k >= THRESHOLD}
        assert listed == releasable, domain
        small = sum(1 for k in counts.values() if 0 < k < THRESHOLD)
        assert got[(domain, "", "concepts_suppressed")] == small
        assert got[(domain, "", "concepts_beyond_cap")] == 0
        listed_total += len(listed)
    assert listed_total >= 20
    assert {r["group_level"] for r in result["rows"]} == {"t2dm"}
    assert engine.rows_collected <= 3 * 4 + len(DOMAINS) * 500


def test_cap_keeps_the_most_frequent_and_counts_the_rest(engine: IbisCdm, cdm_file: Path) -> None:
    result = run(engine, {"cohort": COHORT, "max_concepts_per_domain": 2})
    truth = reference([cdm_file])
    got = values(result)
    for domain, counts in truth["concepts"].items():
        releasable = sorted(
            ((k, c) for c, k in counts.items() if k >= THRESHOLD),
            key=lambda kc: (-kc[0], int(kc[1])),
        )
        listed = [
            (r["estimate_value"], r["variable_level"])
            for r in result["rows"]
            if r["variable_name"] == domain and r["estimate_name"] == "count"
        ]
        assert listed == releasable[:2], domain
        assert got[(domain, "", "concepts_beyond_cap")] == max(0, len(releasable) - 2)
    assert engine.rows_collected <= 3 * 4 + len(DOMAINS) * 2


def test_window_parameter(engine: IbisCdm, cdm_file: Path) -> None:
    result = run(engine, {"cohort": COHORT, "window": [0, 30], "domains": ["drug_exposure"]})
    truth = reference([cdm_file], window=(0, 30))
    listed = {
        r["variable_level"]: r["estimate_value"]
        for r in result["rows"]
        if r["variable_name"] == "drug_exposure" and r["estimate_name"] == "count"
    }
    assert listed == {c: k for c, k in truth["concepts"]["drug_exposure"].items() if k >= THRESHOLD}
    assert listed
    assert not any(r["variable_name"] == "measurement" for r in result["rows"])


def test_a_cohort_below_the_threshold_releases_no_number(engine: IbisCdm, cdm_file: Path) -> None:
    truth = reference([cdm_file])
    threshold = truth["subjects"] + 1
    result = run(engine, {"cohort": COHORT}, threshold=threshold)
    got = values(result)
    assert got[("number subjects", "", "count")] is None
    assert got[("age", "", "sum")] is None
    assert got[("age", "", "sum_squares")] is None
    counted = [r for r in result["rows"] if r["estimate_name"] == "count"]
    assert all(r["estimate_value"] in (None, 0) for r in counted)
    assert all(
        r["variable_level"] == "" or r["variable_name"] in ("sex", "age_group") for r in counted
    )
    for domain, counts in truth["concepts"].items():
        assert got[(domain, "", "concepts_suppressed")] == len(counts)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"window": [10, 0]}, "start must not be after end"),
        ({"window": [-40000, 0]}, "at most 36500 days"),
        ({"domains": ["device_exposure"]}, "parameters.domains.0"),
        ({"domains": []}, "parameters.domains"),
        ({"max_concepts_per_domain": 0}, "parameters.max_concepts_per_domain"),
        ({"top_n": 0}, "parameters.top_n"),
    ],
)
def test_invalid_parameters_are_named(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidParametersError, match=where):
        Characterization().parse_parameters(raw)


def _row(
    variable: str, level: str, estimate: str, value: float | None, kind: str = "integer"
) -> JsonObject:
    return {
        "cdm_name": "",
        "group_name": "overall",
        "group_level": "overall",
        "strata_name": "overall",
        "strata_level": "overall",
        "variable_name": variable,
        "variable_level": level,
        "estimate_name": estimate,
        "estimate_type": kind,
        "estimate_value": value,
        "suppressed": value is None,
    }


def _node(subjects: int, ages: list[int], concepts: dict[str, int], suppressed: int) -> JsonObject:
    rows = [
        _row("number subjects", "", "count", subjects),
        _row("age", "", "sum", sum(ages), "numeric"),
        _row("age", "", "sum_squares", sum(a * a for a in ages), "numeric"),
    ]
    rows += [_row("condition_occurrence", c, "count", k) for c, k in concepts.items()]
    rows.append(_row("condition_occurrence", "", "concepts_suppressed", suppressed))
    rows.append(_row("condition_occurrence", "", "concepts_beyond_cap", 0))
    return {"format": "ehds-summarised-result/1", "min_cell_count": 5, "rows": rows}


def test_aggregate_ranks_pooled_concepts_with_proportions_and_bounds() -> None:
    analysis = Characterization()
    params = analysis.parse_parameters({"domains": ["condition_occurrence"], "top_n": 2})
    ages_a, ages_b = [30, 40, 50, 60, 70], [20, 25, 35, 45, 55, 65]
    results = {
        "a": _node(5, ages_a, {"1": 5, "2": 5}, suppressed=3),
        "b": _node(6, ages_b, {"2": 6, "3": 9}, suppressed=0),
    }
    aggregate = analysis.aggregate(params, results)
    pooled = {
        (r["variable_name"], r["variable_level"], r["estimate_name"]): r
        for r in aggregate["rows"]
        if r["cdm_name"] == "pooled"
    }
    # pooled ranking: concept 2 (11, complete), concept 3 (9, lower bound: a suppressed some)
    listed = sorted(k[1] for k in pooled if k[0] == "condition_occurrence" and k[2] == "count")
    assert listed == ["2", "3"]
    two = pooled[("condition_occurrence", "2", "count")]
    assert (two["estimate_value"], two["complete"]) == (11, True)
    three = pooled[("condition_occurrence", "3", "count")]
    assert (three["estimate_value"], three["complete"], three["suppressed_at"]) == (9, False, ["a"])
    pct = pooled[("condition_occurrence", "2", "percentage")]
    assert pct["estimate_value"] == pytest.approx(100 * 11 / 11)
    assert pooled[("condition_occurrence", "3", "percentage")]["complete"] is False
    ages = ages_a + ages_b
    mean = sum(ages) / len(ages)
    sd = math.sqrt(sum((a - mean) ** 2 for a in ages) / (len(ages) - 1))
    assert pooled[("age", "", "mean")]["estimate_value"] == pytest.approx(mean)
    assert pooled[("age", "", "sd")]["estimate_value"] == pytest.approx(sd)
    # node b listed everything it had: a concept it lacks is a known 0 there
    node_a = [r for r in aggregate["rows"] if r["cdm_name"] == "a"]
    assert {r["variable_level"] for r in node_a if r["estimate_name"] == "count"} == {"", "2"}
    assert aggregate["suppressed_cells"] == {"a": 0, "b": 0}
    header, lines = analysis.table(aggregate)
    assert len(lines) == len(aggregate["rows"])
    assert header[-1] == "flags"
