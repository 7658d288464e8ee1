"""An in-process federation for tests and benchmarks: no coordinator, no node agent.

It wires the same pieces the coordinator and the node agents use (a ServerHost and one
ClientWorker per node, each unpacking and checking the same FAB) and relays every Push to
the workers in parallel and their replies back, until the ServerApp is done. What it measures
is therefore our hosting overhead around Flower, without the node link in between.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ehds.fl.bundle import fab_digest, read_fab_info, unpack_fab
from ehds.fl.client_host import ClientWorker, WorkerError
from ehds.fl.codec import node_id_for
from ehds.fl.server_host import Done, Failed, ServerHost


class LoopbackError(RuntimeError):
    """The ServerApp failed, or the run overran its time limit."""


def merged_run_config(fab: bytes, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The FAB's [tool.flwr.app.config] with ``overrides``; unknown keys refused, as Flower does."""
    config: dict[str, Any] = dict(read_fab_info(fab).config)
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"run config keys not declared by the app: {unknown}")
    config.update(overrides)
    return config


def _handle(worker: ClientWorker | None, message: bytes, timeout: float) -> bytes | None:
    if worker is None:
        return None
    try:
        return worker.handle(message, timeout)
    except WorkerError:
        return None


async def _relay(
    host: ServerHost, workers: Mapping[str, ClientWorker], deadline: float, timeout: float
) -> tuple[dict[str, Any], list[float]]:
    rounds: list[float] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LoopbackError("the run overran its time limit")
        try:
            event = await asyncio.wait_for(host.next_event(), remaining)
        except TimeoutError as error:
            raise LoopbackError("the run overran its time limit") from error
        if isinstance(event, Done):
            return event.summary, rounds
        if isinstance(event, Failed):
            raise LoopbackError(event.reason)
        started = time.perf_counter()
        names = list(event.messages)
        replies = await asyncio.gather(
            *(
                asyncio.to_thread(_handle, workers.get(name), event.messages[name], timeout)
                for name in names
            )
        )
        await host.deliver(dict(zip(names, replies, strict=True)))
        rounds.append(time.perf_counter() - started)


async def _serve(
    *,
    server_dir: Path,
    run_id: int,
    run_config: Mapping[str, Any],
    nodes: Mapping[str, int],
    workers: Mapping[str, ClientWorker],
    deadline: float,
    message_timeout: float,
    python: str,
) -> tuple[dict[str, Any], list[float]]:
    host = await ServerHost.start(
        app_dir=server_dir, run_id=run_id, run_config=run_config, nodes=nodes, python=python
    )
    try:
        return await _relay(host, workers, deadline, message_timeout)
    finally:
        await host.stop()


def run_loopback(
    fab: bytes,
    work_dir: Path,
    run_config: Mapping[str, Any],
    node_configs: Mapping[str, Mapping[str, Any]],
    *,
    run_id: int = 1,
    timeout: float = 300.0,
    message_timeout: float = 120.0,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run the FAB's ServerApp against one ClientApp worker per node; its SUMMARY.

    ``run_config`` overrides the FAB's defaults. The SUMMARY gains a "loopback" entry:
    ``start_seconds`` (workers started and ready), ``round_seconds`` (per pushed batch, from
    the Push to the delivered replies) and ``total_seconds``.
    """
    began = time.perf_counter()
    deadline = time.monotonic() + timeout
    config = merged_run_config(fab, run_config)
    work_dir.mkdir(parents=True, exist_ok=True)
    fab_path = work_dir / "app.fab"
    fab_path.write_bytes(fab)
    digest = fab_digest(fab)
    server_dir = unpack_fab(fab, work_dir / "server" / "app")
    nodes = {name: node_id_for(name) for name in node_configs}
    workers: dict[str, ClientWorker] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            futures = {
                name: pool.submit(
                    ClientWorker.start,
                    fab_path=fab_path,
                    sha256=digest,
                    app_dir=work_dir / "nodes" / name / "app",
                    node_id=nodes[name],
                    node_config=node_configs[name],
                    run_config=config,
                    run_id=run_id,
                    timeout=max(1.0, deadline - time.monotonic()),
                    python=python,
                )
                for name in nodes
            }
            errors: list[str] = []
            for name, future in futures.items():
                try:
                    workers[name] = future.result()
                except WorkerError as error:
                    errors.append(f"{name}: {error.code}")
        if errors:
            raise LoopbackError(f"workers did not start: {errors}")
        started = time.perf_counter() - began
        summary, rounds = asyncio.run(
            _serve(
                server_dir=server_dir,
                run_id=run_id,
                run_config=config,
                nodes=nodes,
                workers=workers,
                deadline=deadline,
                message_timeout=message_timeout,
                python=python,
            )
        )
    finally:
        for worker in workers.values():
            worker.stop()
    summary["loopback"] = {
        "start_seconds": started,
        "round_seconds": rounds,
        "total_seconds": time.perf_counter() - began,
    }
    return summary
