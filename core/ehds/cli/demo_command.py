"""``ehds demo``: the main job, a whole federation on this machine.

A CA and certificates, a health data access body (HDAB) that signs a data permit, a coordinator
and three country nodes (FR, FI, DK) as separate OS processes over mutual TLS, each node with
its own synthetic OMOP CDM and a policy pinning the HDAB's key. The researcher registers the
permit and submits five studies under it (counts, a characterization, an incidence, a
logistic regression and a Kaplan-Meier curve, the last two in several rounds); node FI's
policy holds incidence results for a human release, which its operator reviews and releases
with `ehds node review`; the researcher
gets per-node and pooled results; finally every process's audit chain is exported and checked
with `ehds audit verify` against the heads the other side recorded. Nothing is faked: the
processes and commands are the ones operators run, reading the files the demo writes under
``--workdir``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_COUNTRIES = ("fr", "fi", "dk")
CONNECT_TIMEOUT_S = 60.0
STUDY_TIMEOUT_S = 300.0
HELD_NODE = "node-fi"
HELD_ANALYSIS = "incidence"
"""The node whose policy holds one analysis's results for its operator's release."""
FHIR_NODE = "node-dk"
"""The node `ehds demo --fhir DIR` feeds from a FHIR export instead of the generator."""
RELEASED_BY = "fi-data-steward"


def _say(text: str) -> None:
    print(text, flush=True)


def wait_for_nodes(operator_config: Path, names: Sequence[str], timeout: float) -> list[str]:
    """Wait until every node in ``names`` holds a stream; the names the coordinator saw."""
    from ehds.coordinator.client import CoordinatorClient
    from ehds.coordinator.client_config import load_client_config
    from ehds.core.errors import StateError

    deadline = time.monotonic() + timeout
    with CoordinatorClient(load_client_config(operator_config)) as client:
        while True:
            connected = sorted(n.name for n in client.list_nodes() if n.connected)
            if set(names) <= set(connected):
                return connected
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(names) - set(connected)))
                raise StateError(f"nodes not connected after {timeout:.0f} s: {missing}")
            time.sleep(0.1)


def ehds(*args: str) -> str:
    """Run an ``ehds`` command as an operator would; its output (a failure raises)."""
    from ehds.core.errors import StateError

    done = subprocess.run(
        [sys.executable, "-m", "ehds.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise StateError(f"ehds {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _indented(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.rstrip().splitlines())


def wait_for_held(client: Any, study_id: str, node: str, timeout: float) -> None:
    """Wait until ``node`` holds the study's result for release."""
    from ehds.core.errors import StateError
    from ehds.federation.model import NodeTaskState

    deadline = time.monotonic() + timeout
    while True:
        study = client.get(study_id)
        states = {status.node_name: status.state for status in study.nodes}
        if states.get(node) is NodeTaskState.AWAITING_RELEASE:
            return
        if study.state.is_final or time.monotonic() > deadline:
            raise StateError(
                f"study {study_id}: {node} is {states.get(node)}, not awaiting release"
            )
        time.sleep(0.2)


def audit_all(federation: Any, folder: Path) -> list[str]:
    """Export every process's audit chain and verify each against the others' records."""
    folder.mkdir(parents=True, exist_ok=True)
    chains = {"coordinator": federation.coordinator_config}
    chains.update({name: node.config for name, node in federation.nodes.items()})
    exported = {}
    for name, config in chains.items():
        exported[name] = folder / f"{name}.jsonl"
        ehds("audit", "export", "--config", str(config), "-o", str(exported[name]))
    lines = []
    for name, config in chains.items():
        others = [str(path) for other, path in exported.items() if other != name]
        against = [arg for path in others for arg in ("--against", path)]
        lines.append(ehds("audit", "verify", "--config", str(config), *against).strip())
    return lines


def _progress_line(study: Any) -> str:
    ended = sum(1 for node in study.nodes if node.state.is_final)
    states = " ".join(f"{node.node_name}={node.state.name.lower()}" for node in study.nodes)
    return f"  {study.state.name.lower():<11} {ended}/{len(study.nodes)} nodes ended  {states}"


DEMO_ANALYSES = (
    ("counts", "1.0.0"),
    ("characterization", "1.0.0"),
    ("incidence", "1.0.0"),
    ("glm", "1.0.0"),
    ("kaplan_meier", "1.0.0"),
)
"""What the demo nodes' policies allow, and the studies the demo researcher runs."""

