"""Flower's own deployment engine, timed: the reference beside our dispatch-to-aggregate bench.

    .venv/bin/python bench/flower_baseline.py [--nodes 10] [--rounds 5] [--warmup-rounds 1]

Our issue asks for our round trip (dispatch a trivial analysis to N nodes over mutual TLS,
aggregate the answers) to be printed beside the same round trip through Flower's deployment
engine, measured in the same run on the same machine. This module is the Flower half:
:func:`measure_flower_round_trip` starts, as separate OS processes on 127.0.0.1,

    flower-superlink    one, TLS with a certificate from our own PKI (ehds.pki), SuperNode
                        authentication on, runtime dependency installation off
    flower-supernode    N, TLS (our CA as root), each authenticated by the P-256 key our PKI
                        issued it (converted to OpenSSH form, which is what Flower reads)
    flwr run            the Flower App bench/flower_app: each round the ServerApp sends a
                        query to every node, each ClientApp answers with a count, the
                        ServerApp sums them and times the round from inside itself

and reads the per-round timings the ServerApp writes. It always kills every process it (or
they) started, and every wait is bounded.

Which Flower: the one installed in the interpreter's own virtual environment (flwr 1.42.0,
a dependency of ``ehds.fl``), through its command-line tools (``flower-superlink``,
``flower-supernode``, ``flwr``) found beside this interpreter; ``--venv`` points at another
environment's tools instead. The version is read from ``flwr --version`` before anything
starts and printed with the figures (and the ServerApp reports the one it ran under).

Flower 1.42 differs from older Flower in ways that matter here: the SuperLink serves the
Fleet, Control and Runtime APIs over HTTP(S) on one ``--host``/``--port`` (127.0.0.1 by
default, kept so), SuperNodes serve their Runtime API on their own ``--port``, and ``flwr``
reads SuperLink connections from ``$FLWR_HOME/config.toml``, not from the app's
``pyproject.toml``. Each process gets its own FLWR_HOME under the work folder, so nothing is
read from or written to ``~/.flwr``. Flower's telemetry and update check are switched off
(``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``): a health-data benchmark has
no business phoning home, and the machine may be offline.

What a Flower round is made of (flwr 1.42, read from its source): the ServerApp pushes the
messages; each SuperNode, when idle, pulls every 3 s; its ``flower-superexec`` polls for
tasks every 1 s and starts a fresh ``flwr-clientapp`` Python process per message (about 1 s
of imports alone); the SuperNode pushes the reply after polling its state every 0.5 s; and
``Grid.send_and_receive`` pulls replies every 3 s, so its rounds come out in steps of 3 s.
On a 2-core machine ten SuperNodes saturate both cores each round (ten new processes).
``reply_poll_seconds`` > 0 replaces only the last of these intervals, to show its share.

Figures are returned and printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.pki import Role, init_authority, issue_certificate

LOG = logging.getLogger("bench.flower_baseline")

FLWR_VERSION = "1.42.0"
APP_DIR = Path(__file__).resolve().parent / "flower_app"
# The environment this interpreter runs in (a venv: its root; else the installation prefix).
DEFAULT_VENV = Path(sys.prefix)
CONNECTION = "ehds-bench"  # the SuperLink connection's name in the flwr CLI's config.toml
LOOPBACK = "127.0.0.1"

_READY_TIMEOUT_S = 60.0
_CLI_TIMEOUT_S = 120.0
_NODE_WAIT_S = 120.0
_REPLY_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 10.0
# How long SuperNodes idle, all online, before their memory is read: start-up work is done.
_IDLE_SETTLE_S = 3.0


class FlowerBenchError(RuntimeError):
    """The Flower baseline could not be measured (set-up failed, a process died, a timeout)."""


@dataclass(frozen=True)
class TreeMemory:
    """Resident memory of one process and of its descendants (bytes), and how many those are."""

    own: int
    descendants: int
    descendant_count: int

    @property
    def total(self) -> int:
        return self.own + self.descendants


@dataclass(frozen=True)
class FlowerResult:
    """Flower's round trip: per-round seconds measured by the ServerApp, and how it was run.

    ``per_round_seconds`` excludes the warm-up rounds (``warmup_seconds``), whose first
    message makes every SuperNode fetch the run and the FAB. ``launch_seconds`` is the time
    from invoking ``flwr run`` to the ServerApp's ``main`` starting (not part of a round).
    ``idle_nodes`` (only when asked for) is each SuperNode's resident memory once every
    SuperNode is online and no run exists: the ``flower-supernode`` process and, apart, the
    processes it started (its ``flower-superexec``), which belong to an idle node too.
    ``cli_version`` is what ``flwr --version`` of the tools used printed.
    """

    flwr_version: str
    command_lines: list[str]
    per_round_seconds: list[float]
    median: float
    p95: float
    nodes: int
    warmup_seconds: list[float] = field(default_factory=list)
    launch_seconds: float = math.nan
    node_auth: bool = True
    reply_poll_seconds: float = 0.0
    idle_nodes: list[TreeMemory] = field(default_factory=list)
    cli_version: str = ""


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile with linear interpolation between closest ranks.

    The same definition as numpy's default and ``statistics.quantiles(method="inclusive")``,
    so that a p95 printed beside ours means the same thing; with 5 rounds it lies between
    the two largest.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the Flower installation ---------------------------------------------------------------


def venv_bin(venv: Path) -> Path:
    """The folder of the venv's executables."""
    return venv / ("Scripts" if os.name == "nt" else "bin")


