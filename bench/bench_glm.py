"""Federated logistic regression: 10 covariates, 3 nodes of about 1,000,000 rows each.

    .venv/bin/python -m bench.bench_glm [--persons 1000000] [--workdir DIR]

What is timed: a researcher's ``glm`` study (binomial, 10 covariates: age per decade, sex and
eight conditions in each person's history before index; outcome: a myocardial infarction in
the year after index) through the live federation, exactly as in production: a coordinator
and three nodes as separate ``ehds`` processes (``ehds.cli.local_federation``, the demo's
launcher) with mutual TLS, signed assignments, permits, policy checks and audit chains at
every round. The wall time runs from ``Submit`` to the COMPLETED snapshot, and each round's
time from the snapshot that shows it to the one that shows the next (the researcher's view).

Round 0 builds each node's design table from its CDM (circe cohorts, Ibis features) and fits
the node's own model (per-node estimates, meta-analysis, warm start); every later round is one
Newton step: each node evaluates its score and information at the coordinator's coefficients
in one aggregate query over its design table.

The reference, measured in the same run on the same CDM: one node computing its score and
information ALONE (the analysis' ``compute`` for a round >= 1, in-process, on the design table
the federation built), median of 3. The ratio (time per federated round / that) is the
orchestration overhead: on two cores the three nodes share the CPU, so the floor of a round is
about 1.5 times one node's query (3 queries / 2 cores), not 1.

Figures are printed, never asserted; the exit status is non-zero only when the benchmark
could not measure (a study failed, a process died).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.process_probes import machine_line, metric_value, scrape, verdict, wait_until

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import duckdb_session
from ehds.analyses.glm.analysis import Glm
from ehds.analyses.iteration import round_parameters
from ehds.cli.local_federation import LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState

TARGET_TOTAL_S: Final = 30.0
SEED: Final = 7
COUNTRIES: Final = ("fr", "fi", "dk")
MIN_CELL: Final = 10
CONNECT_TIMEOUT_S: Final = 120.0
STUDY_TIMEOUT_S: Final = 900.0
CACHE: Final = Path(".bench/glm")


def _cohort(name: str, domain: str, concepts: Sequence[int], *, first: bool) -> dict[str, Any]:
    return {
        "name": name,
        "yaml": {
            "concept_sets": {
                name: {"include": [{"concept": c, "descendants": True} for c in concepts]}
            },
            "entry": {"events": [{domain: name}], "first_occurrence": first},
            "exit": {"days_after_start": 0},
        },
    }


HISTORY: Final = {"start_day": -36_500, "end_day": 0}
CONDITIONS: Final = {
    "hypertension": 320128,
    "type2_diabetes": 201826,
    "atrial_fibrillation": 313217,
    "copd": 255573,
    "osteoarthritis": 80180,
    "hypothyroidism": 140673,
    "osteoporosis": 80502,
    "asthma": 317009,
}


def study_parameters() -> dict[str, Any]:
    """Every person with a visit (index: the first), 10 covariates, MI within a year."""
    return {
        "family": "binomial",
        "target": _cohort("first_visit", "visit", [9201, 9202, 9203], first=True),
        "outcome": {
            "cohort": _cohort("myocardial_infarction", "condition", [4329847], first=False),
            "start_day": 1,
            "end_day": 365,
        },
        "covariates": [
            {"name": "age_decades", "kind": "age", "per_years": 10},
            {"name": "female", "kind": "sex"},
            *(
                {"name": name, "kind": "condition", "concept_ids": [concept], **HISTORY}
                for name, concept in CONDITIONS.items()
            ),
        ],
    }


class _Workspace:
    """The node's workspace naming, for the in-process reference (same table as the node)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def table_name(self, purpose: str) -> str:
        return self.name


