"""CSV load throughput into DuckDB: ``load_cdm`` beside DuckDB's own ``read_csv``.

Generates a synthetic CDM extract (person, condition_occurrence, measurement; ``--rows`` in
all) as CSV files with DuckDB ``COPY``, then times, on the same files in the same run:

* ``load_cdm`` into a fresh DuckDB file: typed read with ``store_rejects``, integrality and
  length checks, NOT NULL and PRIMARY KEY constraints, one transaction (all 39 tables
  created);
* the baseline: ``CREATE TABLE t AS SELECT * FROM read_csv('file')`` per file into another
  fresh file (sniffed types, no checks, no constraints).

It prints both rates and their ratio (target >= 0.8); it asserts nothing.

    .venv/bin/python bench/bench_csv_load.py [--rows 3000000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from ehds.omop.database import CdmDatabase
from ehds.omop.loader import load_cdm

_SHARES = {"person": 0.02, "condition_occurrence": 0.33, "measurement": 0.65}

_PERSON = """
SELECT i AS person_id, CASE WHEN i % 2 = 0 THEN 8507 ELSE 8532 END AS gender_concept_id,
       1930 + i % 80 AS year_of_birth, 1 + i % 12 AS month_of_birth, 1 + i % 28 AS day_of_birth,
       TIMESTAMP '1930-01-01' + to_days(CAST(i % 29000 AS INTEGER)) AS birth_datetime,
       8527 AS race_concept_id, 38003564 AS ethnicity_concept_id,
       'P' || i AS person_source_value, CASE WHEN i % 2 = 0 THEN 'M' ELSE 'F' END
           AS gender_source_value
FROM range(1, {n} + 1) t(i)
"""
_CONDITION = """
SELECT i AS condition_occurrence_id, 1 + i % {persons} AS person_id,
       CAST(192671 + i % 300 AS INTEGER) AS condition_concept_id,
       DATE '2000-01-01' + CAST(i % 8000 AS INTEGER) AS condition_start_date,
       TIMESTAMP '2000-01-01 08:00:00' + to_days(CAST(i % 8000 AS INTEGER))
           AS condition_start_datetime,
       DATE '2000-01-02' + CAST(i % 8000 AS INTEGER) AS condition_end_date,
       32817 AS condition_type_concept_id, 0 AS condition_status_concept_id,
       1 + i % 997 AS visit_occurrence_id, 'K92.' || (i % 10) AS condition_source_value,
       0 AS condition_source_concept_id
FROM range(1, {n} + 1) t(i)
"""
_MEASUREMENT = """
SELECT i AS measurement_id, 1 + i % {persons} AS person_id,
       CAST(3000000 + i % 500 AS INTEGER) AS measurement_concept_id,
       DATE '2000-01-01' + CAST(i % 8000 AS INTEGER) AS measurement_date,
       TIMESTAMP '2000-01-01 10:00:00' + to_seconds(i % 700000000) AS measurement_datetime,
       32817 AS measurement_type_concept_id, 4172703 AS operator_concept_id,
       round((i % 10000) / 37.0, 2) AS value_as_number, 0 AS value_as_concept_id,
       8840 AS unit_concept_id, 1 + i % 997 AS visit_occurrence_id,
       'LAB' || (i % 500) AS measurement_source_value, 'mg/dL' AS unit_source_value
FROM range(1, {n} + 1) t(i)
"""
_QUERIES = {"person": _PERSON, "condition_occurrence": _CONDITION, "measurement": _MEASUREMENT}


def generate(folder: Path, rows: int) -> dict[str, int]:
    """Write the CSV files (upper-case names, as OHDSI ships them); rows per table."""
    counts = {table: max(1, int(rows * share)) for table, share in _SHARES.items()}
    persons = counts["person"]
    conn = duckdb.connect()
    try:
        for table, query in _QUERIES.items():
            sql = query.format(n=counts[table], persons=persons)
            target = folder / f"{table.upper()}.csv"
            conn.execute(f"COPY ({sql}) TO '{target}' (FORMAT csv, HEADER true)")
    finally:
        conn.close()
    return counts


def time_loader(folder: Path, scratch: Path, attempt: int) -> float:
    db = CdmDatabase.parse(str(scratch / f"loader_{attempt}.duckdb"))
    started = time.perf_counter()
    load_cdm(folder, db)
    return time.perf_counter() - started


def time_baseline(folder: Path, scratch: Path, attempt: int, *, keys: bool = False) -> float:
    """Plain CTAS per file; ``keys``: in one transaction, plus the primary key (the first
    column) that the CDM tables have, the part of ``load_cdm``'s cost that is no check.
    Timed from connect to close, as ``load_cdm`` is (closing checkpoints the file)."""
    started = time.perf_counter()
    conn = duckdb.connect(str(scratch / f"baseline_{attempt}_{keys}.duckdb"))
    try:
        if keys:
            conn.begin()
        for path in sorted(folder.glob("*.csv")):
            table = path.stem.lower()
            conn.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv('{path}')")
            if keys:
                conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({table}_id)")
        if keys:
            conn.commit()
    finally:
        conn.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000, help="rows in all tables")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ehds-bench-") as tmp:
        scratch = Path(tmp)
        folder = scratch / "csv"
        folder.mkdir()
        started = time.perf_counter()
        counts = generate(folder, args.rows)
        total = sum(counts.values())
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(
            f"generated {total:,} rows, {size / 1e6:,.0f} MB of CSV in "
            f"{time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{t} {n:,}" for t, n in counts.items())
        )
        runs: dict[str, list[float]] = {"ctas": [], "keys": [], "loader": []}
        for attempt in range(args.repeat):  # interleaved, so that drift hits all alike
            runs["ctas"].append(time_baseline(folder, scratch, attempt))
            runs["keys"].append(time_baseline(folder, scratch, attempt, keys=True))
            runs["loader"].append(time_loader(folder, scratch, attempt))
    best = {name: min(times) for name, times in runs.items()}
    labels = {
        "ctas": "read_csv CTAS, plain tables",
        "keys": "read_csv CTAS + primary keys",
        "loader": "load_cdm (typed, checked, keys)",
    }
    for name, label in labels.items():
        print(f"{label:<34} {best[name]:6.2f} s {total / best[name]:12,.0f} rows/s")
    ratio = best["ctas"] / best["loader"]
    print(f"{'ratio load_cdm / plain CTAS':<34} {ratio:6.2f}  (target >= 0.80)")
    print(f"{'ratio load_cdm / CTAS + keys':<34} {best['keys'] / best['loader']:6.2f}")


if __name__ == "__main__":
    main()