DEMO_COHORT: dict[str, Any] = {
    "name": "type 2 diabetes",
    "yaml": {
        "concept_sets": {
            "type 2 diabetes": {"include": [{"concept": 201826, "descendants": True}]},
        },
        "entry": {
            "events": [{"condition": "type 2 diabetes"}],
            "first_occurrence": True,
            "prior_observation_days": 365,
        },
        "demographics": {"age": {"min": 18}},
    },
}
"""Adults with a first diagnosis of type 2 diabetes after a year of observation (the demo's
cohort; the same definition as YAML is in the workdir's ``cohort-type2-diabetes.yaml``)."""


def _condition_cohort(name: str, *concepts: int) -> dict[str, Any]:
    """First occurrence ever of a condition concept set (with descendants)."""
    return {
        "name": name,
        "yaml": {
            "concept_sets": {
                name: {"include": [{"concept": c, "descendants": True} for c in concepts]}
            },
            "entry": {"events": [{"condition": name}], "first_occurrence": True},
            "exit": {"days_after_start": 0},
        },
    }


HYPERTENSION = _condition_cohort("hypertension", 320128)
FIRST_OUTPATIENT_VISIT = {
    "name": "first outpatient visit",
    "yaml": {
        "concept_sets": {"outpatient": {"include": [{"concept": 9202}]}},
        "entry": {"events": [{"visit": "outpatient"}], "first_occurrence": True},
        "exit": {"days_after_start": 0},
    },
}


def demo_studies() -> list[tuple[str, str, dict[str, Any]]]:
    """(title, analysis, parameters) of the studies the demo submits."""
    return [
        (
            "Type 2 diabetes: persons by sex and age band",
            "counts",
            {"cohort": DEMO_COHORT, "strata": ["sex", "age_band"]},
        ),
        (
            "Type 2 diabetes: characterization",
            "characterization",
            {
                "cohort": DEMO_COHORT,
                "top_n": 5,
                "domains": ["condition_occurrence", "drug_exposure"],
            },
        ),
        (
            "Type 2 diabetes: incidence per 1,000 person-years, 2015-2023",
            "incidence",
            {
                "outcome": {
                    "name": "type 2 diabetes (any age)",
                    "yaml": {k: v for k, v in DEMO_COHORT["yaml"].items() if k != "demographics"},
                },
                "start": "2015-01-01",
                "end": "2023-12-31",
                "washout_days": 365,
            },
        ),
        (
            "From the first outpatient visit: hypertension within 5 years (logistic regression)",
            "glm",
            {
                "family": "binomial",
                "target": FIRST_OUTPATIENT_VISIT,
                "outcome": {"cohort": HYPERTENSION, "start_day": 1, "end_day": 1825},
                "covariates": [
                    {"kind": "age", "name": "age_decades", "per_years": 10},
                    {"kind": "sex", "name": "female"},
                    {
                        "kind": "measurement",
                        "name": "systolic_bp",
                        "concept_ids": [3004249],
                        "start_day": -365,
                        "end_day": 0,
                    },
                ],
            },
        ),
        (
            "From the first outpatient visit to hypertension, by sex (Kaplan-Meier)",
            "kaplan_meier",
            {
                "target": FIRST_OUTPATIENT_VISIT,
                "outcome": HYPERTENSION,
                "strata": "sex",
                "interval_days": 180,
                "max_days": 1825,
            },
        ),
    ]


def _shown(analysis: str, row: Any) -> bool:
    """The rows the demo prints of each result (the full long table is one command away)."""
    if analysis == "counts":
        return bool(row.variable_name == "number subjects")
    if analysis == "characterization":
        return row.estimate_name in ("count", "percentage", "mean") and (
            row.variable_name in ("number subjects", "sex", "age")
            or (row.cdm_name == "pooled" and row.estimate_name == "percentage")
        )
    if analysis == "incidence":
        return bool(
            row.strata_name in ("overall", "calendar_year")
            and row.estimate_name
            in (
                "events",
                "incidence_1000_pys",
                "incidence_1000_pys_ci_lower",
                "incidence_1000_pys_ci_upper",
            )
            and row.cdm_name == "pooled"
        )
    return True


