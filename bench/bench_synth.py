"""Benchmark ``ehds omop synth``: time, rows, rows/s and peak memory, beside a reference.

    .venv/bin/python bench/bench_synth.py [--persons 1000000] [--profile fr] [--seed 0]

The reference, measured in the same run on the same machine, is what DuckDB alone needs to
write the same number of rows, table by table, with the same columns, types and primary
keys, when the rows come from a trivial ``SELECT ... FROM range(n)`` inside the engine: the
floor for any generator writing through DuckDB. The ratio (generator / reference) says how
much the synthesis itself costs on top. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate
from ehds.omop.synth.chunk import GENERATED_TABLES, IdCursor, build_chunk
from ehds.omop.synth.dates import Window
from ehds.omop.synth.profiles import PROFILES


def _peak_rss_mib() -> tuple[float, float]:
    """Peak resident set size of this process and of its waited-for children (MiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _generated_schemas(options: SynthOptions) -> dict[str, pa.Schema]:
    """The columns and types the generator writes, from a tiny chunk."""
    chunk = build_chunk(
        np.random.SeedSequence(0),
        1000,
        cursor=IdCursor.start(),
        profile=PROFILES[options.profile],
        window=Window.of(options.start_date, options.end_date),
        id_offset=0,
    )
    return {name: table.schema for name, table in chunk.tables.items()}


def _expression(field: pa.Field, position: int, table: str) -> str:
    if position == 0 and table != "death":
        return "CAST(i + 1 AS INTEGER)"
    if pa.types.is_date32(field.type):
        return "DATE '2014-01-01' + CAST(i % 3650 AS INTEGER)"
    if pa.types.is_floating(field.type):
        return "(i % 997) * 0.1"
    if pa.types.is_string(field.type):
        return "CASE WHEN i % 2 = 0 THEN 'M' ELSE 'F' END"
    if field.name == "person_id":
        return "CAST(i // 50 + 1 AS INTEGER)" if table != "death" else "CAST(i + 1 AS INTEGER)"
    return "CAST(i % 1000 AS INTEGER)"


def reference_seconds(
    path: Path, rows: Mapping[str, int], schemas: Mapping[str, pa.Schema], memory_limit: str | None
) -> float:
    """Seconds DuckDB takes to write ``rows`` trivial rows per table, same DDL and columns."""
    db = CdmDatabase.parse(str(path))
    started = time.perf_counter()
    with bulk_writer(db, memory_limit=memory_limit) as writer:
        writer.replace_tables(list(schemas))
        for table, schema in schemas.items():
            select = ", ".join(
                f"{_expression(field, i, table)} AS {field.name}" for i, field in enumerate(schema)
            )
            writer.insert_select(
                table, schema.names, f"SELECT {select} FROM range({rows[table]}) t(i)"
            )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--profile", default="fr", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=SynthOptions(persons=1).chunk_size)
    parser.add_argument("--memory-limit", default=SynthOptions(persons=1).memory_limit)
    parser.add_argument("--cprofile", type=Path, help="write cProfile stats of the run here")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args(argv)
    options = SynthOptions(
        persons=args.persons,
        seed=args.seed,
        profile=args.profile,
        chunk_size=args.chunk_size,
        memory_limit=args.memory_limit,
    )
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        target = CdmDatabase.parse(str(Path(tmp) / "synth.duckdb"))
        profiler = cProfile.Profile() if args.cprofile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        report = generate(target, options)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
        elapsed = time.perf_counter() - started
        own_rss, children_rss = _peak_rss_mib()
        size = os.path.getsize(target.duckdb_path) / 2**20
        print(report.render())
        print()
        print(f"persons              {args.persons:,} (profile {args.profile})")
        print(f"elapsed              {elapsed:.1f} s")
        per_person = report.total_rows / args.persons
        print(f"rows                 {report.total_rows:,} ({per_person:.1f} per person)")
        print(f"rows/s               {report.total_rows / elapsed:,.0f}")
        print(f"peak RSS             {own_rss:,.0f} MiB (children: {children_rss:,.0f} MiB)")
        print(f"database file        {size:,.0f} MiB")
        if args.skip_reference:
            return 0
        schemas = _generated_schemas(options)
        rows = {t: report.rows[t] for t in GENERATED_TABLES}
        reference = reference_seconds(
            Path(tmp) / "reference.duckdb", rows, schemas, options.memory_limit
        )
        print(
            f"reference            {reference:.1f} s for the same {sum(rows.values()):,} rows "
            "written by DuckDB from range() (same tables, columns, keys)"
        )
        print(f"ratio                {elapsed / reference:.2f} (generator / reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
