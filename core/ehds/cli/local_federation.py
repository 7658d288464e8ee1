"""A throw-away federation on this machine: CA, certificates, a coordinator and country nodes,
each a separate OS process started through the `ehds` command, exactly as an operator would.

Used by `ehds demo` and by the fault tests, so that the demo and the tests exercise the same
production path: real processes, real mutual TLS, real configuration files, no shortcut.
Every process runs in its own session (process group) and is stopped, and if need be killed,
when the federation is closed: nothing is left behind, even after an error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import yaml

from ehds.core.errors import StateError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

COORDINATOR_READY = re.compile(
    r"coordinator listening on (?P<host>[^\s:]+):(?P<port>\d+) \(health [^\s:]+:(?P<health>\d+)\)"
)
NODE_READY = re.compile(r"node (?P<name>\S+) ready \(health [^\s:]+:(?P<health>\d+)\)")

COUNTRY_OFFSETS = {"fr": 0, "fi": 500_000_000, "dk": 1_000_000_000}
"""Person-id offsets that keep the country CDMs disjoint, as real partners' ids would be."""

ENGINES = ("duckdb", "postgresql", "spark")

DEMO_PRIVACY_BUDGET = 2.0
"""zCDP budget (rho) per permit at each demo node; each researcher may spend half of it."""
"""What a node of a local federation can run on (`prepare`'s ``engines``)."""

SPARK_MASTER = "local[1]"
"""A local federation's Spark nodes share one machine with the rest: one core each."""

HDAB_NAME = "demo-hdab"
"""The local federation's health data access body: one signing key, pinned by every node."""

PERMIT_ID = "demo-permit"
"""The data permit `prepare` issues to the researcher: every node, every allowed analysis."""

PERMIT_DAYS = 30


class FederationProcessError(StateError):
    """A federation process did not start, or exited when it should not have."""


