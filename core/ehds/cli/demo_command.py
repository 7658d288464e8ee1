"""``ehds demo``: the main job, a whole federation on this machine.

A CA and certificates, a coordinator and three country nodes (FR, FI, DK) as separate OS
processes over mutual TLS, each node with its own synthetic OMOP CDM; a researcher submits a
study (persons by sex and age band), watches it, and gets per-node and pooled results. Nothing
is faked: the processes are the ones an operator runs (`ehds coordinator serve`,
`ehds node serve`), reading configuration files the demo writes under ``--workdir``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_COUNTRIES = ("fr", "fi", "dk")
CONNECT_TIMEOUT_S = 60.0
STUDY_TIMEOUT_S = 300.0


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


def _progress_line(study: Any) -> str:
    ended = sum(1 for node in study.nodes if node.state.is_final)
    states = " ".join(f"{node.node_name}={node.state.name.lower()}" for node in study.nodes)
    return f"  {study.state.name.lower():<11} {ended}/{len(study.nodes)} nodes ended  {states}"


def render_person_count(document: dict[str, Any]) -> str:
    """Per-node and pooled counts side by side, one row per sex and age band."""
    nodes = [entry for entry in document["nodes"] if entry.get("result") is not None]
    names = [entry["node"] for entry in nodes]
    per_node: dict[str, dict[tuple[str, str], Any]] = {
        entry["node"]: {(c["sex"], c["age_band"]): c for c in entry["result"]["cells"]}
        for entry in nodes
    }
    header = ["sex", "age band", *names, "pooled"]
    rows: list[list[str]] = []
    for cell in document["pooled"]["cells"]:
        key = (cell["sex"], cell["age_band"])
        row = [cell["sex"], cell["age_band"]]
        for name in names:
            node_cell = per_node[name].get(key)
            row.append(
                "<suppressed>"
                if node_cell is None or node_cell["count"] is None
                else f"{node_cell['count']:,}"
            )
        pooled = f"{cell['count']:,}"
        row.append(pooled if cell.get("complete", True) else f"{pooled}+ (incomplete)")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [v.rjust(w) for v, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from ehds.cli.local_federation import prepare, running
    from ehds.coordinator.client import CoordinatorClient
    from ehds.coordinator.client_config import load_client_config
    from ehds.coordinator.study_file import load_study_file

    root: Path = args.workdir.resolve() / "federation"
    started = time.monotonic()
    _say(f"[1/5] federation files under {root}")
    federation = prepare(root, DEMO_COUNTRIES, persons=args.persons, seed=args.seed)
    _say(f"      CA, certificates for coordinator, {', '.join(federation.nodes)}, researcher")
    _say(f"      a synthetic OMOP CDM per node ({args.persons:,} persons each, DuckDB)")
    with running(federation, nodes=False):
        coordinator = federation.processes["coordinator"]
        _say(
            f"[2/5] coordinator pid {coordinator.pid} on 127.0.0.1:{federation.coordinator_port}"
            " (mutual TLS)"
        )
        for name in federation.nodes:
            node = federation.start_node(name)
            _say(f"      node {name} pid {node.pid} dialling out to the coordinator")
        connected = wait_for_nodes(
            federation.operator_config, list(federation.nodes), CONNECT_TIMEOUT_S
        )
        _say(f"[3/5] connected (identity from each node's certificate): {', '.join(connected)}")

        study_path = root / "study.yaml"
        study_path.write_text(
            "title: Persons by sex and age band\n"
            "analysis: {name: person_count, version: 1.0.0}\n"
            "parameters: {age_band_edges: [0, 18, 45, 65], reference_year: 2025}\n"
            f"min_nodes: {len(federation.nodes)}\n"
            "deadline_seconds: 300\n",
            encoding="utf-8",
        )
        spec = load_study_file(study_path)
        with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
            study = client.submit(spec)
            _say(f"[4/5] study {study.id} submitted by demo-researcher")
            last = ""

            def show(snapshot: Any) -> None:
                nonlocal last
                line = _progress_line(snapshot)
                if line != last:
                    _say(line)
                    last = line

            final = client.wait(study.id, timeout=STUDY_TIMEOUT_S, progress=show)
            if final.state.name != "COMPLETED":
                _say(f"study ended {final.state.name}: {final.state_reason}")
                return 1
            document = client.results(study.id)
        _say("[5/5] results: persons by sex and age band (cells under 10 suppressed at source)")
        for entry in document["nodes"]:
            _say(
                f"      {entry['node']}: {entry['state'].lower()}, vocabulary "
                f"{entry['vocabulary_version'] or 'unknown'}"
            )
        _say(render_person_count(document))
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
    demo.set_defaults(handler=_demo)
