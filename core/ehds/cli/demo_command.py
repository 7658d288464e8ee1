"""``ehds demo``: the main job, run on the embedded default engine.

For now it builds a synthetic OMOP CDM on DuckDB for one country profile and prints its
profile; the federation issues extend it to a local coordinator with three country nodes.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from ehds.omop.database import CdmDatabase
    from ehds.omop.profile import profile_cdm
    from ehds.omop.synth import SynthOptions, generate

    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    db = CdmDatabase.parse(str(workdir / f"demo-{args.profile}.duckdb"))
    report = generate(db, SynthOptions(persons=args.persons, seed=args.seed, profile=args.profile))
    print(report.render())
    print()
    print(profile_cdm(db).render())
    return 0


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = areas.add_parser(
        "demo", help="build a demo OMOP CDM on the embedded engine and print its profile"
    )
    demo.add_argument("--persons", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--profile", choices=["fr", "fi", "dk"], default="fr")
    demo.add_argument(
        "--workdir", type=Path, default=Path("demo-output"), help="where the CDM file goes"
    )
    demo.set_defaults(handler=_demo)