def render_regression(pooled: dict[str, Any]) -> str:
    """Odds ratios with Wald intervals (pooled exact fit), and the heterogeneity between nodes
    (DerSimonian-Laird over the per-node fits)."""
    lines = [
        f"pooled fit: n = {pooled['n']:,}, {pooled['rounds']} rounds, converged: "
        f"{pooled['converged']}, deviance {pooled['deviance']:,.2f}",
        f"{'term':<14}{'odds ratio':>11}{'95% CI':>20}{'p':>10}   between nodes",
    ]
    meta = {m["name"]: m for m in pooled["meta_analysis"]}
    for c in pooled["coefficients"]:
        m = meta.get(c["name"], {})
        spread = f"tau2 {m['tau2']:.4f}, I2 {m['i2']:.0%} (k={m['k']})" if "tau2" in m else "-"
        interval = f"{c['exp_ci_lower']:.3f}-{c['exp_ci_upper']:.3f}"
        lines.append(
            f"{c['name']:<14}{c['exp_estimate']:>11.3f}{interval:>20}{c['p']:>10.2g}   {spread}"
        )
    return "\n".join(lines)


def render_survival(pooled: dict[str, Any]) -> str:
    """The pooled curves on the agreed grid (every other cut), and the log-rank test."""
    place = pooled["places"]["pooled"]
    curves = {"overall": place["overall"], **place.get("strata", {})}
    lines = [
        f"grid agreed by every node: {len(pooled['cuts'])} intervals up to day {pooled['cuts'][-1]}"
    ]
    lines.append(f"{'day':>6}" + "".join(f"{name:>24}" for name in curves))
    step = 1 if len(pooled["cuts"]) <= 8 else 2
    for k in range(step - 1, len(pooled["cuts"]), step):
        cells = "".join(
            f"{c['survival'][k]:.3f} ({c['ci_lower'][k]:.3f}-{c['ci_upper'][k]:.3f})".rjust(24)
            for c in curves.values()
        )
        lines.append(f"{pooled['cuts'][k]:>6}{cells}")
    test = place.get("log_rank")
    if test:
        lines.append(
            f"log-rank test by sex: chi2 {test['chi2']:.2f}, df {test['df']}, p {test['p']:.3g}"
        )
    return "\n".join(lines)


def render_summarised(analysis: str, document: dict[str, Any]) -> str:
    """The demo's excerpt of a summarised result: what a researcher looks at first."""
    from ehds.analyses import results

    if analysis == "glm":
        return render_regression(document["pooled"])
    if analysis == "kaplan_meier":
        return render_survival(document["pooled"])
    rows = [row for row in results.document_rows(document) if _shown(analysis, row)]
    pooled = document.get("pooled") or {}
    return results.render(rows, pooled.get("suppressed_cells"))


