"""Benchmark the node side of a study: characterization plus incidence of one cohort.

    .venv/bin/python -m bench.bench_analytics [--persons 1000000] [--repeat 3] [--spark]

On a synthetic CDM (cached under ``.bench/analytics``) the node computes what it would release
for two studies of one cohort (persons with type 2 diabetes, first occurrence): a
characterization (demographics and concept counts per domain in the year before index) and an
incidence (rates by calendar year, sex and age band, 2015-2023, 365 days' washout), through the
production code: circe builds the cohort through Ibis, the analyses' Ibis expressions run in
DuckDB, disclosure control applies. The reference, measured in the same run on the same file,
is one hand-written DuckDB SQL script computing the same numbers (the floor for this engine);
the figures are printed with their ratio and checked equal, never asserted in a test.

``--spark`` runs the same two computations on Spark in local mode over the Parquet layout of
the same CDM and checks that the released results are identical. The release guard is left
out of the timings (it is the node's own bookkeeping, measured in its tests).
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import duckdb

from ehds.analyses.base import ComputeContext, JsonObject
from ehds.analyses.characterization import Characterization
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.incidence import Incidence
from ehds.omop.database import CdmDatabase
from ehds.omop.parquet_layout import export_layout, is_layout
from ehds.omop.synth import SynthOptions, generate

CACHE = Path(".bench/analytics")
MIN_CELL = 5
COHORT: dict[str, Any] = {
    "name": "t2dm",
    "yaml": {
        "concept_sets": {"t2dm": {"include": [{"concept": 201826, "descendants": True}]}},
        "entry": {"events": [{"condition": "t2dm"}], "first_occurrence": True},
    },
}
START, END, WASHOUT = "2015-01-01", "2023-12-31", 365
EDGES = [0, 18, 45, 65]

REFERENCE_SQL = f"""
CREATE TEMP TABLE codeset AS
  SELECT descendant_concept_id AS concept_id FROM c.vocab.concept_ancestor
  WHERE ancestor_concept_id = 201826 UNION SELECT 201826;
-- first-ever event per person, kept if inside an observation period; exit at its end
CREATE TEMP TABLE cohort AS
  WITH first_event AS (
    SELECT person_id, min(condition_start_date) AS d FROM c.cdm.condition_occurrence
    WHERE condition_concept_id IN (SELECT concept_id FROM codeset) GROUP BY person_id)
  SELECT f.person_id, f.d AS start_date, op.observation_period_end_date AS end_date
  FROM first_event f JOIN c.cdm.observation_period op ON op.person_id = f.person_id
   AND f.d BETWEEN op.observation_period_start_date AND op.observation_period_end_date;
CREATE TEMP TABLE subjects AS
  SELECT s.person_id, s.start_date AS index_date,
         CASE p.gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE'
              ELSE 'OTHER/UNKNOWN' END AS sex,
         year(s.start_date) - p.year_of_birth AS age
  FROM cohort s JOIN c.cdm.person p USING (person_id);
CREATE TEMP TABLE demographics AS
  SELECT 'sex' AS variable, sex AS level, count(*) AS n FROM subjects GROUP BY ALL
  UNION ALL SELECT 'age_group', CASE WHEN age >= 65 THEN '65+' WHEN age >= 45 THEN '45-64'
    WHEN age >= 18 THEN '18-44' ELSE '0-17' END, count(*) FROM subjects GROUP BY ALL
  UNION ALL SELECT 'number subjects', '', count(*) FROM subjects
  UNION ALL SELECT 'age sum', '', sum(age) FROM subjects
  UNION ALL SELECT 'age sum_squares', '', sum(age * age) FROM subjects;
CREATE TEMP TABLE concepts AS
{
    " UNION ALL ".join(
        f"SELECT '{table}' AS domain, x.{concept} AS concept_id, count(DISTINCT s.person_id) AS n "
        f"FROM subjects s JOIN c.cdm.{table} x ON x.person_id = s.person_id "
        f"AND x.{day} BETWEEN s.index_date - 365 AND s.index_date "
        f"WHERE x.{concept} <> 0 GROUP BY ALL"
        for table, concept, day in (
            ("condition_occurrence", "condition_concept_id", "condition_start_date"),
            ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
            ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
            ("measurement", "measurement_concept_id", "measurement_date"),
            ("observation", "observation_concept_id", "observation_date"),
            ("visit_occurrence", "visit_concept_id", "visit_start_date"),
        )
    )
};
-- incidence: observation after washout, cut to the study period, minus persons whose outcome
-- came before, ending at the first outcome; split by calendar year
CREATE TEMP TABLE at_risk AS
  WITH intervals AS (
    SELECT person_id,
      greatest(observation_period_start_date + INTERVAL {WASHOUT} DAY, DATE '{START}')::DATE AS s,
      least(observation_period_end_date, DATE '{END}') AS e
    FROM c.cdm.observation_period),
  kept AS (
    SELECT i.* FROM intervals i WHERE i.s <= i.e AND NOT EXISTS (
      SELECT 1 FROM cohort o WHERE o.person_id = i.person_id AND o.start_date < i.s))
  SELECT k.person_id, k.s, coalesce(min(o.start_date), k.e) AS e, min(o.start_date) AS event
  FROM kept k LEFT JOIN cohort o ON o.person_id = k.person_id
    AND o.start_date BETWEEN k.s AND k.e
  GROUP BY k.person_id, k.s, k.e;
