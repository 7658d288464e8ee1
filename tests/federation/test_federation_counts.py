"""`counts` and `characterization`: federated equals pooled, through the live federation.

Three country nodes (FR, FI, DK profiles, disjoint person ids) run the analyses as separate
processes; the researcher's pooled rows must equal hand-written DuckDB SQL over the three CDM
files attached in one session, for every pooled row that is complete (no node suppressed a
cell it is built from). Enough complete rows must exist for the comparison to mean something.
One federation serves both analyses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState

pytestmark = pytest.mark.slow

T = 5
PERSONS = 2500
HYPERTENSION = {
    "concept_sets": {"hypertension": {"include": [{"concept": 320128, "descendants": True}]}},
    "entry": {"events": [{"condition": "hypertension"}], "first_occurrence": True},
    "exit": {"end_of_observation": True},
}
DOMAINS = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
    "observation": ("observation_concept_id", "observation_date"),
    "visit_occurrence": ("visit_concept_id", "visit_start_date"),
}
SEX = (
    "CASE gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE' ELSE 'OTHER/UNKNOWN' END"
)
BAND = """CASE WHEN age >= 65 THEN '65+' WHEN age >= 45 THEN '45-64'
               WHEN age >= 18 THEN '18-44' ELSE '0-17' END"""
YEAR = """CASE WHEN year(start) < 2014 THEN '<2014' WHEN year(start) > 2023 THEN '>2023'
               ELSE CAST(year(start) AS VARCHAR) END"""


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("fed-counts")
    fed = prepare(
        root / "fed",
        persons=PERSONS,
        analyses=[("counts", "1.0.0"), ("characterization", "1.0.0")],
        min_cell_count=T,
    )
    with running(fed) as started:
        wait_for_nodes(started.operator_config, list(started.nodes), 60)
        yield started


def _study(fed: LocalFederation, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    spec = StudySpec(
        title=f"{name} federated equals pooled",
        analysis=AnalysisRef(name, "1.0.0"),
        parameters=json.dumps(parameters, sort_keys=True, separators=(",", ":")).encode(),
        min_nodes=3,
        deadline_seconds=120,
        data_permit_id=PERMIT_ID,
    )
    with CoordinatorClient(load_client_config(fed.researcher_config)) as client:
        study = client.submit(spec)
        assert client.wait(study.id, timeout=120).state == StudyState.COMPLETED
        document: dict[str, Any] = client.results(study.id)
    return document


def _attached(files: list[Path]) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    for i, path in enumerate(files):
        db.execute(f"ATTACH '{path}' AS n{i} (READ_ONLY)")
    return db


def _counts_truth(files: list[Path]) -> dict[tuple[str, str, str], int]:
    """Persons with an observation period (index: first start), records = observation periods,
    by every stratification the study asks for."""
    entries = " UNION ALL ".join(
        f"""SELECT op.person_id, op.observation_period_start_date AS start, p.gender_concept_id,
                   year(op.observation_period_start_date) - p.year_of_birth AS age
            FROM n{i}.cdm.observation_period op JOIN n{i}.cdm.person p USING (person_id)"""
        for i in range(len(files))
    )
    with _attached(files) as db:
        rows = db.execute(
            f"""
            WITH e AS (SELECT * FROM ({entries}) WHERE age >= 0),
            f AS (SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY start) = 1 AS first
                  FROM e),
            c AS (SELECT {SEX} AS sex, {BAND} AS band, {YEAR} AS year, first FROM f)
            SELECT grouping(sex), grouping(band), grouping(year), sex, band, year,
                   count(*) FILTER (WHERE first), count(*)
            FROM c GROUP BY GROUPING SETS ((), (sex), (band), (year), (sex, band, year))
            """
        ).fetchall()
    truth = {}
    for gs, gb, gy, sex, band, year, subjects, records in rows:
        present = [
            (n, v)
            for n, v, g in (("sex", sex, gs), ("age_group", band, gb), ("calendar_year", year, gy))
            if not g
        ]
        name = " &&& ".join(n for n, _ in present) or "overall"
        level = " &&& ".join(v for _, v in present) or "overall"
        truth[(name, level, "number subjects")] = subjects
        truth[(name, level, "number records")] = records
    return truth


def test_counts_federated_equals_pooled_sql(federation: LocalFederation) -> None:
    document = _study(
        federation,
        "counts",
        {"strata": ["sex", "age_band", "calendar_year"], "first_year": 2014, "last_year": 2023},
    )
    files = [node.cdm for node in federation.nodes.values()]
    truth = _counts_truth(files)
    rows = document["pooled"]["rows"]
    assert {r["cdm_name"] for r in rows} == {*federation.nodes, "pooled"}
    compared = 0
    for row in rows:
        if row["cdm_name"] != "pooled" or not row["complete"]:
            continue
        key = (row["strata_name"], row["strata_level"], row["variable_name"])
        assert row["estimate_value"] == truth.get(key, 0), key
        compared += 1
    assert compared >= 150, "too few complete cells for the comparison to mean anything"
    overall = {
        r["variable_name"]: r
        for r in rows
        if r["cdm_name"] == "pooled" and r["strata_name"] == "overall"
    }
    assert overall["number subjects"]["estimate_value"] == 3 * PERSONS
    assert overall["number subjects"]["complete"]
    # each node's released rows equal its own CDM's numbers, and keep the threshold
    for node_name, node in federation.nodes.items():
        own = _counts_truth([node.cdm])
        for row in (r for r in rows if r["cdm_name"] == node_name):
            value = own.get((row["strata_name"], row["strata_level"], row["variable_name"]), 0)
            if row["suppressed"]:
                assert row["estimate_value"] is None
                assert value > 0
            else:
                assert row["estimate_value"] == value
                assert value == 0 or value >= T
    assert document["pooled"]["suppressed_cells"].keys() == federation.nodes.keys()


def _characterization_truth(files: list[Path]) -> dict[tuple[str, str, str], Any]:
    subjects = " UNION ALL ".join(
        f"""
        SELECT f.person_id, f.index_date, p.gender_concept_id,
               year(f.index_date) - p.year_of_birth AS age
        FROM (SELECT person_id, min(condition_start_date) AS index_date
              FROM n{i}.cdm.condition_occurrence
              WHERE condition_concept_id IN (
                  SELECT concept_id FROM n{i}.vocab.concept WHERE concept_id = 320128
                  UNION
                  SELECT ca.descendant_concept_id FROM n{i}.vocab.concept_ancestor ca
                  JOIN n{i}.vocab.concept k ON k.concept_id = ca.descendant_concept_id
                  WHERE ca.ancestor_concept_id = 320128 AND k.invalid_reason IS NULL)
              GROUP BY person_id) f
        JOIN n{i}.cdm.person p USING (person_id)
        WHERE EXISTS (SELECT 1 FROM n{i}.cdm.observation_period op
                      WHERE op.person_id = f.person_id
                        AND f.index_date BETWEEN op.observation_period_start_date
                                             AND op.observation_period_end_date)
          AND year(f.index_date) - p.year_of_birth >= 0"""
        for i in range(len(files))
    )
    with _attached(files) as db:
        db.execute(f"CREATE TEMP TABLE subjects AS {subjects}")
        n, age_sum, age_sq, mean, sd = db.execute(
            "SELECT count(*), sum(age), sum(age * age), avg(age), stddev_samp(age) FROM subjects"
        ).fetchone() or (0, 0, 0, None, None)
        truth: dict[tuple[str, str, str], Any] = {
            ("number subjects", "", "count"): n,
            ("age", "", "sum"): age_sum,
            ("age", "", "sum_squares"): age_sq,
            ("age", "", "mean"): mean,
            ("age", "", "sd"): sd,
        }
        for variable, case in (("sex", SEX), ("age_group", BAND)):
            for level, k in db.execute(
                f"SELECT {case}, count(*) FROM subjects GROUP BY 1"
            ).fetchall():
                truth[(variable, level, "count")] = k
                truth[(variable, level, "percentage")] = 100.0 * k / n
        for domain, (concept, date) in DOMAINS.items():
            events = " UNION ALL ".join(
                f"SELECT person_id, {concept} AS concept_id, {date} AS d FROM n{i}.cdm.{domain}"
                for i in range(len(files))
            )
            for c, k in db.execute(
                f"""SELECT e.concept_id, count(DISTINCT e.person_id)
                    FROM ({events}) e JOIN subjects s USING (person_id)
                    WHERE e.concept_id <> 0 AND e.d BETWEEN s.index_date - 365 AND s.index_date
                    GROUP BY 1"""
            ).fetchall():
                truth[(domain, str(c), "count")] = k
                truth[(domain, str(c), "percentage")] = 100.0 * k / n
    return truth


def test_characterization_federated_equals_pooled_sql(federation: LocalFederation) -> None:
    cohort = {"name": "hypertension", "yaml": HYPERTENSION}
    document = _study(federation, "characterization", {"cohort": cohort, "top_n": 15})
    truth = _characterization_truth([node.cdm for node in federation.nodes.values()])
    pooled = [r for r in document["pooled"]["rows"] if r["cdm_name"] == "pooled"]
    assert truth[("number subjects", "", "count")] >= 300
    compared = {"demographics": 0, "concepts": 0}
    for row in pooled:
        if not row["complete"]:
            assert row["suppressed_at"], row
            continue
        key = (row["variable_name"], row["variable_level"], row["estimate_name"])
        expected = truth.get(key, 0)
        if row["estimate_type"] == "integer":
            assert row["estimate_value"] == expected, key
        else:
            assert row["estimate_value"] == pytest.approx(expected, rel=1e-9), key
        compared["concepts" if row["variable_name"] in DOMAINS else "demographics"] += 1
    assert compared["demographics"] >= 15, compared
    assert compared["concepts"] >= 30, compared
    for key in (("age", "", "mean"), ("age", "", "sd"), ("number subjects", "", "count")):
        (row,) = [
            r
            for r in pooled
            if (r["variable_name"], r["variable_level"], r["estimate_name"]) == key
        ]
        assert row["complete"], key
    # the pooled top concepts per domain are the true top ones among complete rows' values
    for domain in ("condition_occurrence", "drug_exposure", "measurement"):
        listed = [
            r for r in pooled if r["variable_name"] == domain and r["estimate_name"] == "count"
        ]
        assert listed, domain
        assert len(listed) <= 15