def _demo(args: argparse.Namespace) -> int:
    if args.fl:
        from ehds.cli.demo_fl import demo_fl

        return demo_fl(args)
    import json

    import yaml

    from ehds.cli.local_federation import prepare, running
    from ehds.coordinator.client import CoordinatorClient
    from ehds.coordinator.client_config import load_client_config
    from ehds.federation.model import AnalysisRef, StudySpec

    root: Path = args.workdir.resolve() / "federation"
    started = time.monotonic()
    _say(f"[1/7] federation files under {root}")
    federation = prepare(
        root,
        DEMO_COUNTRIES,
        persons=args.persons,
        seed=args.seed,
        analyses=DEMO_ANALYSES,
        manual_release={HELD_NODE: [HELD_ANALYSIS]},
        fhir_sources={FHIR_NODE: args.fhir} if args.fhir is not None else None,
    )
    (root / "cohort-type2-diabetes.yaml").write_text(
        yaml.safe_dump(DEMO_COHORT["yaml"], sort_keys=False), encoding="utf-8"
    )
    _say(f"      CA, certificates for coordinator, {', '.join(federation.nodes)}, researcher")
    if args.fhir is None:
        _say(f"      a synthetic OMOP CDM per node ({args.persons:,} persons each, DuckDB)")
    else:
        synthetic = ", ".join(n for n in federation.nodes if n != FHIR_NODE)
        _say(f"      a synthetic OMOP CDM for {synthetic} ({args.persons:,} persons each, DuckDB)")
        _say(f"      {FHIR_NODE}'s CDM mapped from the FHIR export {args.fhir} (ehds etl fhir)")
    _say(
        f"      HDAB key {federation.hdab_public_key.name}, pinned in every node's policy.yaml;"
        f" {HELD_NODE} holds {HELD_ANALYSIS} results for its operator's release"
    )
    _say(
        _indented(
            ehds(
                "permit",
                "verify",
                str(federation.permit_file),
                "--hdab-key",
                str(federation.hdab_public_key),
            )
        )
    )
    with running(federation, nodes=False):
        coordinator = federation.processes["coordinator"]
        _say(
            f"[2/7] coordinator pid {coordinator.pid} on 127.0.0.1:{federation.coordinator_port}"
            f" (mutual TLS); permit {federation.permit_id} registered by demo-researcher"
        )
        for name in federation.nodes:
            node = federation.start_node(name)
            _say(f"      node {name} pid {node.pid} dialling out to the coordinator")
        connected = wait_for_nodes(
            federation.operator_config, list(federation.nodes), CONNECT_TIMEOUT_S
        )
        _say(f"[3/7] connected (identity from each node's certificate): {', '.join(connected)}")

        documents: list[tuple[str, str, dict[str, Any]]] = []
        with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
            submitted = []
            for title, analysis, parameters in demo_studies():
                spec = StudySpec(
                    title=title,
                    analysis=AnalysisRef(analysis, "1.0.0"),
                    parameters=json.dumps(parameters, sort_keys=True).encode(),
                    # A FHIR-fed node may hold a handful of patients: its refusals (too few
                    # rows to release) are then shown, not turned into a failed study.
                    min_nodes=len(federation.nodes) - (args.fhir is not None),
                    deadline_seconds=int(STUDY_TIMEOUT_S),
                    data_permit_id=federation.permit_id,
                )
                study = client.submit(spec)
                submitted.append((title, analysis, study.id))
                _say(
                    f"[4/7] study {study.id} submitted by demo-researcher under permit "
                    f"{federation.permit_id}: {title}"
                )
            held = next(
                study_id for _, analysis, study_id in submitted if analysis == HELD_ANALYSIS
            )
            wait_for_held(client, held, HELD_NODE, STUDY_TIMEOUT_S)
            node_config = str(federation.nodes[HELD_NODE].config)
            task_id = f"{held}.{HELD_NODE}"
            _say(f"[5/7] {HELD_NODE} holds study {held}'s result; the coordinator has none yet.")
            _say(f"      $ ehds node review list --config {node_config}")
            _say(_indented(ehds("node", "review", "list", "--config", node_config)))
            _say(f"      $ ehds node review show {task_id} (excerpt)")
            shown = ehds("node", "review", "show", task_id, "--config", node_config)
            _say(_indented("\n".join(shown.splitlines()[:12])))
            _say(f"      $ ehds node review release {task_id} --as {RELEASED_BY}")
            _say(
                _indented(
                    ehds(
                        "node",
                        "review",
                        "release",
                        task_id,
                        "--config",
                        node_config,
                        "--as",
                        RELEASED_BY,
                    )
                )
            )
            last = ""

            def show(snapshot: Any) -> None:
                nonlocal last
                line = _progress_line(snapshot)
                if line != last:
                    _say(line)
                    last = line

            for title, analysis, study_id in submitted:
                final = client.wait(study_id, timeout=STUDY_TIMEOUT_S, progress=show)
                if final.state.name != "COMPLETED":
                    _say(f"study {study_id} ended {final.state.name}: {final.state_reason}")
                    return 1
                documents.append((title, analysis, client.results(study_id)))
        _say("[6/7] results (cells under 10 suppressed at each node before release)")
        for title, analysis, document in documents:
            _say(f"\n== {title} (study {document.get('study_id', '')})")
            _say(render_summarised(analysis, document).rstrip())
        _say(
            "\nfull long tables: ehds study results STUDY_ID --format table|csv|parquet "
            f"--config {federation.researcher_config}"
        )
        _say(
            "\n[7/7] audit: each process's chain exported (ehds audit export) and verified "
            "against the heads the others recorded"
        )
        for line in audit_all(federation, root / "audit"):
            _say(f"      {line}")
    left = federation.running_pids()
    if left:
        print(f"ehds demo: processes still running: {left}", file=sys.stderr)
        return 1
    _say(f"federation stopped, no process left ({time.monotonic() - started:.1f} s in all)")
    return 0


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = areas.add_parser(
        "demo",
        help="run a local federation: a coordinator and FR/FI/DK nodes as separate processes",
    )
    demo.add_argument("--persons", type=int, default=20_000, help="persons per country CDM")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-output"),
        help="where the federation's files go (its federation/ folder is re-created)",
    )
    demo.add_argument(
        "--fl",
        action="store_true",
        help="train a model with Flower across the nodes instead of the analytics studies",
    )
    demo.add_argument(
        "--fhir",
        type=Path,
        metavar="DIR",
        help=f"feed {FHIR_NODE} from this FHIR R4 bulk export (NDJSON, gzip or not, or Bundles) "
        "through the FHIR connector instead of the synthetic generator",
    )
    demo.add_argument("--fl-rounds", type=int, default=5, help="Flower rounds (with --fl)")
    demo.set_defaults(handler=_demo)
