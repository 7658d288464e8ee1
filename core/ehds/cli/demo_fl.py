"""``ehds demo --fl``: the demo federation trains a model with Flower.

The same throw-away federation as ``ehds demo`` (a coordinator and FR, FI, DK nodes as OS
processes over mutual TLS, synthetic CDMs, an HDAB-signed permit), running one
federated-learning study end to end: the built-in Flower app ``ehds-logreg`` (a logistic
regression, FedAvg) predicts hypertension within five years of a first outpatient visit from
age, sex and the latest systolic blood pressure. Each node's policy allows that app by name,
version and SHA-256; each node builds its feature extract from its own CDM and trains in a
network-isolated worker; the coordinator runs the ServerApp. The demo prints every round's
metrics, aggregated and per node, the final model and its AUC, and verifies the audit chains.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ehds.cli.demo_command import (
    CONNECT_TIMEOUT_S,
    DEMO_COUNTRIES,
    FIRST_OUTPATIENT_VISIT,
    HYPERTENSION,
    _indented,
    _say,
    audit_all,
    wait_for_nodes,
)

FL_APP = "ehds-logreg"
FL_ANALYSIS = ("fl", "1.0.0")
FL_TIMEOUT_S = 600.0
FL_COVARIATES: list[dict[str, Any]] = [
    {"kind": "age", "name": "age_decades", "per_years": 10},
    {"kind": "sex", "name": "female"},
    {
        "kind": "measurement",
        "name": "systolic_bp",
        "concept_ids": [3004249],
        "start_day": -365,
        "end_day": 0,
    },
]


def fl_parameters(
    fab: bytes,
    *,
    name: str = FL_APP,
    version: str = "1.0.0",
    rounds: int = 5,
    run_config: Mapping[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
    covariates: Iterable[Mapping[str, Any]] = FL_COVARIATES,
) -> dict[str, Any]:
    """The parameters of the demo's FL study (tests and benchmarks reuse them)."""
    from ehds.fl.bundle import fab_digest

    parameters: dict[str, Any] = {
        "app": {
            "name": name,
            "version": version,
            "sha256": fab_digest(fab),
            "fab": base64.b64encode(fab).decode("ascii"),
        },
        "target": FIRST_OUTPATIENT_VISIT,
        "outcome": {"cohort": HYPERTENSION, "start_day": 1, "end_day": 1825},
        "covariates": list(covariates),
        "rounds": rounds,
        "run_config": dict(run_config or {}),
    }
    if privacy is not None:
        parameters["privacy"] = dict(privacy)
    return parameters


def fl_policy(
    apps: Iterable[tuple[str, str, bytes]],
    *,
    min_rows: int = 100,
    min_events: int = 10,
    release_metrics: bool = True,
) -> dict[str, Any]:
    """A node policy's ``fl`` section allowing ``apps`` ((name, version, FAB) each)."""
    from ehds.fl.bundle import fab_digest

    return {
        "fl": {
            "apps": [
                {"name": name, "version": version, "sha256": fab_digest(fab)}
                for name, version, fab in apps
            ],
            "min_rows": min_rows,
            "min_events": min_events,
            "release_metrics": release_metrics,
        }
    }


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_training(pooled: Mapping[str, Any]) -> str:
    """Every round's metrics (aggregate, then per node), the final model and its privacy."""
    training = pooled.get("training", {})
    lines = []
    for node, joined in sorted(pooled.get("joined", {}).items()):
        lines.append(
            f"joined: {node}: {joined.get('rows')} rows, {joined.get('events')} with the "
            f"outcome, worker isolation {joined.get('isolation')}"
        )
    for entry in training.get("rounds", []):
        aggregate = entry.get("aggregate", {})
        if not aggregate:
            continue
        shown = ", ".join(f"{k} {_number(v)}" for k, v in sorted(aggregate.items()))
        lines.append(f"round {entry.get('round'):>3} {entry.get('type'):<9} {shown}")
        for node, values in sorted(entry.get("nodes", {}).items()):
            per_node = ", ".join(f"{k} {_number(v)}" for k, v in sorted(values.items()))
            lines.append(f"{'':>10}{node:<9} {per_node}")
    model = training.get("model", {})
    info = training.get("state", {}).get("ehds.model-info", {})
    lines.append(f"final model ({model.get('source')}): {json.dumps(info, sort_keys=True)}")
    for record in model.get("arrays", {}).values():
        for key, array in record.items():
            values = ", ".join(f"{v:.4f}" for v in array.get("values", [])[:12])
            lines.append(f"  {key}: [{values}]")
    privacy = training.get("state", {}).get("ehds.privacy")
    if privacy:
        lines.append(f"node-level DP: {json.dumps(privacy, sort_keys=True)}")
    return "\n".join(lines)


