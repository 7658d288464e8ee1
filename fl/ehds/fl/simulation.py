"""`ehds fl simulate`: a researcher's local dry run of an fl study on Flower's simulation engine.

The study's own app runs unchanged on ``flwr.simulation.run_simulation`` (Ray backend), fed
what a node would feed it: ``node_config["data-path"]`` names a Parquet extract built by the
same code a node runs (`ehds.analyses.fl.extract.build_extract`), here from a local CDM whose
rows are split into N partitions, one per simulated node; ``run_config`` holds the app's
defaults with the study's settings over them. Flower's public simulation entry point takes
neither, so the apps are wrapped: the ServerApp in one that sets the run config, records
every reply's metrics (through a Grid that passes everything on) and keeps the final
``context.state``; the ClientApp in one that sets each node's config from its partition id.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.supercore.object_ref import load_app
from flwr.supercore.run import Run

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import cdm_session
from ehds.analyses.fl.extract import ExtractSummary, build_extract
from ehds.analyses.fl.parameters import FlParameters
from ehds.fl.bundle import FabInfo, read_app_info, unpack_fab
from ehds.omop.database import CdmDatabase

ConfigValue = bool | int | float | str


@dataclass
class SimulationResult:
    """Per round: ``{"round", "type", "nodes": {node: metrics}, "aggregate": metrics}``
    (aggregate = the mean weighted by ``num-examples``); ``state``: every record the app left
    in ``context.state`` under an ``ehds.`` key, as JSON-ready values."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    partition_rows: list[int] = field(default_factory=list)