def flwr_cli_version(venv: Path = DEFAULT_VENV) -> str:
    """The version ``flwr --version`` of ``venv`` reports; FlowerBenchError without one."""
    flwr = venv_bin(venv) / "flwr"
    if not flwr.exists():
        raise FlowerBenchError(f"no flwr in {venv_bin(venv)}: install flwr=={FLWR_VERSION} there")
    output = _run_checked([str(flwr), "--version"], timeout=_CLI_TIMEOUT_S)
    # "Flower version: 1.42.0"
    return output.strip().rsplit(maxsplit=1)[-1] if output.strip() else "unknown"


def _run_checked(command: Sequence[str], *, timeout: float) -> str:
    """Run ``command`` to completion; its stdout, or FlowerBenchError with its output."""
    try:
        completed = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise FlowerBenchError(f"timed out after {timeout:.0f} s: {shlex.join(command)}") from None
    if completed.returncode != 0:
        raise FlowerBenchError(
            f"exit {completed.returncode}: {shlex.join(command)}\n"
            f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
        )
    return completed.stdout


# --- processes: start them in their own groups, and always kill them all -------------------


def _children_by_parent() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, from /proc; empty where there is no /proc (not Linux)."""
    tree: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return tree
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(roots: Iterable[int]) -> set[int]:
    """Every living descendant of ``roots`` (not the roots themselves)."""
    tree = _children_by_parent()
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in tree.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS), in bytes; 0 when it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_memory(pid: int) -> TreeMemory:
    """Resident memory of ``pid`` and, apart, of every descendant it has now."""
    children = descendants([pid])
    return TreeMemory(
        own=rss_bytes(pid),
        descendants=sum(rss_bytes(child) for child in children),
        descendant_count=len(children),
    )


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


class ProcessGroup:
    """The processes the benchmark starts, each in a session of its own, logging to a file.

    Flower's processes start more processes: the SuperLink starts a ``flower-superexec`` in
    a new session (out of reach of a process-group kill), which starts ``flwr-serverapp``;
    each SuperNode starts a ``flower-superexec``, which starts a ``flwr-clientapp`` per
    message. :meth:`kill_all` therefore first freezes the whole tree with SIGSTOP, walking
    /proc until no new descendant appears (a stopped process cannot fork, and a killed
    parent's children would be reparented out of reach), then SIGKILLs every process found
    and every group started, and reaps what it started.
    """

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Path:
        """Start ``command`` in a new session, output to ``LOG_DIR/NAME.log``; the log path."""
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        self.started.append((name, process))
        return log_path

    def run(
        self,
        name: str,
        command: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run ``command`` like :meth:`start` and wait for it; its output, or FlowerBenchError."""
        log_path = self.start(name, command, env=env)
        _, process = self.started[-1]
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FlowerBenchError(
                f"{name} timed out after {timeout:.0f} s: {shlex.join(command)}\n" + _tail(log_path)
            ) from None
        output = log_path.read_text(encoding="utf-8", errors="replace")
        if returncode != 0:
            raise FlowerBenchError(
                f"{name} failed (exit {returncode}): {shlex.join(command)}\n{output[-3000:]}"
            )
        return output

    def check_alive(self, *names: str) -> None:
        """FlowerBenchError with its log if one of the named long-running processes exited."""
        for name, process in self.started:
            if name in names and process.poll() is not None:
                raise FlowerBenchError(
                    f"{name} exited with {process.returncode}:\n"
                    + _tail(self.log_dir / f"{name}.log")
                )

    def kill_all(self) -> None:
        """Kill every process started and every descendant of theirs; never raises."""
        roots = [process.pid for _, process in self.started if process.poll() is None]
        stopped: set[int] = set()
        for _ in range(20):
            targets = (set(roots) | descendants([*roots, *stopped])) - stopped
            if not targets:
                break
            for pid in targets:
                _signal(pid, signal.SIGSTOP)
            stopped |= targets
        for pid in stopped:
            _signal(pid, signal.SIGKILL)
        for _, process in self.started:
            # A group ID is not reused while the group has a member, so this reaches only
            # what is left of the groups started here (ProcessLookupError: nothing is).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for name, process in self.started:
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                LOG.warning("%s (pid %d) did not die", name, process.pid)
        for log in self._logs:
            log.close()


@contextlib.contextmanager
def _processes(log_dir: Path, env: Mapping[str, str]) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir, env)
    try:
        yield group
    finally:
        group.kill_all()


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError as error:
        return f"({path}: {error})"