def run_federated(federation: LocalFederation) -> tuple[float, list[float], dict[str, Any]]:
    """(wall time, time of each round, result document) of one study."""
    with running(federation):
        coordinator = federation.processes["coordinator"]

        def all_connected() -> bool:
            text = scrape(coordinator.health_port)
            return metric_value(text, "ehds_coordinator_connected_nodes") == len(COUNTRIES)

        wait_until(all_connected, timeout=CONNECT_TIMEOUT_S, what="3 nodes connected")
        with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
            spec = StudySpec(
                title="bench: logistic regression, 10 covariates",
                analysis=AnalysisRef(Glm.name, Glm.version),
                parameters=json.dumps(study_parameters(), sort_keys=True).encode(),
                min_nodes=len(COUNTRIES),
                deadline_seconds=int(STUDY_TIMEOUT_S),
                data_permit_id=federation.permit_id,
            )
            marks: list[float] = []
            seen_round = -1

            def progress(snapshot: Any) -> None:
                nonlocal seen_round
                if snapshot.round != seen_round:
                    seen_round = snapshot.round
                    marks.append(time.perf_counter())

            started = time.perf_counter()
            study = client.submit(spec)
            final = client.wait(study.id, timeout=STUDY_TIMEOUT_S, progress=progress)
            ended = time.perf_counter()
            if final.state is not StudyState.COMPLETED:
                raise SystemExit(f"the study ended {final.state.name}: {final.state_reason}")
            document = client.results(study.id)
        dead = [name for name, process in federation.processes.items() if not process.alive()]
        if dead:
            raise SystemExit(f"exited during the run: {', '.join(dead)}")
    bounds = [started, *marks[1:], ended]
    rounds = [b - a for a, b in itertools.pairwise(bounds)]
    return ended - started, rounds, document


def node_alone(
    federation: LocalFederation, coefficients: list[float], repeat: int
) -> tuple[float, float]:
    """(build + local fit, median score+information) of node-fr alone, in-process."""
    glm = Glm()
    node = federation.nodes["node-fr"]
    base = glm.encode_parameters(glm.parse_parameters(study_parameters()))
    with (
        tempfile.TemporaryDirectory(prefix="ehds-bench-glm-") as tmp,
        duckdb_session(node.cdm, Path(tmp) / "bench-node.duckdb") as engine,
    ):
        ctx = ComputeContext(
            cdm=None,
            min_cell_count=MIN_CELL,
            engine=engine,
            workspace=_Workspace("bench_glm_design"),
            study_id="bench",
        )
        started = time.perf_counter()
        glm.compute(glm.parse_parameters(base), ctx)
        build = time.perf_counter() - started
        round_one = glm.parse_parameters(round_parameters(base, 1, {"coefficients": coefficients}))
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            glm.compute(round_one, ctx)
            times.append(time.perf_counter() - started)
    return build, statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and state here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir: Path = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehds-bench-")))
        print(
            f"preparing 3 nodes of {args.persons:,} persons (CDMs cached in {CACHE}) ...",
            file=sys.stderr,
            flush=True,
        )
        federation = prepare(
            workdir / "federation",
            COUNTRIES,
            persons=args.persons,
            seed=SEED,
            analyses=[(Glm.name, Glm.version)],
            min_cell_count=MIN_CELL,
            cdm_cache=CACHE,
        )
        total, rounds, document = run_federated(federation)
        print(
            f"federated: {total:.2f} s, rounds " + ", ".join(f"{r:.2f} s" for r in rounds),
            file=sys.stderr,
            flush=True,
        )
        pooled = document["pooled"]
        coefficients = [c["estimate"] for c in pooled["coefficients"]]
        build, alone = node_alone(federation, coefficients, args.repeat)
    newton = rounds[1:]
    per_round = statistics.median(newton) if newton else float("nan")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(machine_line())
    sizes = ", ".join(f"{entry['node']} {entry['n']:,}" for entry in pooled["per_node"])
    print(f"glm binomial, {len(coefficients)} terms, n = {pooled['n']:,} rows ({sizes})")
    print(
        f"rounds: {len(rounds)} (round 0 + {len(newton)} Newton rounds), "
        f"converged: {pooled['converged']}"
    )
    print(
        f"total, submit to COMPLETED: {total:.2f} s (target < {TARGET_TOTAL_S:.0f} s: "
        f"{verdict(total < TARGET_TOTAL_S)})"
    )
    print("round times: " + ", ".join(f"{r:.2f} s" for r in rounds))
    print(
        f"round 0 (design table from the CDM + local fit, 3 nodes): {rounds[0]:.2f} s; "
        f"node-fr alone: {build:.2f} s"
    )
    print(
        f"Newton round (median): {per_round * 1000:.0f} ms; reference, one node's score + "
        f"information alone: {alone * 1000:.0f} ms (median of {args.repeat}); "
        f"overhead ratio {per_round / alone:.2f}"
    )
    print(f"peak RSS of the largest child process: {peak:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