class ManagedProcess:
    """One `ehds ...` process, its output in a log file, stopped for sure on close."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.health_port = 0
        self.args = list(args)
        self.log_path = log_path
        # A restarted process appends to the same log: read only what this run wrote.
        self._offset = log_path.stat().st_size if log_path.exists() else 0
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ehds.cli.main", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        """What this run of the process has written so far."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode("utf-8", errors="replace")

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        """The first match of ``pattern`` in the log written since start (polls the file)."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log_text())
            if match:
                return match
            if not self.alive():
                raise FederationProcessError(
                    f"{self.name} exited with status {self.process.returncode} before it was "
                    f"ready; its log: {self.log_path}\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise FederationProcessError(
                    f"{self.name} not ready after {timeout:.0f} s; its log: {self.log_path}\n"
                    f"{self._tail()}"
                )
            time.sleep(0.05)

    def _tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL to the whole process group if it does not exit in time."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout)
        self._signal_group(signal.SIGKILL)  # anything the process itself left in its group
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up code of the process runs."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The federation lives on loopback: a proxy set for the user's shell must not capture it.
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "grpc_proxy"):
        env.pop(key, None)
    return env


@dataclass
class NodeSetup:
    name: str
    country: str
    folder: Path
    # The synthetic CDM as generated (DuckDB); a PostgreSQL or Spark node holds a copy of it.
    cdm: Path
    config: Path
    policy: Path
    engine: str = "duckdb"


@dataclass
class LocalFederation:
    """Files of a local federation (`prepare`) and the processes running it."""

    root: Path
    pki: Path
    coordinator_config: Path
    researcher_config: Path
    operator_config: Path
    auditor_config: Path
    nodes: dict[str, NodeSetup]
    # The HDAB's signing key (private: what the HDAB's own system holds) and public key.
    hdab_key: Path
    hdab_public_key: Path
    # The permit `prepare` issued (PERMIT_ID), registered at the coordinator on its first start.
    permit_file: Path
    permit_id: str = PERMIT_ID
    coordinator_port: int = 0
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=_child_env)
    # Nodes log at INFO (`ehds -v`): tests read what a node logged about its tasks.
    verbose_nodes: bool = False

    # ----------------------------------------------------------------------- processes

    def start_coordinator(self) -> ManagedProcess:
        process = self._start(
            "coordinator", ["coordinator", "serve", "--config", str(self.coordinator_config)]
        )
        match = process.wait_for(COORDINATOR_READY)
        process.health_port = int(match["health"])
        port = int(match["port"])
        if self.coordinator_port == 0:
            # Pin the port the system chose, so that nodes' configurations stay valid when the
            # coordinator restarts on the same state.
            self.coordinator_port = port
            _rewrite_yaml(self.coordinator_config, ("listen", "port"), port)
            for node in self.nodes.values():
                _rewrite_yaml(node.config, ("coordinator", "address"), f"127.0.0.1:{port}")
            for client in (self.researcher_config, self.operator_config, self.auditor_config):
                _rewrite_yaml(client, ("coordinator", "address"), f"127.0.0.1:{port}")
        self.register_permit(self.permit_file)
        return process

    def register_permit(self, permit_file: Path) -> None:
        """Register a permit as the researcher (a holder), as `ehds permit register` does.
        Registering the same document again is a no-op, so a restarted coordinator is fine."""
        from ehds.coordinator.client import CoordinatorClient
        from ehds.coordinator.client_config import load_client_config

        with CoordinatorClient(load_client_config(self.researcher_config)) as client:
            client.register_permit(permit_file.read_bytes())

    def start_node(self, name: str) -> ManagedProcess:
        if self.coordinator_port == 0:
            raise FederationProcessError("start the coordinator before the nodes")
        node = self.nodes[name]
        verbose = ["-v"] if self.verbose_nodes else []
        process = self._start(name, [*verbose, "node", "serve", "--config", str(node.config)])
        process.health_port = int(process.wait_for(NODE_READY)["health"])
        return process

    def _start(self, name: str, args: Sequence[str]) -> ManagedProcess:
        old = self.processes.get(name)
        if old is not None and old.alive():
            raise FederationProcessError(f"{name} is already running (pid {old.pid})")
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        process = ManagedProcess(name, args, logs / f"{name}.log", self.env)
        self.processes[name] = process
        return process

    def stop(self, name: str) -> int:
        return self.processes[name].stop()

    def close(self) -> None:
        """Stop the nodes, then the coordinator; kill whatever does not stop."""
        names = [n for n in self.processes if n != "coordinator"]
        if "coordinator" in self.processes:
            names.append("coordinator")
        for name in names:
            self.processes[name].stop()

    def running_pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.alive()]


def _rewrite_yaml(path: Path, keys: tuple[str, ...], value: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    _write_yaml(path, data)


def _write_yaml(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def prepare(
    root: Path,
    countries: Sequence[str] = ("fr", "fi", "dk"),
    *,
    persons: int = 20_000,
    seed: int = 42,
    analyses: Sequence[tuple[str, str]] = (("person_count", "1.0.0"),),
    node_policies: dict[str, Sequence[tuple[str, str]]] | None = None,
    min_cell_count: int = 10,
    heartbeat_interval_seconds: float = 2.0,
    keepalive: tuple[float, float] = (10.0, 5.0),
    cdm_cache: Path | None = None,
    engines: Mapping[str, str] | None = None,
    postgres_urls: Mapping[str, str] | None = None,
    cdm_profile: str | None = None,
    manual_release: Mapping[str, Sequence[str]] | None = None,
    permit_nodes: Sequence[str] = (),
    policy_extra: Mapping[str, Mapping[str, Any]] | None = None,
    fhir_sources: Mapping[str, Path] | None = None,
) -> LocalFederation:
    """Create CA, certificates, country CDMs and configuration files under ``root`` (emptied).

    ``analyses`` is what every node's policy allows, unless ``node_policies`` names a node.
    ``cdm_cache`` (tests) keeps generated CDMs between federations: generation is
    deterministic for a (country, persons, seed), so a cached file is the same CDM.

    ``engines`` maps a node name (``node-fr``) to ``duckdb`` (the default), ``postgresql`` or
    ``spark``. A PostgreSQL node's CDM is loaded into the (empty) database that
    ``postgres_urls`` gives for it; a Spark node's CDM is exported to the Parquet layout in its
    folder. ``cdm_profile`` gives every node the CDM of that one country profile (same persons,
    same ids): identical CDMs, for comparing engines.

    Governance: an HDAB key (``hdab/``) pinned in every node's policy and trusted by the
    coordinator, and a permit (``permits/demo-permit.json``) for ``demo-researcher`` covering
    every node and every analysis a policy allows. Results are released automatically, except
    the analyses ``manual_release`` names for a node (``{"node-fi": ["incidence"]}``), which wait
    for that node's operator (`ehds node review release`). ``permit_nodes`` adds nodes the
    permit covers beyond the federation's own (nodes a benchmark starts by other means).

    ``fhir_sources`` feeds a node (``{"node-fi": Path("export/")}``) from a FHIR R4 bulk export
    through the FHIR connector (``ehds etl fhir``) instead of the synthetic generator; its
    vocabulary is the generator's subset, so the demo's cohorts run there too.
    """
    from ehds.core.signing import Signer
    from ehds.omop.database import CdmDatabase
    from ehds.omop.synth import SynthOptions, generate
    from ehds.permits import Permit, create_hdab_key, issue_permit
    from ehds.pki import Role, init_authority, issue_certificate

    engines = dict(engines or {})
    postgres_urls = dict(postgres_urls or {})
    for name, engine in engines.items():
        if engine not in ENGINES:
            raise ValueError(f"engines[{name!r}]: {engine!r} is not one of {', '.join(ENGINES)}")
        if engine == "postgresql" and name not in postgres_urls:
            raise ValueError(f"engines[{name!r}] is postgresql: postgres_urls[{name!r}] is missing")

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pki = root / "pki"
    init_authority(pki, "ehds-demo")
    issue_certificate(pki, Role.COORDINATOR, "coordinator")
    issue_certificate(pki, Role.RESEARCHER, "demo-researcher")
    issue_certificate(pki, Role.OPERATOR, "demo-operator")
    issue_certificate(pki, Role.AUDITOR, "demo-auditor")
    issued = pki / "issued"
    hdab_key, hdab_public_key = create_hdab_key(root / "hdab", HDAB_NAME)
    hdab_keys = [{"name": HDAB_NAME, "public_key": str(hdab_public_key)}]

    def tls(name: str) -> dict[str, str]:
        return {
            "certificate": str(issued / f"{name}.pem"),
            "key": str(issued / f"{name}.key"),
            "ca": str(issued / "ca.pem"),
        }

    coordinator_dir = root / "coordinator"
    coordinator_dir.mkdir()
    coordinator_config = coordinator_dir / "coordinator.yaml"
    _write_yaml(
        coordinator_config,
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "tls": tls("coordinator"),
            "revocation": {"crl": str(pki / "crl.pem"), "check_interval_seconds": 1.0},
            "state": {"url": "sqlite:///coordinator-state.db"},
            "health": {"host": "127.0.0.1", "port": 0},
            "keepalive": {"time_seconds": keepalive[0], "timeout_seconds": keepalive[1]},
            "heartbeat_interval_seconds": heartbeat_interval_seconds,
            "studies": {"min_cell_count": min_cell_count},
            "permits": {"hdab_keys": hdab_keys},
        },
    )
    clients = {}
    for role_name in ("researcher", "operator", "auditor"):
        path = root / f"{role_name}.yaml"
        _write_yaml(
            path,
            {"coordinator": {"address": "127.0.0.1:1"}, "tls": tls(f"demo-{role_name}")},
        )
        clients[role_name] = path

    nodes: dict[str, NodeSetup] = {}
    for country in countries:
        name = f"node-{country}"
        issue_certificate(pki, Role.NODE, name)
        folder = root / name
        folder.mkdir()
        cdm = folder / f"cdm-{country}.duckdb"
        profile = cdm_profile or country
        cached = cdm_cache / f"{profile}-{persons}-{seed}.duckdb" if cdm_cache is not None else None
        if fhir_sources and name in fhir_sources:
            _fhir_cdm(fhir_sources[name], cdm, COUNTRY_OFFSETS.get(profile, 0))
        elif cached is not None and cached.exists():
            shutil.copyfile(cached, cdm)
        else:
            generate(
                CdmDatabase.parse(str(cdm)),
                SynthOptions(
                    persons=persons,
                    seed=seed,
                    profile=profile,
                    id_offset=COUNTRY_OFFSETS.get(profile, 0),
                ),
            )
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cdm, cached)
        allowed = (node_policies or {}).get(name, analyses)
        manual = set((manual_release or {}).get(name, ()))
        policy = folder / "policy.yaml"
        _write_yaml(
            policy,
            {
                "version": "demo-1",
                "min_cell_count": min_cell_count,
                "hdab_keys": hdab_keys,
                "analyses": [
                    {"name": n, "version": v, "release": "manual" if n in manual else "auto"}
                    for n, v in allowed
                ],
                "privacy": {
                    "required_for": [],
                    "budget": {
                        "permit_rho": DEMO_PRIVACY_BUDGET,
                        "researcher_rho": DEMO_PRIVACY_BUDGET / 2,
                    },
                },
                **(policy_extra or {}).get(name, {}),
            },
        )
        engine = engines.get(name, "duckdb")
        config = folder / "node.yaml"
        _write_yaml(
            config,
            {
                "coordinator": {"address": "127.0.0.1:1"},
                "tls": tls(name),
                "cdm": _node_cdm(engine, cdm, folder, postgres_urls.get(name)),
                "policy": str(policy),
                "state": str(folder / "node-state.db"),
                "health": {"host": "127.0.0.1", "port": 0},
                "keepalive": {"time_seconds": keepalive[0], "timeout_seconds": keepalive[1]},
                "reconnect": {"initial_seconds": 0.2, "max_seconds": 2.0},
            },
        )
        nodes[name] = NodeSetup(name, country, folder, cdm, config, policy, engine)
    covered = {n for n, _ in analyses}
    for allowed in (node_policies or {}).values():
        covered |= {n for n, _ in allowed}
    now = datetime.now(UTC)
    permit_file = root / "permits" / f"{PERMIT_ID}.json"
    permit_file.parent.mkdir()
    permit_file.write_bytes(
        issue_permit(
            Signer.from_file(hdab_key),
            Permit(
                id=PERMIT_ID,
                issuer=HDAB_NAME,
                holders=("demo-researcher",),
                purpose="Demonstration and tests of the federation on synthetic data",
                nodes=tuple(sorted({*nodes, *permit_nodes})),
                analyses=tuple(sorted(covered)),
                valid_from=now - timedelta(minutes=5),
                valid_until=now + timedelta(days=PERMIT_DAYS),
                issued_at=now,
            ),
        )
    )
    return LocalFederation(
        root=root,
        pki=pki,
        coordinator_config=coordinator_config,
        researcher_config=clients["researcher"],
        operator_config=clients["operator"],
        auditor_config=clients["auditor"],
        nodes=nodes,
        hdab_key=hdab_key,
        hdab_public_key=hdab_public_key,
        permit_file=permit_file,
    )


def _fhir_cdm(source: Path, cdm: Path, id_offset: int) -> None:
    """A node CDM mapped from a FHIR export, exactly as an operator would build it."""
    from ehds.connectors.connector import run_connector
    from ehds.connectors.fhir.connector import FhirConnector
    from ehds.omop.database import CdmDatabase
    from ehds.omop.synth.vocabulary_subset import install_vocabulary_subset

    db = CdmDatabase.parse(str(cdm))
    install_vocabulary_subset(db)
    run_connector(FhirConnector([source]), db, id_offset=id_offset)


def _node_cdm(engine: str, cdm: Path, folder: Path, postgres_url: str | None) -> dict[str, Any]:
    """The ``cdm`` section of a node's configuration; copies the CDM where the engine reads it."""
    from ehds.omop.database import CdmDatabase
    from ehds.omop.loader import load_cdm
    from ehds.omop.parquet_layout import export_layout

    if engine == "postgresql":
        assert postgres_url is not None
        load_cdm(cdm, CdmDatabase.parse(postgres_url))
        return {"url": postgres_url}
    if engine == "spark":
        parquet = folder / "cdm-parquet"
        export_layout(CdmDatabase.parse(str(cdm)), parquet)
        return {
            "spark": {
                "parquet": str(parquet),
                "master": SPARK_MASTER,
                "conf": {"spark.driver.memory": "512m"},
            }
        }
    return {"url": str(cdm)}


@contextmanager
def running(federation: LocalFederation, *, nodes: bool = True) -> Iterator[LocalFederation]:
    """Start the coordinator (and the nodes), stop everything on exit whatever happens."""
    try:
        federation.start_coordinator()
        if nodes:
            for name in federation.nodes:
                federation.start_node(name)
        yield federation
    finally:
        federation.close()