# --- set-up: ports, certificates, configuration --------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _wait_for_port(port: int, group: ProcessGroup, name: str, timeout: float) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; FlowerBenchError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        group.check_alive(name)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise FlowerBenchError(f"{name} not listening on {LOOPBACK}:{port} after {timeout} s")
        time.sleep(0.2)


@dataclass(frozen=True)
class _Credentials:
    ca: Path
    superlink_cert: Path
    superlink_key: Path
    node_private_keys: list[Path]  # OpenSSH form, for --auth-supernode-private-key
    node_public_keys: list[Path]  # OpenSSH form, for `flwr supernode register`


def _issue_credentials(pki_dir: Path, nodes: int) -> _Credentials:
    """A fresh federation CA, the SuperLink's server certificate, a key per node.

    The SuperLink's certificate is a coordinator certificate (serverAuth, SANs localhost and
    127.0.0.1): it plays the coordinator's part. Flower has no client certificates (its
    SuperNodes only verify the server), so a node proves who it is with a signature from a
    registered EC key instead; we use the very key our PKI issued the node, re-encoded as
    OpenSSH because that is the only form ``flower-supernode`` reads.
    """
    init_authority(pki_dir)
    superlink = issue_certificate(pki_dir, Role.COORDINATOR, "superlink")
    private_keys: list[Path] = []
    public_keys: list[Path] = []
    for index in range(nodes):
        issued = issue_certificate(pki_dir, Role.NODE, f"node-{index + 1:02d}")
        key = serialization.load_pem_private_key(issued.paths.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FlowerBenchError(f"{issued.paths.key}: not an EC key")
        private_path = issued.paths.key.with_suffix(".ssh")
        private_path.touch(mode=0o600)
        private_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        public_path = issued.paths.key.with_suffix(".ssh.pub")
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
        )
        private_keys.append(private_path)
        public_keys.append(public_path)
    return _Credentials(
        ca=superlink.paths.ca_certificate,
        superlink_cert=superlink.paths.certificate,
        superlink_key=superlink.paths.key,
        node_private_keys=private_keys,
        node_public_keys=public_keys,
    )


