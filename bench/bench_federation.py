"""Dispatch-to-aggregate round trip of a trivial analysis across 10 nodes, beside Flower's.

    .venv/bin/python -m bench.bench_federation [--nodes 10] [--studies 50] [--warmup 3]
        [--analysis test.sleep|person_count]... [--persons 200] [--skip-flower]
        [--flower-rounds 5] [--workdir DIR]

What is timed, and why that: the researcher's view of a study, from the moment the client
calls ``Submit`` to the moment its ``Watch`` stream delivers the COMPLETED snapshot. That span
holds everything the federation does for one study: validation and storage at the
coordinator, the push of one TaskAssignment down each node's stream, each node's ack, policy
check, computation and result upload, the coordinator storing 10 results and running the
analysis' ``aggregate``, and the snapshot pushed back. Fetching the result document is timed
separately (``results``), because Flower's round ends when its ServerApp has the replies.
Ours is timed from outside (the researcher's process, two RPCs included), Flower's from
inside its ServerApp: the comparison, if anything, favours Flower.

Everything runs as it would in production, on loopback: the coordinator and each node are
separate ``ehds`` OS processes started by ``ehds.cli.local_federation`` (the demo's own
launcher), with mutual TLS on every connection and real configuration files; each node has
its own small synthetic CDM. Studies are submitted one after the other (after a few warm-up
studies that are not counted), each to all nodes with ``min_nodes`` equal to their number.

Two analyses, in one federation: ``test.sleep`` with 0 seconds, which touches no data (the
floor of the federation itself, and the counterpart of the Flower app, whose nodes answer a
count from their configuration) is the headline; ``person_count`` on each node's CDM (the
demo's analysis) shows what one real query adds. The CPU time each process spent per study
is printed beside the times: on a machine with two cores, a round trip cannot be shorter
than the CPU work of all its processes divided by two, so that is where to look first.

Flower's figure comes from ``bench/flower_baseline.py`` in the same run on the same machine
(``flower-superlink``, ``flower-supernode`` x N and ``flwr run`` as separate OS processes),
and the ratio printed is Flower's median over ours. Figures are printed, never asserted: the
exit status is non-zero only when the benchmark could not measure (a study failed, a process
died), never for a missed target.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.flower_baseline import FlowerResult, format_result, measure_flower_round_trip
from bench.process_probes import (
    Summary,
    cpu_seconds,
    load_average,
    machine_line,
    metric_value,
    scrape,
    table,
    verdict,
    wait_until,
)

from ehds.analyses.base import canonical_json
from ehds.cli.local_federation import LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

TARGET_MEDIAN_S: Final = 0.050
TARGET_RATIO: Final = 100.0
SEED: Final = 42
ID_STRIDE: Final = 10_000_000
"""Person ids of the i-th node (from 1) start at i * ID_STRIDE: the nodes' CDMs stay disjoint."""
PROFILES: Final = ("fr", "fi", "dk")
STUDY_TIMEOUT_S: Final = 60.0
CONNECT_TIMEOUT_S: Final = 60.0

ANALYSES: Final[dict[str, tuple[AnalysisRef, dict[str, Any]]]] = {
    # No data touched: the floor of the protocol and the processes themselves, and the
    # counterpart of the Flower app, whose nodes answer a count from their configuration.
    "test.sleep": (AnalysisRef("test.sleep", "1.0.0"), {"seconds": 0.0}),
    # The demo's analysis: one GROUP BY on each node's (tiny) CDM, small cells suppressed.
    "person_count": (AnalysisRef("person_count", "1.0.0"), {}),
}
DEFAULT_ANALYSES: Final = ("test.sleep", "person_count")


class BenchmarkError(RuntimeError):
    """The round trip could not be measured (a study did not complete, a process died)."""