class _RecordingGrid(Grid):
    """Passes everything to Flower's grid and notes the metrics of every reply."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self._sent: dict[str, tuple[str, str]] = {}
        self.rounds: dict[tuple[str, str], dict[str, dict[str, float]]] = {}

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def _note_sent(self, messages: Sequence[Message]) -> None:
        for message in messages:
            config = message.content.config_records.get("config", ConfigRecord())
            label = str(config.get("server-round", message.metadata.group_id or "-"))
            self._sent[message.metadata.message_id] = (label, message.metadata.message_type)

    def _note_replies(self, replies: Iterable[Message]) -> list[Message]:
        out = list(replies)
        for reply in out:
            key = self._sent.get(reply.metadata.reply_to_message_id)
            if key is None or reply.has_error():
                continue
            metrics: dict[str, float] = {}
            for record in reply.content.metric_records.values():
                metrics |= {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
            if metrics:
                nodes = self.rounds.setdefault(key, {})
                nodes[str(reply.metadata.src_node_id)] = metrics
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        ids = list(self._grid.push_messages(batch))
        self._note_sent(batch)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._note_replies(self._grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        replies = self._grid.send_and_receive(batch, timeout=timeout)
        self._note_sent(batch)  # Flower's grid set the message ids while pushing
        return self._note_replies(replies)


class ConfiguredClientApp(ClientApp):
    """The study's ClientApp with each simulated node's config set as a node would set it."""

    def __init__(
        self, inner: ClientApp, run_config: Mapping[str, ConfigValue], data_paths: Sequence[str]
    ) -> None:
        super().__init__()
        self._inner = inner
        self._run_config = dict(run_config)
        self._data_paths = list(data_paths)

    def __call__(self, message: Message, context: Context) -> Message:
        # Flower refuses a ClientApp that changes its context's configs, so the study's app
        # gets a context of its own; ``state`` is the same record, so what it keeps persists.
        partition = int(context.node_config["partition-id"])
        node_config = dict(context.node_config) | {
            "data-path": self._data_paths[partition],
            "node-name": f"node-{partition + 1}",
        }
        inner = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=node_config,
            state=context.state,
            run_config=dict(self._run_config),
        )
        return self._inner(message, inner)


def _json_record(record: Any) -> dict[str, Any]:
    if isinstance(record, ArrayRecord):
        return {k: record[k].numpy().tolist() for k in record}
    if isinstance(record, ConfigRecord | MetricRecord):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in record.items()}
    return {}


def _aggregate(nodes: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    weights = {n: m.get("num-examples", 1.0) for n, m in nodes.items()}
    total = sum(weights.values()) or 1.0
    keys = set.intersection(*(set(m) for m in nodes.values())) - {"num-examples"}
    return {k: sum(nodes[n][k] * weights[n] for n in nodes) / total for k in sorted(keys)}


def split_extract(extract: Path, parts: int, out_dir: Path, *, seed: int = 0) -> list[Path]:
    """``parts`` Parquet files of near-equal size, rows assigned by a seeded shuffle."""
    table = pq.read_table(extract)
    if table.num_rows < parts:
        raise ValueError(f"{table.num_rows} rows cannot make {parts} partitions")
    order = np.random.default_rng(seed).permutation(table.num_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(np.array_split(order, parts)):
        path = out_dir / f"partition-{i + 1}.parquet"
        pq.write_table(table.take(np.sort(rows)), path)
        paths.append(path)
    return paths


def run_app_simulation(
    app_dir: Path,
    data_paths: Sequence[Path],
    run_config: Mapping[str, ConfigValue],
    *,
    num_cpus: int = 2,
    object_store_bytes: int = 100 * 1024 * 1024,
) -> SimulationResult:
    """Run the Flower app in ``app_dir`` on Flower's simulation engine, one simulated node per
    data file; ``run_config`` goes over the app's own defaults."""
    info: FabInfo = read_app_info(app_dir)
    config: dict[str, ConfigValue] = dict(info.config) | dict(run_config)
    config.setdefault("min-nodes", len(data_paths))
    inner_server = load_app(info.serverapp, ValueError, app_dir)
    inner_client = load_app(info.clientapp, ValueError, app_dir)
    if not isinstance(inner_server, ServerApp) or not isinstance(inner_client, ClientApp):
        raise ValueError("the app's components are not a Flower ServerApp and ClientApp")
    sink: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        context.run_config.clear()
        context.run_config.update(config)
        recorder = _RecordingGrid(grid)
        inner_server(recorder, context)
        sink["rounds"] = recorder.rounds
        sink["state"] = context.state

    client = ConfiguredClientApp(inner_client, config, [str(p) for p in data_paths])
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": num_cpus,
            "object_store_memory": object_store_bytes,
            "include_dashboard": False,
        },
    }
    saved_pythonpath = os.environ.get("PYTHONPATH")
    # Ray 2.x warns (FutureWarning) unless told how to treat accelerator variables without GPUs.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=len(data_paths),
            backend_config=backend_config,
        )
    finally:
        # Flower's Ray backend exports the driver's sys.path as PYTHONPATH for its workers.
        if saved_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_pythonpath
        _shutdown_ray()
    if "state" not in sink:
        raise RuntimeError("the simulated run did not finish (see Flower's log above)")
    result = SimulationResult()
    for (label, kind), nodes in sink["rounds"].items():
        result.rounds.append(
            {"round": label, "type": kind, "nodes": nodes, "aggregate": _aggregate(nodes)}
        )
    state: RecordDict = sink["state"]
    result.state = {k: _json_record(v) for k, v in state.items() if k.startswith("ehds.")}
    result.partition_rows = [pq.ParquetFile(p).metadata.num_rows for p in data_paths]
    return result


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def run_fab_simulation(
    fab: bytes,
    data_paths: Sequence[Path],
    run_config: Mapping[str, ConfigValue],
    *,
    work_dir: Path | None = None,
    num_cpus: int = 2,
) -> SimulationResult:
    """`run_app_simulation` on a FAB, unpacked (with its safety checks) into a scratch dir."""
    with tempfile.TemporaryDirectory(prefix="ehds-fl-sim-", dir=work_dir) as scratch:
        app_dir = unpack_fab(fab, Path(scratch) / "app")
        return run_app_simulation(app_dir, data_paths, run_config, num_cpus=num_cpus)


def simulate_study(
    params: FlParameters,
    cdm_url: str,
    nodes: int,
    work_dir: Path,
    *,
    fab: bytes,
    num_cpus: int = 2,
) -> tuple[ExtractSummary, SimulationResult]:
    """The whole dry run: the extract of ``params`` (an `FlParameters`) from the local CDM
    at ``cdm_url``, split into ``nodes`` partitions, and the app of ``fab`` run over them
    with the study's run config. Returns the extract's summary and the run's result."""
    db = CdmDatabase.parse(cdm_url)
    extract = work_dir / "extract.parquet"
    with cdm_session(db) as engine:
        ctx = ComputeContext(cdm=db, min_cell_count=0, engine=engine, study_id="simulate")
        summary = build_extract(ctx, params, extract)
    paths = split_extract(extract, nodes, work_dir / "partitions")
    result = run_fab_simulation(
        fab, paths, params.app_run_config(), work_dir=work_dir, num_cpus=num_cpus
    )
    return summary, result


__all__ = [
    "ConfiguredClientApp",
    "SimulationResult",
    "run_app_simulation",
    "run_fab_simulation",
    "simulate_study",
    "split_extract",
]
