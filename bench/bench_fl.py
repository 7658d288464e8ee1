"""Federated learning with Flower: time per round and idle memory, ours beside Flower's engine.

    .venv/bin/python bench/bench_fl.py [--nodes 3 10] [--rounds 5] [--warmup-rounds 1]
        [--persons 500] [--skip-flower] [--skip-loopback] [--skip-federation] [--workdir DIR]

Why: issue 8 hosts unmodified Flower apps on our own node link instead of Flower's deployment
engine, and promises that this costs less, not more: under 0.5 s of overhead per round with
3 nodes (more than ten times faster than Flower's engine on the same machine) and under
100 MB of resident memory per idle node. This benchmark prints those figures, measured in one
run on this machine, for 3 and 10 nodes, with one and the same Flower app, ``bench/
flower_app`` (each round the ServerApp sends a query to every node and each ClientApp answers
with a count; the app itself does next to nothing, so a round's time is the engine's
overhead). The app is a standard Flower app and runs unchanged on all three paths:

1. Flower's deployment engine (``bench/flower_baseline.py``): ``flower-superlink``, N
   ``flower-supernode`` processes and ``flwr run``, TLS and SuperNode authentication on.
2. Our loopback host (``ehds.fl.loopback.run_loopback``): the ServerApp in its own process
   (``ehds.fl.server_process``) and one long-lived, network-isolated ClientApp worker process
   per node (``ehds.fl.client_worker``), relayed in this process. It is the floor of our
   path: the Flower processes without the federation around them.
3. Our full federation path: a coordinator and N node agents as separate ``ehds`` processes
   (``ehds.cli.local_federation``, the demo's launcher) with mutual TLS, an ``fl`` study
   submitted by the researcher with the FAB built from ``bench/flower_app``; every round is a
   round of signed tasks, checked against each node's policy (which allows this FAB by its
   SHA-256) and audited, as in production.

What is timed is the same on every path: the ServerApp's own clock, from handing a round's
messages to the Grid to holding every reply (the app writes its timings to ``timings-path``
of its run config). The first ``--warmup-rounds`` rounds are reported apart (Flower's
SuperNodes fetch the run and the FAB then). Ours also prints the study's wall time from
``Submit`` to COMPLETED, which adds the join round (bundle check, feature extract from the
node's CDM, worker start) and the ServerApp's start.

Memory, read from /proc (VmRSS): our node agent idle (connected, no FL study) beside an idle
``flower-supernode`` with the processes it keeps (its ``flower-superexec``), and the peak RSS
of our ClientApp worker processes (and of the ServerApp process) while a study runs, sampled
from a thread every ``SAMPLE_INTERVAL_S`` (about 1 ms of CPU each time, during our paths
only: it can only slow them down). Only descendants of the processes this benchmark started
are sampled: other work on the machine may run the same modules.

Why Flower's rounds are seconds long (flwr 1.42, see ``bench/flower_baseline.py``): SuperNodes
pull for messages every few seconds, start a fresh ``flwr-clientapp`` process per message,
and ``Grid.send_and_receive`` pulls replies every 3 s. Ours are one task per node pushed down
the node's open stream to a worker that is already running.

Ratios are Flower's figure over ours. Figures are printed, never asserted: the exit status is
non-zero only when a path could not be measured (its error is printed in its place). Every
process started is stopped at the end whatever happens, and every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):
    # Run as a script (bench/bench_fl.py): make the repository root importable for ``bench``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_federation import SEED as CDM_SEED
from bench.bench_federation import fill_cdm_cache, node_countries
from bench.flower_baseline import (
    APP_DIR,
    FlowerResult,
    TreeMemory,
    descendants,
    flwr_cli_version,
    measure_flower_round_trip,
    rss_bytes,
    tree_memory,
)
from bench.process_probes import (
    Summary,
    load_average,
    machine_line,
    metric_value,
    scrape,
    table,
    verdict,
    wait_until,
)

from ehds.analyses.base import canonical_json
from ehds.analyses.fl.analysis import FederatedLearning
from ehds.cli.demo_fl import fl_parameters, fl_policy
from ehds.cli.local_federation import LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, Study, StudySpec, StudyState
from ehds.fl.bundle import build_fab, fab_digest, read_fab_info

TARGET_OVERHEAD_S: Final = 0.5
TARGET_OVERHEAD_NODES: Final = 3
TARGET_RATIO: Final = 10.0
TARGET_IDLE_BYTES: Final = 100 * 1000 * 1000
FL_ANALYSIS: Final = AnalysisRef(FederatedLearning.name, FederatedLearning.version)
CONNECT_TIMEOUT_S: Final = 120.0
STUDY_TIMEOUT_S: Final = 600.0
LOOPBACK_TIMEOUT_S: Final = 300.0
IDLE_SETTLE_S: Final = 3.0
"""How long nodes idle, all connected, before their memory is read: start-up work is done."""
SAMPLE_INTERVAL_S: Final = 0.1
WORKER_MODULE: Final = "ehds.fl.client_worker"
SERVER_MODULE: Final = "ehds.fl.server_process"
CDM_CACHE: Final = Path(__file__).resolve().parent.parent / ".bench" / "fl" / "cdm-cache"


class BenchmarkError(RuntimeError):
    """A path could not be measured (a study failed, a process died, a timeout)."""


@dataclass(frozen=True)
class Rounds:
    """One path's rounds for one node count, on the ServerApp's clock."""

    path: str
    nodes: int
    per_round: list[float]
    warmup: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)


@dataclass
class Measured:
    """What one node count gave on every path; an error string where a path failed."""

    nodes: int
    flower: FlowerResult | None = None
    flower_error: str | None = None
    loopback: Rounds | None = None
    loopback_wall: float | None = None
    loopback_error: str | None = None
    federation: Rounds | None = None
    federation_wall: float | None = None
    federation_error: str | None = None
    idle_nodes: list[TreeMemory] = field(default_factory=list)
    # Peak RSS (bytes) of each process of that kind seen during the run, per path.
    workers: dict[str, list[int]] = field(default_factory=dict)
    servers: dict[str, list[int]] = field(default_factory=dict)


# --- memory of the processes our paths start --------------------------------------------------


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace")


class PeakSampler:
    """Peak RSS of every descendant of ``roots`` running one of ``modules`` (``python -m
    MODULE``), sampled from a thread.

    Why by descent and command line: the loopback's processes are children of this process,
    the federation's of the node agents and the coordinator, and other work on the machine
    may run the same modules. The pids seen are kept, so that :meth:`kill_strays` can make
    sure none of them outlives the benchmark.
    """

    def __init__(
        self,
        modules: Sequence[str],
        roots: Sequence[int],
        interval: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.modules = list(modules)
        self.roots = list(roots)
        self.interval = interval
        self.peaks: dict[str, dict[int, int]] = {module: {} for module in self.modules}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for pid in descendants(self.roots):
            command = _command_line(pid)
            for module in self.modules:
                if f"-m {module}" in command:
                    peaks = self.peaks[module]
                    peaks[pid] = max(peaks.get(pid, 0), rss_bytes(pid))

    def peak_list(self, module: str) -> list[int]:
        return sorted(self.peaks[module].values())

    def kill_strays(self) -> None:
        """SIGKILL any process seen that still runs one of the modules (never raises)."""
        for module, peaks in self.peaks.items():
            for pid in peaks:
                if f"-m {module}" in _command_line(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)


# --- the app, and the ServerApp's timings --------------------------------------------------------


@dataclass(frozen=True)
class App:
    fab: bytes
    sha256: str
    name: str
    version: str


def bench_app() -> App:
    """The FAB of ``bench/flower_app``, built as ``ehds fl build`` does (deterministic bytes)."""
    fab = build_fab(APP_DIR)
    info = read_fab_info(fab)
    return App(fab=fab, sha256=fab_digest(fab), name=info.name, version=info.version)


def run_config(*, rounds: int, warmup: int, nodes: int, timings: Path) -> dict[str, Any]:
    """The app's run config: the same keys ``flower_baseline`` passes to ``flwr run``."""
    return {
        "rounds": rounds,
        "warmup-rounds": warmup,
        "min-nodes": nodes,
        "timings-path": str(timings),
    }