def _write_cli_config(flwr_home: Path, address: str, ca: Path) -> None:
    """The flwr CLI's config.toml: one SuperLink connection, TLS with our CA, the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(ca))}\n",
        encoding="utf-8",
    )


def _base_env(venv: Path) -> dict[str, str]:
    """The environment of every Flower process: ``venv``'s tools first on PATH (Flower starts
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name), and no
    PYTHONPATH of ours: the app is loaded from the FAB, as Flower does in production."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    env["PATH"] = os.pathsep.join([str(venv_bin(venv)), env.get("PATH", os.defpath)])
    env["VIRTUAL_ENV"] = str(venv)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_timings(
    path: Path, group: ProcessGroup, watched: Sequence[str], timeout: float
) -> dict[str, Any]:
    """The ServerApp's JSON once it exists; FlowerBenchError on timeout or a dead process."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        group.check_alive(*watched)
        if time.monotonic() > deadline:
            raise FlowerBenchError(
                f"no timings from the ServerApp after {timeout:.0f} s; SuperLink log:\n"
                + _tail(group.log_dir / "superlink.log")
            )
        time.sleep(0.25)
    payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return payload


def _wait_for_online(group: ProcessGroup, nodes: int, cli_home: Path, tools: Path) -> None:
    """Return once ``flwr supernode list`` shows ``nodes`` SuperNodes online (bounded)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    command = [str(tools / "flwr"), "supernode", "list", CONNECTION, "--format", "json"]
    env = {**group.env, "FLWR_HOME": str(cli_home)}
    while True:
        group.check_alive(*(f"supernode-{index + 1:02d}" for index in range(nodes)))
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=_CLI_TIMEOUT_S,
                env=env,
                check=False,
            )
            listed = json.loads(completed.stdout or "{}").get("nodes", [])
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            listed = []
        online = sum(1 for node in listed if node.get("status") == "online")
        if online >= nodes:
            return
        if time.monotonic() > deadline:
            raise FlowerBenchError(
                f"{online} of {nodes} SuperNodes online after {_READY_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.5)


# --- the measurement -------------------------------------------------------------------------


def measure_flower_round_trip(
    nodes: int,
    rounds: int,
    workdir: Path,
    *,
    warmup_rounds: int = 1,
    node_auth: bool = True,
    reply_poll_seconds: float = 0.0,
    venv: Path = DEFAULT_VENV,
    idle_memory: bool = False,
) -> FlowerResult:
    """Time ``rounds`` query-all-nodes round trips through Flower with ``nodes`` SuperNodes.

    Everything (PKI, logs, FLWR_HOMEs, the timings file) goes to a new folder inside
    ``workdir``, so one ``workdir`` serves several calls. ``reply_poll_seconds`` 0 is Flower's
    own ``Grid.send_and_receive``; a positive value pulls replies that often instead (to
    show what the 3 s pull interval costs). ``idle_memory`` first waits until the SuperLink
    lists every SuperNode online, lets them idle ``_IDLE_SETTLE_S`` and reads their resident
    memory (see :class:`FlowerResult`), before any run exists. Raises
    :class:`FlowerBenchError` when the run cannot be measured; every process started is
    killed whatever happens.
    """
    if nodes < 1 or rounds < 1 or warmup_rounds < 0:
        raise ValueError("need nodes >= 1, rounds >= 1, warmup_rounds >= 0")
    cli_version = flwr_cli_version(venv)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"flower-{nodes}n-", dir=workdir))
    log_dir = folder / "logs"
    log_dir.mkdir()
    credentials = _issue_credentials(folder / "pki", nodes)
    superlink_port, *node_ports = free_ports(nodes + 1)
    address = f"{LOOPBACK}:{superlink_port}"
    cli_home = folder / "flwr-home" / "cli"
    _write_cli_config(cli_home, address, credentials.ca)
    timings_path = folder / "timings.json"
    tools = venv_bin(venv)
    counts = [index + 1 for index in range(nodes)]  # node i answers i + 1
    commands: list[str] = []

    superlink = [
        str(tools / "flower-superlink"),
        "--ssl-ca-certfile",
        str(credentials.ca),
        "--ssl-certfile",
        str(credentials.superlink_cert),
        "--ssl-keyfile",
        str(credentials.superlink_key),
        "--host",
        LOOPBACK,
        "--port",
        str(superlink_port),
        "--disable-runtime-dependency-installation",
    ]
    if node_auth:
        superlink.append("--enable-supernode-auth")
    run_config = " ".join(
        [
            f"rounds={rounds}",
            f"warmup-rounds={warmup_rounds}",
            f"min-nodes={nodes}",
            f"node-wait-seconds={_NODE_WAIT_S}",
            f"reply-timeout-seconds={_REPLY_TIMEOUT_S}",
            f"reply-poll-seconds={float(reply_poll_seconds)}",
            f"timings-path={json.dumps(str(timings_path))}",
        ]
    )
    flwr_run = [
        str(tools / "flwr"),
        "run",
        str(APP_DIR),
        CONNECTION,
        "--run-config",
        run_config,
        "--format",
        "json",
    ]

    with _processes(log_dir, _base_env(venv)) as group:

        def home(name: str) -> dict[str, str]:
            return {"FLWR_HOME": str(folder / "flwr-home" / name)}

        commands.append(shlex.join(superlink))
        group.start("superlink", superlink, env=home("superlink"))
        _wait_for_port(superlink_port, group, "superlink", _READY_TIMEOUT_S)

        if node_auth:
            # Registered through the Control API before the SuperNodes start: with
            # authentication on, the SuperLink accepts no self-registration.
            for index, public_key in enumerate(credentials.node_public_keys):
                register = [
                    str(tools / "flwr"),
                    "supernode",
                    "register",
                    str(public_key),
                    CONNECTION,
                    "--name",
                    f"node-{index + 1:02d}",
                ]
                commands.append(shlex.join(register))
                group.run(
                    f"register-{index + 1:02d}",
                    register,
                    timeout=_CLI_TIMEOUT_S,
                    env={"FLWR_HOME": str(cli_home)},
                )

        for index, port in enumerate(node_ports):
            supernode = [
                str(tools / "flower-supernode"),
                "--superlink",
                address,
                "--root-certificates",
                str(credentials.ca),
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--node-config",
                f"count={counts[index]}",
                "--max-wait-time",
                str(_READY_TIMEOUT_S),
            ]
            if node_auth:
                supernode += [
                    "--auth-supernode-private-key",
                    str(credentials.node_private_keys[index]),
                ]
            commands.append(shlex.join(supernode))
            group.start(f"supernode-{index + 1:02d}", supernode, env=home(f"node-{index + 1:02d}"))

        idle_nodes: list[TreeMemory] = []
        if idle_memory:
            _wait_for_online(group, nodes, cli_home, tools)
            time.sleep(_IDLE_SETTLE_S)
            idle_nodes = [
                tree_memory(process.pid)
                for name, process in group.started
                if name.startswith("supernode-")
            ]

        commands.append(shlex.join(flwr_run))
        run_invoked = time.time()
        group.run("flwr-run", flwr_run, timeout=_CLI_TIMEOUT_S, env={"FLWR_HOME": str(cli_home)})
        payload = _read_timings(
            timings_path,
            group,
            ["superlink", *(f"supernode-{index + 1:02d}" for index in range(nodes))],
            timeout=_NODE_WAIT_S
            + _CLI_TIMEOUT_S
            + (warmup_rounds + rounds) * (_REPLY_TIMEOUT_S + 10.0),
        )

    if payload.get("error"):
        raise FlowerBenchError(f"the ServerApp failed: {payload['error']} (logs in {log_dir})")
    expected = sum(counts)
    for entry in [*payload["warmup_rounds"], *payload["rounds"]]:
        if entry["total"] != expected or entry["replies"] != nodes:
            raise FlowerBenchError(f"round {entry['round']}: {entry} but expected total {expected}")
    per_round = [float(entry["seconds"]) for entry in payload["rounds"]]
    return FlowerResult(
        flwr_version=str(payload["flwr_version"]),
        command_lines=commands,
        per_round_seconds=per_round,
        median=statistics.median(per_round),
        p95=percentile(per_round, 0.95),
        nodes=nodes,
        warmup_seconds=[float(entry["seconds"]) for entry in payload["warmup_rounds"]],
        launch_seconds=float(payload["serverapp_started_at"]) - run_invoked,
        node_auth=node_auth,
        reply_poll_seconds=reply_poll_seconds,
        idle_nodes=idle_nodes,
        cli_version=cli_version,
    )


