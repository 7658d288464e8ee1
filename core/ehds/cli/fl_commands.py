"""``ehds fl``: Flower app bundles and a researcher's local dry run of an fl study.

    ehds fl build APP_DIR -o X.fab       # a reproducible FAB; prints its SHA-256
    ehds fl digest X.fab                 # name, version and SHA-256 of a FAB
    ehds fl simulate STUDY.yaml --cdm URL [--nodes 3] [--app APP_DIR|X.fab]

``simulate`` builds the study's feature extract from a local CDM with the code a node runs,
splits its rows into ``--nodes`` partitions and runs the study's app on Flower's simulation
engine (Ray; the ``fl-sim`` extra). The app is the FAB in the study file, else ``--app``, else
the built-in app of the study's ``app.name``. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from ehds.core.errors import InputError


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fl = areas.add_parser("fl", help="Flower app bundles and local federated-learning dry runs")
    commands = fl.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="bundle a Flower app directory into a FAB")
    build.add_argument("app_dir", type=Path, metavar="APP_DIR")
    build.add_argument("-o", "--output", type=Path, required=True, metavar="X.fab")
    build.set_defaults(handler=_build)
    digest = commands.add_parser("digest", help="print a FAB's name, version and SHA-256")
    digest.add_argument("fab", type=Path, metavar="X.fab")
    digest.set_defaults(handler=_digest)
    simulate = commands.add_parser(
        "simulate", help="run an fl study on Flower's simulation engine over a local CDM"
    )
    simulate.add_argument("study", type=Path, metavar="STUDY.yaml")
    simulate.add_argument("--cdm", required=True, help="the local CDM (DuckDB file or URL)")
    simulate.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    simulate.add_argument("--app", type=Path, help="an app directory or .fab to run instead")
    simulate.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may use")
    simulate.add_argument("--work-dir", type=Path, help="keep the extract and partitions here")
    simulate.set_defaults(handler=_simulate)


def _build(args: argparse.Namespace) -> int:
    from ehds.fl.bundle import BundleError, build_fab, fab_digest, read_fab_info

    try:
        fab = build_fab(args.app_dir)
        info = read_fab_info(fab)
    except (BundleError, OSError) as exc:
        raise InputError(f"{args.app_dir}: {exc}") from None
    output: Path = args.output
    output.write_bytes(fab)
    print(f"{info.name} {info.version} -> {output}")
    print(f"sha256: {fab_digest(fab)}")
    return 0


def _digest(args: argparse.Namespace) -> int:
    from ehds.fl.bundle import BundleError, fab_digest, read_fab_info

    try:
        fab = Path(args.fab).read_bytes()
        info = read_fab_info(fab)
    except (BundleError, OSError) as exc:
        raise InputError(f"{args.fab}: {exc}") from None
    print(f"{info.name} {info.version}")
    print(f"sha256: {fab_digest(fab)}")
    return 0


def _study_parameters(path: Path) -> Any:
    import yaml
    from pydantic import ValidationError

    from ehds.analyses.fl.parameters import FlParameters

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("parameters"), dict):
        raise InputError(f"{path}: a study file with a 'parameters' mapping is expected")
    try:
        return FlParameters.model_validate(document["parameters"])
    except ValidationError as exc:
        raise InputError(f"{path}: parameters: {exc}") from None


def _app_fab(params: Any, app: Path | None) -> bytes:
    from ehds.fl.builtin import BUILTIN_APPS, builtin_fab
    from ehds.fl.bundle import build_fab

    if app is not None:
        return build_fab(app) if app.is_dir() else app.read_bytes()
    if params.app.fab is not None:
        fab: bytes = params.app.fab_bytes()
        return fab
    if params.app.name in BUILTIN_APPS:
        return builtin_fab(params.app.name)
    raise InputError(f"the study has no app bundle and {params.app.name!r} is not built in")


def _simulate(args: argparse.Namespace) -> int:
    from ehds.fl.bundle import fab_digest, read_fab_info
    from ehds.fl.simulation import simulate_study

    if args.nodes < 1:
        raise InputError("--nodes must be at least 1")
    params = _study_parameters(args.study)
    fab = _app_fab(params, args.app)
    info = read_fab_info(fab)
    digest = fab_digest(fab)
    print(f"app: {info.name} {info.version} sha256 {digest}")
    if digest != params.app.sha256:
        print("note: this bundle's SHA-256 differs from the study's app.sha256")
    with tempfile.TemporaryDirectory(prefix="ehds-fl-simulate-") as scratch:
        work_dir = args.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        summary, result = simulate_study(
            params, args.cdm, args.nodes, work_dir, fab=fab, num_cpus=args.num_cpus
        )
    print(
        f"extract: {summary.rows} rows, {summary.events} events; features: "
        + ", ".join(summary.columns[1:])
    )
    print("partitions: " + ", ".join(str(n) for n in result.partition_rows))
    for row in result.rounds:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in row["aggregate"].items())
        print(f"round {row['round']:>3} {row['type']:<9} {metrics}")
    model = result.state.get("ehds.model")
    names = result.state.get("ehds.model-info", {}).get("feature-names")
    if model is not None and isinstance(names, list) and "coef" in model:
        terms = zip(["intercept", *names], [*model["intercept"], *model["coef"]], strict=True)
        print("model: " + "  ".join(f"{n} {v:.4f}" for n, v in terms))
    privacy = result.state.get("ehds.privacy")
    if privacy is not None:
        print(
            f"privacy: node-level DP, epsilon {privacy['epsilon']:.4f} at delta "
            f"{privacy['delta']:g} ({privacy['releases']} releases; {privacy['accountant']})"
        )
    return 0