def read_rounds(path: Path, label: str, nodes: int, expected_total: int) -> Rounds:
    """The ServerApp's timings file, checked: every round had every node's reply."""
    if not path.exists():
        raise BenchmarkError(f"{label}: the ServerApp wrote no timings ({path})")
    payload = json.loads(path.read_text(encoding="utf-8"))
    if payload.get("error"):
        raise BenchmarkError(f"{label}: the ServerApp failed: {payload['error']}")
    for entry in [*payload["warmup_rounds"], *payload["rounds"]]:
        if entry["replies"] != nodes or entry["total"] != expected_total:
            raise BenchmarkError(
                f"{label}: round {entry['round']}: {entry['replies']} replies summing to "
                f"{entry['total']}, expected {nodes} summing to {expected_total}"
            )
    return Rounds(
        path=label,
        nodes=nodes,
        per_round=[float(entry["seconds"]) for entry in payload["rounds"]],
        warmup=[float(entry["seconds"]) for entry in payload["warmup_rounds"]],
    )


# --- path 2: the loopback host ---------------------------------------------------------------


def measure_loopback(app: App, workdir: Path, m: Measured, *, rounds: int, warmup: int) -> None:
    """The app through ``run_loopback`` with ``m.nodes`` workers, into ``m``.

    Node i is given ``count = i + 1`` (as the SuperNodes are), so the ServerApp's sums prove
    that every worker answered. ``run_loopback`` runs in a thread so that its wait is bounded
    here whatever it does; the worker and ServerApp processes are this process's children,
    killed by :meth:`PeakSampler.kill_strays` if it leaves any behind.
    """
    from ehds.fl.loopback import run_loopback  # noqa: PLC0415  (imports flwr: only when used)

    nodes = m.nodes
    folder = Path(tempfile.mkdtemp(prefix=f"loopback-{nodes}n-", dir=workdir))
    timings = folder / "timings.json"
    configs = {
        f"node-{index + 1:02d}": {"count": index + 1, "node-name": f"node-{index + 1:02d}"}
        for index in range(nodes)
    }
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summary"] = run_loopback(
                app.fab,
                folder / "work",
                run_config(rounds=rounds, warmup=warmup, nodes=nodes, timings=timings),
                configs,
                timeout=LOOPBACK_TIMEOUT_S - 30.0,
            )
        except BaseException as error:  # reported by the caller
            outcome["error"] = error

    with PeakSampler([WORKER_MODULE, SERVER_MODULE], [os.getpid()]) as sampler:
        try:
            started = time.perf_counter()
            thread = threading.Thread(target=target, name="loopback", daemon=True)
            thread.start()
            thread.join(LOOPBACK_TIMEOUT_S)
            if thread.is_alive():
                raise BenchmarkError(f"loopback: not done after {LOOPBACK_TIMEOUT_S:.0f} s")
            m.loopback_wall = time.perf_counter() - started
        finally:
            sampler.sample()
            sampler.kill_strays()
            m.workers["loopback"] = sampler.peak_list(WORKER_MODULE)
            m.servers["loopback"] = sampler.peak_list(SERVER_MODULE)
    if "error" in outcome:
        error = outcome["error"]
        raise BenchmarkError(f"{type(error).__name__}: {error}") from error
    m.loopback = read_rounds(timings, "ehds loopback", nodes, nodes * (nodes + 1) // 2)


# --- path 3: the federation ------------------------------------------------------------------


def study_parameters(app: App, config: Mapping[str, Any], rounds: int) -> dict[str, Any]:
    """An ``fl`` study of the bench app, built as the demo builds its own. The population and
    features (the demo's: first outpatient visit, hypertension within five years; age and sex
    only) matter only to the join round, where each node's extract must pass its policy's
    minimum rows and events: the app itself reads no data."""
    return fl_parameters(
        app.fab,
        name=app.name,
        version=app.version,
        rounds=rounds,
        run_config=config,
        covariates=[
            {"kind": "age", "name": "age_decades", "per_years": 10},
            {"kind": "sex", "name": "female"},
        ],
    )


@contextlib.contextmanager
def _federation(root: Path, nodes: int, persons: int, app: App) -> Iterator[LocalFederation]:
    """A coordinator and ``nodes`` node agents running, all connected; stopped on exit.

    Every node's policy allows the ``fl`` analysis and, in its ``fl`` section, this FAB by
    name, version and SHA-256 (and nothing else); minimum 10 rows and 1 outcome event."""
    countries = node_countries(nodes)
    fill_cdm_cache(CDM_CACHE, countries, persons)
    policy = fl_policy([(app.name, app.version, app.fab)], min_rows=10, min_events=1)
    federation = prepare(
        root,
        countries,
        persons=persons,
        seed=CDM_SEED,
        analyses=[(FL_ANALYSIS.name, FL_ANALYSIS.version)],
        cdm_cache=CDM_CACHE,
        policy_extra={f"node-{country}": policy for country in countries},
    )
    with running(federation):
        coordinator = federation.processes["coordinator"]

        def all_connected() -> bool:
            if not coordinator.alive():
                raise BenchmarkError(f"the coordinator exited; its log: {coordinator.log_path}")
            text = scrape(coordinator.health_port)
            return metric_value(text, "ehds_coordinator_connected_nodes") == nodes

        wait_until(all_connected, timeout=CONNECT_TIMEOUT_S, what=f"{nodes} nodes connected")
        yield federation


def _failure(study: Study) -> str:
    reasons = "; ".join(
        f"{task.node_name}: {task.error_code.name} {task.reason}".strip()
        for task in study.nodes
        if task.reason
    )
    return f"study {study.id} ended {study.state.name}: {study.state_reason or 'no reason'}" + (
        f" ({reasons})" if reasons else ""
    )


def measure_federation(
    app: App, workdir: Path, m: Measured, *, rounds: int, warmup: int, persons: int
) -> None:
    """One ``fl`` study of the app across a fresh federation of ``m.nodes`` nodes, into ``m``.

    The nodes' memory is read first, once all are connected and idle; then the study runs
    with the sampler watching the ClientApp workers and the ServerApp process. Our nodes give
    the app no ``count``: each answers 1.
    """
    nodes = m.nodes
    folder = Path(tempfile.mkdtemp(prefix=f"federation-{nodes}n-", dir=workdir))
    timings = folder / "timings.json"
    config = run_config(rounds=rounds, warmup=warmup, nodes=nodes, timings=timings)
    parameters = canonical_json(study_parameters(app, config, rounds))
    with _federation(folder / "federation", nodes, persons, app) as federation:
        time.sleep(IDLE_SETTLE_S)
        m.idle_nodes = [tree_memory(federation.processes[name].pid) for name in federation.nodes]
        spec = StudySpec(
            title=f"bench: Flower app across {nodes} nodes",
            analysis=FL_ANALYSIS,
            parameters=parameters,
            min_nodes=nodes,
            deadline_seconds=int(STUDY_TIMEOUT_S),
            data_permit_id=federation.permit_id,
        )
        with (
            CoordinatorClient(load_client_config(federation.researcher_config)) as client,
            PeakSampler([WORKER_MODULE, SERVER_MODULE], federation.running_pids()) as sampler,
        ):
            try:
                started = time.perf_counter()
                study = client.submit(spec)
                final = client.wait(study.id, timeout=STUDY_TIMEOUT_S)
                m.federation_wall = time.perf_counter() - started
            finally:
                sampler.sample()
                m.workers["federation"] = sampler.peak_list(WORKER_MODULE)
                m.servers["federation"] = sampler.peak_list(SERVER_MODULE)
        dead = [name for name, process in federation.processes.items() if not process.alive()]
    sampler.kill_strays()
    if final.state is not StudyState.COMPLETED:
        raise BenchmarkError(_failure(final) + _kept_logs(folder / "federation" / "logs"))
    if dead:
        raise BenchmarkError(f"exited during the study: {', '.join(dead)}")
    m.federation = read_rounds(timings, "ehds federation", nodes, nodes)


def _kept_logs(logs: Path) -> str:
    """A copy of a failed federation's logs outside the (maybe temporary) work folder."""
    kept = Path(tempfile.mkdtemp(prefix="ehds-bench-fl-logs-"))
    try:
        shutil.copytree(logs, kept / "logs")
    except OSError:
        return f" (logs under {logs})"
    return f" (logs copied to {kept / 'logs'})"


# --- the report --------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def _ratio(flower: float | None, ours: float) -> str:
    if flower is None or ours <= 0:
        return "n/a"
    return f"{flower / ours:.1f}x"


def _round_row(label: str, rounds: Rounds, flower: float | None) -> list[str]:
    summary = Summary.of(rounds.per_round)
    return [
        label,
        str(rounds.nodes),
        str(summary.count),
        _s(summary.median),
        _s(summary.p95),
        _s(summary.minimum),
        _s(summary.maximum),
        ", ".join(_s(s) for s in rounds.warmup) or "none",
        _ratio(flower, summary.median),
    ]


def _memory_row(label: str, nodes: int, values: Sequence[int], flower: float | None) -> list[str]:
    if not values:
        return [label, str(nodes), "0", "n/a", "n/a", "n/a"]
    median = statistics.median(values)
    return [
        label,
        str(nodes),
        str(len(values)),
        _mb(median),
        _mb(max(values)),
        _ratio(flower, median),
    ]


def _tree_row(
    label: str, nodes: int, trees: Sequence[TreeMemory], flower: float | None
) -> list[str]:
    """A process with the processes it keeps (Flower's SuperNode keeps a superexec)."""
    count = max(tree.descendant_count for tree in trees)
    if count:
        own = statistics.median(tree.own for tree in trees)
        kids = statistics.median(tree.descendants for tree in trees)
        label = f"{label} + {count} child(ren) ({_mb(own)} + {_mb(kids)})"
    return _memory_row(label, nodes, [tree.total for tree in trees], flower)


def report(measured: Sequence[Measured], app: App, cli_version: str, load_start: str) -> str:
    rows: list[list[str]] = []
    walls: list[str] = []
    errors: list[str] = []
    memory_rows: list[list[str]] = []
    for m in measured:
        flower_median = m.flower.median if m.flower is not None else None
        if m.flower is not None:
            rows.append(
                _round_row(
                    "Flower deployment engine",
                    Rounds("flower", m.nodes, m.flower.per_round_seconds, m.flower.warmup_seconds),
                    flower_median,
                )
            )
        for label, rounds, wall, error in (
            ("ehds loopback host", m.loopback, m.loopback_wall, m.loopback_error),
            ("ehds federation (mTLS)", m.federation, m.federation_wall, m.federation_error),
        ):
            if rounds is not None:
                rows.append(_round_row(label, rounds, flower_median))
            if wall is not None:
                walls.append(f"  {label}, {m.nodes} nodes: {_s(wall)}")
            if error is not None:
                errors.append(f"  {label}, {m.nodes} nodes: FAILED: {error}")
        if m.flower_error is not None:
            errors.append(f"  Flower deployment engine, {m.nodes} nodes: FAILED: {m.flower_error}")
        flower_idle = m.flower.idle_nodes if m.flower is not None else []
        flower_idle_median = (
            statistics.median(tree.total for tree in flower_idle) if flower_idle else None
        )
        if flower_idle:
            memory_rows.append(
                _tree_row("idle flower-supernode", m.nodes, flower_idle, flower_idle_median)
            )
        if m.idle_nodes:
            memory_rows.append(
                _tree_row(
                    "idle ehds node agent (connected, no FL study)",
                    m.nodes,
                    m.idle_nodes,
                    flower_idle_median,
                )
            )
        for path, peaks in m.workers.items():
            memory_rows.append(
                _memory_row(
                    f"ClientApp worker, peak during the study ({path})", m.nodes, peaks, None
                )
            )
        for path, peaks in m.servers.items():
            memory_rows.append(
                _memory_row(
                    f"ServerApp process, peak during the study ({path})", m.nodes, peaks, None
                )
            )

    lines = [
        machine_line(),
        f"load average at start {load_start}, at the end {load_average()} (other work on the "
        "machine shows in the figures)",
        f"Flower: flwr {cli_version} (flwr --version); app {app.name} {app.version}, FAB sha256 "
        f"{app.sha256[:16]}...; one query to every node per round",
        "",
        "time per round (ServerApp clock: the round's messages handed to the Grid -> every "
        "reply held); ratio = Flower median / this median",
        table(
            ["path", "nodes", "rounds", "median", "p95", "min", "max", "warm-up", "Flower/ours"],
            rows,
        )
        if rows
        else "  (no path measured)",
    ]
    if walls:
        lines += [
            "",
            "wall time of the whole run (ours: Submit -> COMPLETED, join round and "
            "ServerApp start included; loopback: run_loopback):",
            *walls,
        ]
    lines += [
        "",
        "resident memory (VmRSS from /proc) per node; ratio = Flower idle median / this median",
        table(["process", "nodes", "n", "median", "max", "Flower/ours"], memory_rows)
        if memory_rows
        else "  (nothing measured)",
        "",
        "targets (issue 8):",
        *_targets(measured),
    ]
    if errors:
        lines += ["", "failures:", *errors]
    return "\n".join(lines)


def _targets(measured: Sequence[Measured]) -> list[str]:
    lines: list[str] = []
    three = next((m for m in measured if m.nodes == TARGET_OVERHEAD_NODES), None)
    if three is None or three.federation is None:
        lines.append(
            f"  per-round overhead under {TARGET_OVERHEAD_S} s with {TARGET_OVERHEAD_NODES} "
            "nodes (federation path): not measured"
        )
    else:
        median = three.federation.median
        lines.append(
            f"  per-round overhead under {TARGET_OVERHEAD_S} s with {TARGET_OVERHEAD_NODES} nodes "
            f"(federation path, median): {_s(median)} -> {verdict(median < TARGET_OVERHEAD_S)}"
        )
        if three.flower is not None:
            ratio = three.flower.median / median
            lines.append(
                f"  more than {TARGET_RATIO:.0f}x faster than Flower's engine with "
                f"{TARGET_OVERHEAD_NODES} nodes: {ratio:.1f}x -> {verdict(ratio > TARGET_RATIO)}"
            )
    idle = [tree.total for m in measured for tree in m.idle_nodes]
    if idle:
        worst = max(idle)
        lines.append(
            f"  under {_mb(TARGET_IDLE_BYTES)} per idle node (ehds node agent, largest of "
            f"{len(idle)}): {_mb(worst)} -> {verdict(worst < TARGET_IDLE_BYTES)}"
        )
    else:
        lines.append(f"  under {_mb(TARGET_IDLE_BYTES)} per idle node: not measured")
    return lines


# --- main ------------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def measure_all(
    workdir: Path,
    app: App,
    *,
    node_counts: Sequence[int],
    rounds: int,
    warmup: int,
    persons: int,
    skip: Callable[[str], bool],
) -> list[Measured]:
    """Every path for every node count, one after the other (nothing of one path runs while
    another is timed)."""
    results: list[Measured] = []
    for nodes in node_counts:
        m = Measured(nodes=nodes)
        results.append(m)
        if not skip("flower"):
            _progress(f"Flower: {nodes} SuperNodes, {warmup} + {rounds} rounds ...")
            try:
                m.flower = measure_flower_round_trip(
                    nodes,
                    rounds,
                    workdir / "flower",
                    warmup_rounds=warmup,
                    idle_memory=True,
                )
            except Exception as error:
                m.flower_error = _describe(error)
        if not skip("loopback"):
            _progress(f"ehds loopback: {nodes} workers, {warmup} + {rounds} rounds ...")
            try:
                measure_loopback(app, workdir, m, rounds=rounds, warmup=warmup)
            except Exception as error:
                m.loopback_error = _describe(error)
        if not skip("federation"):
            _progress(f"ehds federation: {nodes} nodes, {warmup} + {rounds} rounds ...")
            try:
                measure_federation(app, workdir, m, rounds=rounds, warmup=warmup, persons=persons)
            except Exception as error:
                m.federation_error = _describe(error)
    return results


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="rounds reported apart")
    parser.add_argument("--persons", type=int, default=500, help="persons in each node's CDM")
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("--skip-loopback", action="store_true")
    parser.add_argument("--skip-federation", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and timings here")
    args = parser.parse_args(argv)
    if min(args.nodes) < 1 or args.rounds < 1 or args.warmup_rounds < 0:
        parser.error("need --nodes >= 1, --rounds >= 1, --warmup-rounds >= 0")
    skipped = {
        "flower": args.skip_flower,
        "loopback": args.skip_loopback,
        "federation": args.skip_federation,
    }
    # SIGTERM's default action would skip the finally blocks that stop the processes.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    load_start = load_average()
    app = bench_app()
    cli_version = flwr_cli_version()
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir: Path = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehds-fl-")))
        measured = measure_all(
            workdir,
            app,
            node_counts=args.nodes,
            rounds=args.rounds,
            warmup=args.warmup_rounds,
            persons=args.persons,
            skip=lambda path: skipped[path],
        )
        print(report(measured, app, cli_version, load_start))
    failed = any(
        error is not None
        for m in measured
        for error in (m.flower_error, m.loopback_error, m.federation_error)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