@dataclass(frozen=True)
class OurResult:
    """One analysis' studies. CPU figures are per study, from /proc, over the counted studies:
    on a machine with few cores they say which process the round trip waits for."""

    analysis: AnalysisRef
    nodes: int
    round_trips: list[float]
    results_downloads: list[float]
    warmup: list[float]
    coordinator_latency_mean: float | None
    coordinator_cpu: float
    nodes_cpu: float
    client_cpu: float


def node_countries(count: int) -> list[str]:
    """Short distinct names: ``prepare`` names node i ``node-nNN``."""
    return [f"n{index + 1:02d}" for index in range(count)]


def fill_cdm_cache(cache: Path, countries: Sequence[str], persons: int) -> None:
    """Generate one small CDM per node where ``prepare`` looks for cached ones.

    Why through the cache: ``prepare`` uses a node's country name as its synthetic profile,
    and only fr, fi and dk exist. Ten nodes need ten names, so the CDMs are made here (the
    three profiles in turn, disjoint person ids) under the file name ``prepare`` reads from
    ``cdm_cache``: ``{country}-{persons}-{seed}.duckdb``.
    """
    cache.mkdir(parents=True, exist_ok=True)
    for index, country in enumerate(countries):
        path = cache / f"{country}-{persons}-{SEED}.duckdb"
        if path.exists():
            continue
        partial = path.with_suffix(".partial.duckdb")
        partial.unlink(missing_ok=True)
        generate(
            CdmDatabase.parse(str(partial)),
            SynthOptions(
                persons=persons,
                seed=SEED + index,
                profile=PROFILES[index % len(PROFILES)],
                id_offset=(index + 1) * ID_STRIDE,
            ),
        )
        partial.replace(path)


def _histogram_totals(text: str, analysis: AnalysisRef) -> tuple[float, float]:
    labels = {"analysis": str(analysis)}
    total = metric_value(text, "ehds_coordinator_task_latency_seconds_sum", labels) or 0.0
    count = metric_value(text, "ehds_coordinator_task_latency_seconds_count", labels) or 0.0
    return total, count


def run_one(client: CoordinatorClient, spec: StudySpec, nodes: int) -> tuple[float, float]:
    """One study: (submit -> COMPLETED seen by Watch, results download) in seconds."""
    started = time.perf_counter()
    study = client.submit(spec)
    final = client.wait(study.id, timeout=STUDY_TIMEOUT_S)
    round_trip = time.perf_counter() - started
    if final.state is not StudyState.COMPLETED:
        raise BenchmarkError(
            f"study {final.id} ended {final.state.name}: {final.state_reason or 'no reason'}"
        )
    started = time.perf_counter()
    document = client.results(final.id)
    download = time.perf_counter() - started
    contributors = document.get("contributors")
    if not isinstance(contributors, list) or len(contributors) != nodes:
        raise BenchmarkError(
            f"study {final.id}: {contributors!r} contributed, expected all {nodes} nodes"
        )
    return round_trip, download


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_analysis(
    federation: LocalFederation,
    client: CoordinatorClient,
    analysis: str,
    *,
    nodes: int,
    studies: int,
    warmup: int,
) -> OurResult:
    ref, parameters = ANALYSES[analysis]
    spec = StudySpec(
        title=f"bench {ref}",
        analysis=ref,
        parameters=canonical_json(parameters),
        min_nodes=nodes,
        deadline_seconds=int(STUDY_TIMEOUT_S),
        data_permit_id=federation.permit_id,
    )
    coordinator = federation.processes["coordinator"]
    node_pids = [p.pid for name, p in federation.processes.items() if name != "coordinator"]
    warm = [run_one(client, spec, nodes)[0] for _ in range(warmup)]
    before = _histogram_totals(scrape(coordinator.health_port), ref)
    cpu_before = (
        cpu_seconds(coordinator.pid),
        sum(cpu_seconds(pid) for pid in node_pids),
        _own_cpu_seconds(),
    )
    round_trips: list[float] = []
    downloads: list[float] = []
    for _ in range(studies):
        round_trip, download = run_one(client, spec, nodes)
        round_trips.append(round_trip)
        downloads.append(download)
    cpu_after = (
        cpu_seconds(coordinator.pid),
        sum(cpu_seconds(pid) for pid in node_pids),
        _own_cpu_seconds(),
    )
    after = _histogram_totals(scrape(coordinator.health_port), ref)
    tasks = after[1] - before[1]
    coordinator_cpu, nodes_cpu, client_cpu = (
        (end - start) / studies for start, end in zip(cpu_before, cpu_after, strict=True)
    )
    return OurResult(
        analysis=ref,
        nodes=nodes,
        round_trips=round_trips,
        results_downloads=downloads,
        warmup=warm,
        coordinator_latency_mean=(after[0] - before[0]) / tasks if tasks > 0 else None,
        coordinator_cpu=coordinator_cpu,
        nodes_cpu=nodes_cpu,
        client_cpu=client_cpu,
    )


