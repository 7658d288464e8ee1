"""``ehds cohort``: check a cohort definition, count it on a node's own DuckDB CDM.

For operators and cohort authors: ``check`` validates a YAML cohort or an ATLAS JSON file
and prints what it means; ``count`` prints how many persons and entries it has on a local
CDM (the operator's own data: no disclosure control applies, nothing leaves the machine).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ehds.core.errors import InputError


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cohort = areas.add_parser("cohort", help="check a cohort definition or count it locally")
    commands = cohort.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check", help="validate a cohort file (.yaml or ATLAS .json) and describe it"
    )
    check.add_argument("file", type=Path, help="a YAML cohort or an ATLAS/Circe JSON file")
    check.set_defaults(handler=_check)
    count = commands.add_parser("count", help="count a cohort on a local DuckDB CDM")
    count.add_argument("file", type=Path, help="a YAML cohort or an ATLAS/Circe JSON file")
    count.add_argument("--db", type=Path, required=True, help="the CDM DuckDB file (read only)")
    count.set_defaults(handler=_count)


def _check(args: argparse.Namespace) -> int:
    from ehds.analyses.cohorts import describe, load_cohort_file  # circe loads slowly

    print(describe(load_cohort_file(args.file)), end="")
    return 0


def _count(args: argparse.Namespace) -> int:
    from ehds.analyses.cohorts import drop, load_cohort_file, materialize
    from ehds.analyses.engine import duckdb_session

    spec = load_cohort_file(args.file)
    db: Path = args.db
    if not db.is_file():
        raise InputError(f"{db}: no such CDM file")
    # the cohort table lives in a throw-away results file: the CDM is attached read-only
    with (
        tempfile.TemporaryDirectory(prefix="ehds-cohort-") as scratch,
        duckdb_session(db, Path(scratch) / "cohort_results.duckdb") as engine,
    ):
        table = materialize(engine, spec)
        try:
            (row,) = engine.collect(
                table.aggregate(persons=table.person_id.nunique(), entries=table.count()),
                max_rows=1,
            )
        finally:
            drop(engine, table)
    print(f"cohort: {spec.name}")
    print(f"persons: {row['persons']}")
    print(f"entries: {row['entries']}")
    return 0