def format_result(result: FlowerResult) -> str:
    """The figures and the command lines, as the benchmark prints them."""
    auth = "SuperNode auth on" if result.node_auth else "SuperNode auth off"
    poll = (
        "Grid.send_and_receive"
        if result.reply_poll_seconds <= 0
        else f"reply pull every {result.reply_poll_seconds:g} s"
    )
    lines = [
        f"Flower {result.flwr_version} deployment engine, {result.nodes} SuperNodes on "
        f"loopback, TLS, {auth}, {poll}:",
        f"  round trip: median {result.median:.3f} s, p95 {result.p95:.3f} s "
        f"over {len(result.per_round_seconds)} rounds",
        "  rounds (s): " + ", ".join(f"{seconds:.3f}" for seconds in result.per_round_seconds),
        "  warm-up (s): " + (", ".join(f"{s:.3f}" for s in result.warmup_seconds) or "none"),
        f"  flwr run -> ServerApp started: {result.launch_seconds:.1f} s",
        f"  flwr --version: {result.cli_version or 'not read'}",
    ]
    if result.idle_nodes:
        totals = [memory.total for memory in result.idle_nodes]
        lines.append(
            f"  idle SuperNode RSS (supernode + superexec): median "
            f"{statistics.median(totals) / 2**20:.1f} MiB, max {max(totals) / 2**20:.1f} MiB"
        )
    lines.append("  command lines:")
    lines += [f"    {command}" for command in result.command_lines]
    return "\n".join(lines)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print; the work folder is temporary unless ``--workdir`` is given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--no-node-auth", action="store_true")
    parser.add_argument(
        "--reply-poll-seconds",
        type=float,
        default=0.0,
        help="0: Flower's send_and_receive (3 s poll); > 0: pull replies this often",
    )
    parser.add_argument("--workdir", type=Path, help="keep PKI, logs and timings here")
    parser.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, help="the environment whose Flower tools run"
    )
    parser.add_argument(
        "--idle-memory", action="store_true", help="read idle SuperNodes' memory before the run"
    )
    args = parser.parse_args(argv)
    # SIGTERM's default action skips the finally that kills the Flower processes (they run
    # in sessions of their own, so nothing else would): make it an exit instead.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="flower-bench-"))
        )
        result = measure_flower_round_trip(
            args.nodes,
            args.rounds,
            workdir,
            warmup_rounds=args.warmup_rounds,
            node_auth=not args.no_node_auth,
            reply_poll_seconds=args.reply_poll_seconds,
            venv=args.venv,
            idle_memory=args.idle_memory,
        )
    print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