def measure_ours(
    root: Path,
    *,
    nodes: int,
    studies: int,
    warmup: int,
    analyses: Sequence[str],
    persons: int,
) -> list[OurResult]:
    """Start a coordinator and ``nodes`` nodes, run the studies of each analysis in turn (all
    allowed by every node's policy), stop everything."""
    countries = node_countries(nodes)
    cache = root / "cdm-cache"
    fill_cdm_cache(cache, countries, persons)
    federation: LocalFederation = prepare(
        root / "federation",
        countries,
        persons=persons,
        seed=SEED,
        analyses=[(ANALYSES[a][0].name, ANALYSES[a][0].version) for a in analyses],
        cdm_cache=cache,
    )
    with running(federation):
        coordinator = federation.processes["coordinator"]

        def all_connected() -> bool:
            if not coordinator.alive():
                raise BenchmarkError(f"the coordinator exited; its log: {coordinator.log_path}")
            text = scrape(coordinator.health_port)
            return metric_value(text, "ehds_coordinator_connected_nodes") == nodes

        wait_until(all_connected, timeout=CONNECT_TIMEOUT_S, what=f"{nodes} nodes connected")
        client = CoordinatorClient(load_client_config(federation.researcher_config))
        with client:
            results = [
                _run_analysis(
                    federation, client, analysis, nodes=nodes, studies=studies, warmup=warmup
                )
                for analysis in analyses
            ]
        dead = [name for name, process in federation.processes.items() if not process.alive()]
        if dead:
            raise BenchmarkError(f"exited during the run: {', '.join(dead)}")
    return results


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _row(label: str, values: Sequence[float]) -> list[str]:
    summary = Summary.of(values)
    return [
        label,
        str(summary.count),
        _ms(summary.median),
        _ms(summary.p95),
        _ms(summary.mean),
        _ms(summary.minimum),
        _ms(summary.maximum),
    ]