CREATE TEMP TABLE incidence AS
  WITH years AS (
    SELECT y AS year, greatest(make_date(y, 1, 1), DATE '{START}') AS ys,
           least(make_date(y, 12, 31), DATE '{END}') AS ye
    FROM range(year(DATE '{START}'), year(DATE '{END}') + 1) t(y)),
  segments AS (
    SELECT a.person_id, y.year, greatest(a.s, y.ys) AS ss, least(a.e, y.ye) AS se, a.event
    FROM at_risk a JOIN years y ON y.ys <= a.e AND y.ye >= a.s)
  SELECT g.year, CASE p.gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE'
           ELSE 'OTHER/UNKNOWN' END AS sex,
         CASE WHEN g.year - p.year_of_birth >= 65 THEN '65+'
              WHEN g.year - p.year_of_birth >= 45 THEN '45-64'
              WHEN g.year - p.year_of_birth >= 18 THEN '18-44' ELSE '0-17' END AS age_group,
         sum(CASE WHEN g.event BETWEEN g.ss AND g.se THEN 1 ELSE 0 END) AS events,
         sum(date_diff('day', g.ss, g.se) + 1) AS person_days,
         count(DISTINCT g.person_id) AS persons
  FROM segments g JOIN c.cdm.person p USING (person_id) GROUP BY ALL;