def final_auc(pooled: Mapping[str, Any]) -> float | None:
    """The last evaluate round's AUC (held-out rows at each node, weighted by their number)."""
    for entry in reversed(pooled.get("training", {}).get("rounds", [])):
        auc = entry.get("aggregate", {}).get("auc")
        if entry.get("type") == "evaluate" and isinstance(auc, int | float):
            return float(auc)
    return None


def demo_fl(args: argparse.Namespace) -> int:
    from ehds.cli.local_federation import prepare, running
    from ehds.coordinator.client import CoordinatorClient
    from ehds.coordinator.client_config import load_client_config
    from ehds.federation.model import AnalysisRef, StudySpec
    from ehds.fl.builtin import builtin_fab

    root: Path = args.workdir.resolve() / "federation"
    started = time.monotonic()
    fab = builtin_fab(FL_APP)
    policy = fl_policy([(FL_APP, "1.0.0", fab)])
    _say(f"[1/5] federation files under {root}")
    federation = prepare(
        root,
        DEMO_COUNTRIES,
        persons=args.persons,
        seed=args.seed,
        analyses=(FL_ANALYSIS,),
        policy_extra={f"node-{country}": policy for country in DEMO_COUNTRIES},
    )
    _say(f"      a synthetic OMOP CDM per node ({args.persons:,} persons each, DuckDB)")
    digest = policy["fl"]["apps"][0]["sha256"]
    _say(f"      built-in Flower app {FL_APP} 1.0.0, bundle SHA-256 {digest}")
    _say("      allowed by name, version and SHA-256 in every node's policy.yaml")
    with running(federation, nodes=False):
        coordinator = federation.processes["coordinator"]
        _say(f"[2/5] coordinator pid {coordinator.pid} on 127.0.0.1:{federation.coordinator_port}")
        for name in federation.nodes:
            node = federation.start_node(name)
            _say(f"      node {name} pid {node.pid} dialling out to the coordinator")
        connected = wait_for_nodes(
            federation.operator_config, list(federation.nodes), CONNECT_TIMEOUT_S
        )
        _say(f"      connected: {', '.join(connected)}")
        parameters = fl_parameters(fab, rounds=args.fl_rounds)
        with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
            study = client.submit(
                StudySpec(
                    title="Hypertension within 5 years of a first outpatient visit (Flower)",
                    analysis=AnalysisRef(*FL_ANALYSIS),
                    parameters=json.dumps(parameters, sort_keys=True).encode(),
                    min_nodes=len(federation.nodes),
                    deadline_seconds=int(FL_TIMEOUT_S),
                    data_permit_id=federation.permit_id,
                )
            )
            _say(
                f"[3/5] FL study {study.id} submitted under permit {federation.permit_id}: "
                f"{FL_APP}, FedAvg, {args.fl_rounds} rounds"
            )
            last = -1

            def show(snapshot: Any) -> None:
                nonlocal last
                if snapshot.round != last:
                    last = snapshot.round
                    what = "join (extract, bundle check, worker)" if last == 0 else "messages"
                    _say(f"      round {last}: {what} at {len(snapshot.nodes)} nodes")

            final = client.wait(study.id, timeout=FL_TIMEOUT_S, progress=show)
            if final.state.name != "COMPLETED":
                _say(f"study {study.id} ended {final.state.name}: {final.state_reason}")
                return 1
            document = client.results(study.id)
        _say("[4/5] training, per round (metrics leave a node only where its policy allows)")
        _say(_indented(render_training(document["pooled"])))
        auc = final_auc(document["pooled"])
        _say(f"      final AUC: {auc:.4f}" if auc is not None else "      final AUC: not reported")
        _say(f"      $ ehds study results {study.id} --config {federation.researcher_config}")
        _say("[5/5] audit: each process's chain exported and verified against the others'")
        for line in audit_all(federation, root / "audit"):
            _say(f"      {line}")
    left = federation.running_pids()
    if left:
        print(f"ehds demo: processes still running: {left}", file=sys.stderr)
        return 1
    _say(f"federation stopped, no process left ({time.monotonic() - started:.1f} s in all)")
    return 0


__all__ = ["demo_fl", "final_auc", "fl_parameters", "fl_policy", "render_training"]