def report(
    ours: Sequence[OurResult],
    flower: FlowerResult | None,
    flower_error: str | None,
    load_start: str,
) -> str:
    """The figures; the first analysis is the headline (target and ratio)."""
    headline = ours[0]
    rows: list[list[str]] = []
    for result in ours:
        rows.append(_row(f"ehds {result.analysis}: submit -> COMPLETED", result.round_trips))
        rows.append(_row(f"ehds {result.analysis}: results download", result.results_downloads))
    if flower is not None:
        rows.append(
            _row(f"Flower {flower.flwr_version} round (ServerApp clock)", flower.per_round_seconds)
        )
    cpu_rows = [
        [
            str(result.analysis),
            _ms(result.coordinator_cpu),
            f"{_ms(result.nodes_cpu)} ({_ms(result.nodes_cpu / result.nodes)} each)",
            _ms(result.client_cpu),
            _ms(result.coordinator_cpu + result.nodes_cpu + result.client_cpu),
            _ms(result.coordinator_latency_mean)
            if result.coordinator_latency_mean is not None
            else "n/a",
        ]
        for result in ours
    ]
    median = Summary.of(headline.round_trips).median
    lines = [
        machine_line(),
        f"load average at start {load_start}, at the end {load_average()} (other work on the "
        "machine shows in the figures)",
        f"{headline.nodes} nodes, loopback, mutual TLS, each node and the coordinator a "
        "separate OS process; studies one after the other, each to all nodes",
        *(
            f"warm-up studies of {r.analysis} (not counted): "
            + (", ".join(_ms(s) for s in r.warmup) or "none")
            for r in ours
        ),
        "",
        table(["round trip", "n", "median", "p95", "mean", "min", "max"], rows),
        "",
        table(
            [
                "CPU per study",
                "coordinator",
                "nodes",
                "client",
                "total",
                "coordinator task latency (mean)",
            ],
            cpu_rows,
        ),
        "",
        f"target: median under {_ms(TARGET_MEDIAN_S)} ({headline.analysis}): {_ms(median)} -> "
        f"{verdict(median < TARGET_MEDIAN_S)}",
    ]
    if flower is not None:
        ratio = flower.median / median
        lines.append(
            f"ratio Flower median / ehds median ({headline.analysis}): {flower.median:.3f} s / "
            f"{median:.4f} s = {ratio:.0f}x (goal > {TARGET_RATIO:.0f}) -> "
            f"{verdict(ratio > TARGET_RATIO)}"
        )
        for result in ours[1:]:
            other = Summary.of(result.round_trips).median
            lines.append(f"  with {result.analysis}: {flower.median / other:.0f}x")
        lines += ["", format_result(flower)]
    elif flower_error is not None:
        lines.append(f"Flower baseline FAILED: {flower_error}")
    else:
        lines.append("Flower baseline skipped (--skip-flower)")
    return "\n".join(lines)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--analysis",
        choices=sorted(ANALYSES),
        action="append",
        help="repeat for several; the first is the headline (default: test.sleep, then "
        "person_count)",
    )
    parser.add_argument("--persons", type=int, default=200, help="persons in each node's CDM")
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("--flower-rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and CDMs here")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.studies < 1 or args.warmup < 0:
        parser.error("need --nodes >= 1, --studies >= 1, --warmup >= 0")
    analyses: list[str] = args.analysis or list(DEFAULT_ANALYSES)
    # SIGTERM's default action would skip the finally blocks that stop the processes.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir: Path = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehds-bench-")))
        load_start = load_average()
        print(
            f"ehds: {args.nodes} nodes, {args.warmup} warm-up + {args.studies} studies of "
            f"{', '.join(analyses)} ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            ours = measure_ours(
                workdir,
                nodes=args.nodes,
                studies=args.studies,
                warmup=args.warmup,
                analyses=analyses,
                persons=args.persons,
            )
        except Exception as exc:
            print(f"bench_federation: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"(logs under {workdir / 'federation' / 'logs'})", file=sys.stderr)
            if args.workdir is None:
                # The temporary folder goes away with the logs: keep a copy to read.
                kept = Path(tempfile.mkdtemp(prefix="ehds-bench-logs-"))
                with contextlib.suppress(OSError):
                    shutil.copytree(workdir / "federation" / "logs", kept / "logs")
                    print(f"logs copied to {kept / 'logs'}", file=sys.stderr)
            return 1
        flower: FlowerResult | None = None
        flower_error: str | None = None
        if not args.skip_flower:
            print(
                f"Flower: {args.nodes} SuperNodes, {args.flower_rounds} rounds ...",
                file=sys.stderr,
                flush=True,
            )
            try:
                flower = measure_flower_round_trip(
                    nodes=args.nodes, rounds=args.flower_rounds, workdir=workdir / "flower"
                )
            except Exception as exc:
                flower_error = f"{type(exc).__name__}: {exc}"
        print(report(ours, flower, flower_error, load_start))
    return 1 if flower_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
