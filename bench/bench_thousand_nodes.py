"""One coordinator holding 1,000 connected nodes: memory per node, time for one study.

    .venv/bin/python -m bench.bench_thousand_nodes [--nodes 1000] [--workers 4]
        [--analysis test.sleep|person_count] [--studies 3] [--heartbeat-seconds 10]
        [--workdir DIR] [--py-spy]

What is measured, and why this way:

* A real coordinator (``ehds coordinator serve``, a separate OS process started by the demo's
  own launcher, ``ehds.cli.local_federation``), with its production defaults for heartbeats
  and keepalive unless told otherwise: memory per node depends on them.
* 1,000 nodes, each with its own certificate from the federation CA and its own TCP + TLS
  connection, run by ``bench/light_nodes.py`` in a few worker processes (a real node agent
  holds ~160 MB, so 1,000 would need ~160 GB; see that module for what a light node does on
  the wire).
* Memory per connected node: the coordinator's resident set (VmRSS) once the
  connected-nodes gauge on its /metrics reads 1,000, minus its resident set before any node
  connected, divided by 1,000. That charges the first connection's one-time costs (imports,
  caches warmed by the first Hello) to the nodes, so the marginal cost between a first small
  batch and all nodes is printed beside it.
* A study across all nodes: ``min_nodes`` = 1,000, submitted with the researcher client,
  timed from Submit to the COMPLETED snapshot on its Watch stream (as bench_federation).
  The coordinator's CPU time during the study is printed too: on a 2-core machine shared
  with the light nodes, wall time alone does not say who was busy.

Figures are printed, never asserted; the exit status is non-zero only when the benchmark
could not measure. Every process started is stopped, and killed if need be, on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from bench.process_probes import (
    Summary,
    cpu_seconds,
    load_average,
    machine_line,
    metric_value,
    open_fds,
    raise_nofile_limit,
    rss_bytes,
    scrape,
    table,
    thread_count,
    verdict,
    wait_until,
)

from ehds.analyses.base import canonical_json
from ehds.cli.local_federation import LocalFederation, ManagedProcess, prepare
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState
from ehds.pki import Role, issue_certificate

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
TARGET_BYTES_PER_NODE: Final = 200 * 1024
TARGET_STUDY_S: Final = 5.0
CONNECTED_GAUGE: Final = "ehds_coordinator_connected_nodes"
CONNECT_TIMEOUT_S: Final = 600.0
STUDY_TIMEOUT_S: Final = 300.0
WORKER_STOP_S: Final = 20.0
SHOWN_STUDIES: Final = 10
"""Studies listed one by one in the report; all of them are in the summary line."""
ANALYSES: Final[dict[str, tuple[AnalysisRef, dict[str, Any]]]] = {
    "test.sleep": (AnalysisRef("test.sleep", "1.0.0"), {"seconds": 0.0}),
    "person_count": (AnalysisRef("person_count", "1.0.0"), {}),
}


class BenchmarkError(RuntimeError):
    """The benchmark could not measure (a process died, a study did not complete)."""


# --- the light-node worker processes ---------------------------------------------------------


class Worker:
    """One ``bench.light_nodes`` process: commands on its stdin, its output in a log file."""

    def __init__(
        self, index: int, nodes: int, spec_path: Path, log_path: Path, env: dict[str, str]
    ) -> None:
        self.index = index
        self.nodes = nodes
        self.requested = 0
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.light_nodes", str(spec_path)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def send(self, command: str) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"light-node worker {self.index} exited ({self.process.returncode}); "
                f"its log: {self.log_path}\n{self.tail()}"
            )
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        self.process.stdin.flush()

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stats(self) -> str:
        found = re.findall(r"^stats .*$", self.text(), flags=re.MULTILINE)
        return found[-1] if found else "(no stats)"

    def stop(self) -> None:
        """``quit``, then SIGKILL to its group if it does not exit in time."""
        with contextlib.suppress(BenchmarkError, OSError):
            self.send("quit")
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(WORKER_STOP_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(WORKER_STOP_S)
        self._log.close()


@contextlib.contextmanager
def workers(
    root: Path,
    federation: LocalFederation,
    node_names: Sequence[str],
    count: int,
    keepalive: tuple[float, float],
) -> Iterator[list[Worker]]:
    """``count`` worker processes sharing ``node_names`` round-robin; all stopped on exit."""
    issued = federation.pki / "issued"
    started: list[Worker] = []
    try:
        for index in range(count):
            mine = node_names[index::count]
            spec = {
                "address": f"127.0.0.1:{federation.coordinator_port}",
                "ca": str(issued / "ca.pem"),
                "nodes": [
                    {
                        "name": name,
                        "certificate": str(issued / f"{name}.pem"),
                        "key": str(issued / f"{name}.key"),
                    }
                    for name in mine
                ],
                "keepalive_time_seconds": keepalive[0],
                "keepalive_timeout_seconds": keepalive[1],
                "connect_concurrency": 32,
            }
            spec_path = root / f"light-nodes-{index}.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            log = federation.root / "logs" / f"light-nodes-{index}.log"
            started.append(Worker(index, len(mine), spec_path, log, federation.env))
        yield started
    finally:
        for worker in started:
            worker.stop()


def shares(pool: Sequence[Worker], count: int) -> list[int]:
    """``count`` more nodes split over the workers round-robin, each within what it has left
    (a worker opens the nodes of its own list, in order)."""
    left = [worker.nodes - worker.requested for worker in pool]
    if count > sum(left):
        raise BenchmarkError(f"{count} more nodes asked, {sum(left)} left to open")
    result = [0] * len(pool)
    index = 0
    while count:
        if result[index] < left[index]:
            result[index] += 1
            count -= 1
        index = (index + 1) % len(pool)
    return result


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    label: str
    connected: int
    rss: int
    threads: int
    fds: int


@dataclass
class Figures:
    nodes: int
    workers: int
    analysis: AnalysisRef
    heartbeat_seconds: float
    certificates_seconds: float
    first_batch: int
    load_start: str
    connect_seconds: float = 0.0
    snapshots: list[Snapshot] = field(default_factory=list)
    studies: list[float] = field(default_factory=list)
    study_cpu: list[float] = field(default_factory=list)
    downloads: list[float] = field(default_factory=list)
    worker_stats: list[str] = field(default_factory=list)

    def rss(self, label: str) -> int:
        return next(s.rss for s in self.snapshots if s.label == label)


def connected(coordinator: ManagedProcess) -> int:
    if not coordinator.alive():
        raise BenchmarkError(f"the coordinator exited; its log: {coordinator.log_path}")
    value = metric_value(scrape(coordinator.health_port), CONNECTED_GAUGE)
    return int(value) if value is not None else 0


def snapshot(label: str, coordinator: ManagedProcess) -> Snapshot:
    return Snapshot(
        label,
        connected(coordinator),
        rss_bytes(coordinator.pid),
        thread_count(coordinator.pid),
        open_fds(coordinator.pid),
    )


def wait_connected(coordinator: ManagedProcess, count: int, pool: list[Worker]) -> float:
    def reached() -> bool:
        for worker in pool:
            if worker.process.poll() is not None:
                raise BenchmarkError(
                    f"light-node worker {worker.index} exited; its log: {worker.log_path}\n"
                    + worker.tail()
                )
        return connected(coordinator) >= count

    return wait_until(
        reached, timeout=CONNECT_TIMEOUT_S, what=f"{count} nodes connected", interval=0.2
    )


def connect(pool: list[Worker], count: int) -> None:
    for worker, share in zip(pool, shares(pool, count), strict=True):
        if share:
            worker.send(f"connect {share}")
            worker.requested += share


def settle(seconds: float) -> None:
    """Let the coordinator finish what the last connections started (first heartbeats, the
    database writes of Hello) before reading its memory."""
    time.sleep(seconds)


def run_study(
    client: CoordinatorClient, spec: StudySpec, nodes: int, coordinator: ManagedProcess
) -> tuple[float, float, float]:
    """(submit -> COMPLETED, coordinator CPU seconds meanwhile, results download)."""
    cpu_before = cpu_seconds(coordinator.pid)
    started = time.perf_counter()
    study = client.submit(spec)
    final = client.wait(study.id, timeout=STUDY_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(coordinator.pid) - cpu_before
    if final.state is not StudyState.COMPLETED:
        raise BenchmarkError(
            f"study {final.id} ended {final.state.name}: {final.state_reason or 'no reason'}"
        )
    started = time.perf_counter()
    document = client.results(final.id)
    download = time.perf_counter() - started
    contributors = document.get("contributors")
    if not isinstance(contributors, list) or len(contributors) != nodes:
        count = len(contributors) if isinstance(contributors, list) else contributors
        raise BenchmarkError(f"study {final.id}: {count} contributors, expected {nodes}")
    return elapsed, cpu, download


@contextlib.contextmanager
def py_spy(pid: int, output: Path, enabled: bool) -> Iterator[None]:
    """Sample the coordinator with py-spy while the block runs (when asked and installed)."""
    if not enabled:
        yield
        return
    tool = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(tool).exists():
        print("py-spy not found: no profile taken", file=sys.stderr)
        yield
        return
    command = [tool, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    command += ["--threads", "--output", str(output)]
    with (output.with_suffix(".log")).open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)  # py-spy attaches
            yield
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    print(f"py-spy profile of the coordinator: {output}", file=sys.stderr)


def measure(root: Path, args: argparse.Namespace) -> Figures:
    nodes: int = args.nodes
    ref, parameters = ANALYSES[args.analysis]
    keepalive = (args.keepalive_seconds, args.keepalive_timeout_seconds)
    names = [f"light-{index + 1:04d}" for index in range(nodes)]
    federation = prepare(
        root / "federation",
        (),
        analyses=[(ref.name, ref.version)],
        heartbeat_interval_seconds=args.heartbeat_seconds,
        keepalive=keepalive,
        permit_nodes=names,
    )
    (federation.root / "logs").mkdir(exist_ok=True)
    started = time.perf_counter()
    for name in names:
        issue_certificate(federation.pki, Role.NODE, name)
    figures = Figures(
        nodes=nodes,
        workers=args.workers,
        analysis=ref,
        heartbeat_seconds=args.heartbeat_seconds,
        certificates_seconds=time.perf_counter() - started,
        first_batch=min(args.first_batch, nodes),
        load_start=load_average(),
    )
    print(
        f"{nodes} node certificates issued in {figures.certificates_seconds:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    spec = StudySpec(
        title=f"bench {nodes} nodes {ref}",
        analysis=ref,
        parameters=canonical_json(parameters),
        min_nodes=nodes,
        deadline_seconds=int(STUDY_TIMEOUT_S),
        data_permit_id=federation.permit_id,
    )
    try:
        coordinator = federation.start_coordinator()
        settle(2.0)
        figures.snapshots.append(snapshot("before any node", coordinator))
        with workers(root, federation, names, args.workers, keepalive) as pool:
            connect(pool, figures.first_batch)
            wait_connected(coordinator, figures.first_batch, pool)
            settle(args.settle_seconds)
            figures.snapshots.append(snapshot(f"{figures.first_batch} connected", coordinator))
            rest = nodes - figures.first_batch
            started = time.perf_counter()
            if rest:
                # Each worker continues down its own list of nodes.
                connect(pool, rest)
            wait_connected(coordinator, nodes, pool)
            figures.connect_seconds = time.perf_counter() - started
            figures.snapshots.append(snapshot(f"{nodes} connected", coordinator))
            print(
                f"{nodes} nodes connected; {figures.connect_seconds:.1f} s for the last {rest}",
                file=sys.stderr,
                flush=True,
            )
            settle(args.settle_seconds)
            figures.snapshots.append(snapshot(f"{nodes} connected, settled", coordinator))
            client = CoordinatorClient(load_client_config(federation.researcher_config))
            with client, py_spy(coordinator.pid, root / "py-spy-study.txt", args.py_spy):
                for _ in range(args.studies):
                    elapsed, cpu, download = run_study(client, spec, nodes, coordinator)
                    figures.studies.append(elapsed)
                    figures.study_cpu.append(cpu)
                    figures.downloads.append(download)
                    print(f"study: {_duration(elapsed)}", file=sys.stderr, flush=True)
            figures.snapshots.append(snapshot("after the studies", coordinator))
            for worker in pool:
                worker.send("stats")
            time.sleep(0.5)
            figures.worker_stats = [worker.stats() for worker in pool]
    finally:
        federation.close()
    return figures


# --- the report ------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _mib(value: float) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


def _kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def report(figures: Figures) -> str:
    nodes = figures.nodes
    before = figures.rss("before any node")
    at_all = figures.rss(f"{nodes} connected")
    settled = figures.rss(f"{nodes} connected, settled")
    first = figures.rss(f"{figures.first_batch} connected")
    per_node = (at_all - before) / nodes
    per_node_settled = (settled - before) / nodes
    marginal_nodes = nodes - figures.first_batch
    marginal = (settled - first) / marginal_nodes if marginal_nodes else float("nan")
    studies = Summary.of(figures.studies)
    worst = max(figures.studies) if figures.studies else float("nan")
    lines = [
        machine_line(),
        f"load average at start {figures.load_start}, at the end {load_average()} (other work "
        "on the machine shows in the figures)",
        f"{nodes} light nodes in {figures.workers} worker processes, each node with its own "
        f"certificate and TCP+TLS connection; coordinator heartbeat interval "
        f"{figures.heartbeat_seconds:g} s; {nodes} certificates issued in "
        f"{figures.certificates_seconds:.1f} s; last {nodes - figures.first_batch} nodes "
        f"connected in {figures.connect_seconds:.1f} s",
        "",
        table(
            ["coordinator", "connected", "RSS", "threads", "fds"],
            [
                [s.label, str(s.connected), _mib(s.rss), str(s.threads), str(s.fds)]
                for s in figures.snapshots
            ],
        ),
        "",
        f"memory per connected node: ({_mib(at_all)} - {_mib(before)}) / {nodes} = "
        f"{_kib(per_node)} (settled: {_kib(per_node_settled)}); marginal from "
        f"{figures.first_batch} to {nodes} nodes: {_kib(marginal)}",
        f"target: under {_kib(TARGET_BYTES_PER_NODE)} per node -> "
        f"{verdict(max(per_node, per_node_settled) < TARGET_BYTES_PER_NODE)}",
        "",
        table(
            ["study across all nodes", "submit -> COMPLETED", "coordinator CPU", "results"],
            [
                [
                    f"#{index + 1} ({figures.analysis})",
                    _duration(s),
                    _duration(c),
                    _duration(d),
                ]
                for index, (s, c, d) in enumerate(
                    zip(figures.studies, figures.study_cpu, figures.downloads, strict=True)
                )
                if index < SHOWN_STUDIES
            ],
        ),
        "",
        f"study time: first {_duration(figures.studies[0])}, median "
        f"{_duration(studies.median)}, p95 {_duration(studies.p95)}, worst {_duration(worst)} "
        f"over {studies.count}; coordinator CPU per study: median "
        f"{_duration(Summary.of(figures.study_cpu).median)}",
        f"target: study under {TARGET_STUDY_S:g} s (worst) -> {verdict(worst < TARGET_STUDY_S)}",
        "",
        "light-node workers:",
        *(f"  {line}" for line in figures.worker_stats),
    ]
    return "\n".join(lines)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="light-node processes")
    parser.add_argument("--analysis", choices=sorted(ANALYSES), default="test.sleep")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--first-batch", type=int, default=10, help="nodes in the first batch")
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=10.0,
        help="the coordinator's Welcome.heartbeat_interval (its configuration's default: 10)",
    )
    parser.add_argument("--keepalive-seconds", type=float, default=30.0)
    parser.add_argument("--keepalive-timeout-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    parser.add_argument("--workdir", type=Path, help="keep PKI, configs and logs here")
    parser.add_argument(
        "--py-spy", action="store_true", help="profile the coordinator during the studies"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.workers < 1 or args.studies < 1 or args.first_batch < 1:
        parser.error("need --nodes, --workers, --studies and --first-batch >= 1")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    limit = raise_nofile_limit()
    if limit < args.nodes + 256:
        print(
            f"open-file limit {limit} is low for {args.nodes} connections: expect failures",
            file=sys.stderr,
        )
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir: Path = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehds-1k-")))
        try:
            figures = measure(workdir, args)
        except Exception as exc:
            print(f"bench_thousand_nodes: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            logs = workdir / "federation" / "logs"
            if args.workdir is None:
                kept = Path(tempfile.mkdtemp(prefix="ehds-1k-logs-"))
                with contextlib.suppress(OSError):
                    shutil.copytree(logs, kept / "logs")
                    logs = kept / "logs"
            print(f"logs: {logs}", file=sys.stderr)
            return 1
        print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