"""


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_cdm(persons: int, seed: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = (CACHE / f"fr-{persons}-{seed}.duckdb").resolve()
    if not path.exists():
        print(f"generating a {persons:,}-person CDM (profile fr, seed {seed}) ...", flush=True)
        started = time.perf_counter()
        partial = path.with_suffix(".partial.duckdb")
        partial.unlink(missing_ok=True)
        generate(
            CdmDatabase.parse(str(partial)),
            SynthOptions(persons=persons, seed=seed, profile="fr"),
        )
        partial.rename(path)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def ensure_parquet(cdm: Path) -> Path:
    root = cdm.with_suffix(".parquet")
    if not is_layout(root):
        export_layout(CdmDatabase.parse(str(cdm)), root)
    return root


def node_side(engine: IbisCdm) -> dict[str, JsonObject]:
    """What the node would release for both studies."""
    ctx = ComputeContext(cdm=None, min_cell_count=MIN_CELL, engine=engine)
    characterization = Characterization()
    incidence = Incidence()
    char_params = characterization.parse_parameters({"cohort": COHORT, "age_band_edges": EDGES})
    inc_params = incidence.parse_parameters(
        {
            "outcome": COHORT,
            "start": START,
            "end": END,
            "washout_days": WASHOUT,
            "age_band_edges": EDGES,
        }
    )
    return {
        "characterization": characterization.compute(char_params, ctx),
        "incidence": incidence.compute(inc_params, ctx),
    }


def reference(cdm: Path) -> dict[str, dict[tuple[str, ...], float]]:
    """The same numbers from hand-written SQL, in a fresh DuckDB session."""
    with duckdb.connect() as db:
        db.execute(f"ATTACH '{cdm}' AS c (READ_ONLY)")
        db.execute(REFERENCE_SQL)
        demographics = db.execute("SELECT variable, level, n FROM demographics").fetchall()
        concepts = db.execute("SELECT domain, concept_id, n FROM concepts").fetchall()
        cells = db.execute(
            "SELECT year, sex, age_group, events, person_days, persons FROM incidence"
        ).fetchall()
    out: dict[str, dict[tuple[str, ...], float]] = {"demographics": {}, "concepts": {}}
    out["incidence"] = {}
    for variable, level, n in demographics:
        out["demographics"][(variable, level)] = float(n)
    for domain, concept, n in concepts:
        out["concepts"][(domain, str(concept))] = float(n)
    for year, sex, band, events, days, persons in cells:
        strata = f"{year} &&& {sex} &&& {band}"
        out["incidence"][(strata, "events")] = float(events)
        out["incidence"][(strata, "person_days")] = float(days)
        out["incidence"][(strata, "person_count")] = float(persons)
    return out


def compare(released: Mapping[str, JsonObject], ref: Mapping[str, Mapping[Any, float]]) -> int:
    """Check every released value against the reference; the number of values compared."""
    compared = 0

    def check(key: object, value: float, expected: float | None) -> None:
        nonlocal compared
        if expected is None:
            expected = 0.0
        if not math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-9):
            raise SystemExit(f"MISMATCH {key}: released {value}, reference {expected}")
        compared += 1

    for row in released["characterization"]["rows"]:
        if row["suppressed"] or row["estimate_value"] is None:
            continue
        variable, level = row["variable_name"], row["variable_level"]
        estimate = row["estimate_name"]
        if variable in ("sex", "age_group", "number subjects"):
            check(row, row["estimate_value"], ref["demographics"].get((variable, level)))
        elif variable == "age":
            check(row, row["estimate_value"], ref["demographics"].get(("age " + estimate, "")))
        elif estimate == "count" and level:
            check(row, row["estimate_value"], ref["concepts"].get((variable, level)))
    for row in released["incidence"]["rows"]:
        if row["suppressed"] or row["estimate_value"] is None:
            continue
        key = (row["strata_level"], row["estimate_name"])
        check(key, row["estimate_value"], ref["incidence"].get(key))
    return compared


def timed(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spark", action="store_true", help="also run on Spark (local mode)")
    args = parser.parse_args()

    cdm = ensure_cdm(args.persons, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        results_file = Path(scratch) / "node_results.duckdb"

        def ours() -> dict[str, JsonObject]:
            with duckdb_session(cdm, results_file) as engine:
                return node_side(engine)

        ours_s, released = timed(ours, args.repeat)
        ours_rss = _peak_rss_mib()
        ref_s, ref = timed(lambda: reference(cdm), args.repeat)
        compared = compare(released, ref)

        print(f"CDM: {args.persons:,} persons ({cdm.stat().st_size / 2**20:.0f} MiB DuckDB file)")
        subjects = next(
            r["estimate_value"]
            for r in released["characterization"]["rows"]
            if r["variable_name"] == "number subjects"
        )
        print(f"cohort: {subjects:,} persons (type 2 diabetes, first occurrence)")
        print(f"characterization + incidence, node side (ehds, DuckDB): {ours_s:8.2f} s (median)")
        print(f"same numbers, one hand-written DuckDB SQL script:      {ref_s:8.2f} s (median)")
        print(f"ratio ehds / hand-written SQL: {ours_s / ref_s:.2f} (target < 1.5)")
        print(f"released values checked equal to the reference: {compared}")
        print(f"peak RSS of this process after the DuckDB runs: {ours_rss:.0f} MiB")

        if args.spark:
            # Imported only here: pyspark is an optional extra.
            from ehds.analyses.spark_engine import SparkSettings, spark_session  # noqa: PLC0415

            parquet = ensure_parquet(cdm)
            settings = SparkSettings(parquet=parquet, warehouse=Path(scratch) / "warehouse")
            with spark_session(settings) as spark:
                started = time.perf_counter()
                spark.session()
                startup = time.perf_counter() - started

                def on_spark() -> dict[str, JsonObject]:
                    engine = spark.task_engine()
                    try:
                        return node_side(engine)
                    finally:
                        engine.close()

                spark_s, spark_released = timed(on_spark, 1)
            same = _same(spark_released, released)
            print(f"Spark local mode: start {startup:.1f} s, study {spark_s:.2f} s; ", end="")
            print("released results identical to DuckDB" if same else "RESULTS DIFFER")
            if not same:
                raise SystemExit(1)


def _same(a: Mapping[str, JsonObject], b: Mapping[str, JsonObject]) -> bool:
    for name in b:
        rows_a, rows_b = a[name]["rows"], b[name]["rows"]
        if len(rows_a) != len(rows_b):
            return False
        for x, y in zip(rows_a, rows_b, strict=True):
            vx, vy = x["estimate_value"], y["estimate_value"]
            if {**x, "estimate_value": 0} != {**y, "estimate_value": 0}:
                return False
            if (vx is None) != (vy is None):
                return False
            if vx is not None and not math.isclose(vx, vy, rel_tol=1e-12):
                return False
    return True


if __name__ == "__main__":
    main()
