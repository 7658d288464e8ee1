"""The researcher's Flower ServerApp, run by the coordinator (``python -m ehds.fl.server_process``).

Frames on stdin/stdout (ehds.fl.frames; the Grid's own frames are in ehds.fl.grid), logs on
stderr. The ServerApp is loaded and called as Flower's ``flwr-serverapp`` does for a run
(Flower's loader, a Context with node id 0, an empty state and the run config), with a
PipeGrid in place of the SuperLink's. It is researcher code on the coordinator, so the
process cuts itself off the network first, as the ClientApp workers do.

  -> {"op": "start", "app_dir", "run_id", "run_config", "nodes": {name: flower node id}}
  <- ... Grid frames ...
  <- {"op": "done", "summary": SUMMARY} (exit 0) | {"op": "failed", "reason"} (exit 1)

SUMMARY is the study result: per-round metrics by node and their num-examples-weighted
mean, the final model (``context.state["ehds.model"]`` when the app leaves one there, else
the ArrayRecords of the last broadcast), and every ``ehds.*`` record of context.state.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, BinaryIO

from ehds.fl.frames import frame_channel, read_frame, write_frame
from ehds.fl.isolation import isolate

_log = logging.getLogger("ehds.fl.server_process")
MODEL_KEY = "ehds.model"
STATE_PREFIX = "ehds."
MAX_REASON_CHARS = 500


def _user_config(value: Any) -> dict[str, bool | int | float | str]:
    if not isinstance(value, dict):
        raise ValueError("run_config is not an object")
    return {
        str(key): item for key, item in value.items() if isinstance(item, bool | int | float | str)
    }


def _aggregate(nodes: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the mean over nodes weighted by num-examples (equal weights without it)."""
    from ehds.fl.grid import NUM_EXAMPLES, finite_or_none  # noqa: PLC0415

    names = sorted({name for metrics in nodes.values() for name in metrics})
    aggregate: dict[str, float | None] = {}
    counts = [metrics.get(NUM_EXAMPLES) for metrics in nodes.values()]
    if counts and all(count is not None for count in counts):
        aggregate[NUM_EXAMPLES] = float(sum(count for count in counts if count is not None))
    for name in names:
        if name == NUM_EXAMPLES:
            continue
        pairs = [
            (value, metrics.get(NUM_EXAMPLES))
            for metrics in nodes.values()
            if (value := metrics.get(name)) is not None
        ]
        if not pairs:
            aggregate[name] = None
            continue
        weighted = all(weight is not None and weight > 0 for _, weight in pairs)
        total = sum((weight or 0.0) if weighted else 1.0 for _, weight in pairs)
        mean = sum(value * ((weight or 0.0) if weighted else 1.0) for value, weight in pairs)
        aggregate[name] = finite_or_none(mean / total)
    return aggregate


def _jsonable(value: Any) -> Any:
    """A ConfigRecord/MetricRecord value as JSON (bytes as base64, non-finite as null)."""
    import math  # noqa: PLC0415

    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _arrays(record: Any) -> dict[str, dict[str, Any]]:
    """An ArrayRecord as {key: {dtype, shape, values}} (values flattened, C order)."""
    out: dict[str, dict[str, Any]] = {}
    for key, array in record.items():
        entry: dict[str, Any] = {"dtype": array.dtype, "shape": list(array.shape)}
        try:
            values = array.numpy().astype("float64").ravel().tolist()
        except (TypeError, ValueError):
            entry["values"] = None  # not a NumPy array (e.g. a framework's own format)
        else:
            entry["values"] = [_jsonable(value) for value in values]
        out[key] = entry
    return out


def build_summary(grid: Any, context: Any, isolation: str) -> dict[str, Any]:
    """SUMMARY from what the PipeGrid recorded and the Context the ServerApp left."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord  # noqa: PLC0415

    rounds = [
        {
            "round": record.label,
            "type": record.message_type,
            "nodes": record.nodes,
            "aggregate": _aggregate(record.nodes),
            "failed": sorted(record.failed),
        }
        for record in grid.rounds.values()
    ]
    state = context.state
    model: dict[str, Any] = {"source": "none", "arrays": {}}
    if isinstance(state.get(MODEL_KEY), ArrayRecord):
        model = {"source": "context.state", "arrays": {MODEL_KEY: _arrays(state[MODEL_KEY])}}
    elif grid.last_broadcast is not None:
        model = {
            "source": "last-broadcast",
            "arrays": {key: _arrays(rec) for key, rec in grid.last_broadcast.items()},
        }
    kept = {
        key: {name: _jsonable(value) for name, value in record.items()}
        for key, record in state.items()
        if key.startswith(STATE_PREFIX) and isinstance(record, ConfigRecord | MetricRecord)
    }
    return {
        "flwr_version": version("flwr"),
        "isolation": isolation,
        "rounds": rounds,
        "model": model,
        "state": kept,
    }


def run_server_app(
    start: Mapping[str, Any], frames_in: BinaryIO, frames_out: BinaryIO, isolation: str
) -> dict[str, Any]:
    """Load and run the ServerApp of ``start["app_dir"]``; its SUMMARY."""
    from flwr.app import Context, RecordDict  # noqa: PLC0415
    from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: PLC0415
    from flwr.server.run_serverapp import run as run_flower_server_app  # noqa: PLC0415
    from flwr.supercore.run import Run  # noqa: PLC0415
    from flwr.supercore.task_identity import TaskIdentity  # noqa: PLC0415

    from ehds.fl.bundle import read_app_info  # noqa: PLC0415
    from ehds.fl.grid import PipeGrid  # noqa: PLC0415

    app_dir = Path(str(start["app_dir"]))
    run_id = int(start["run_id"])
    run_config = _user_config(start.get("run_config", {}))
    nodes = start.get("nodes")
    if not isinstance(nodes, dict):
        raise ValueError("nodes is not an object")
    info = read_app_info(app_dir)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = PipeGrid(frames_in, frames_out, {str(name): int(nid) for name, nid in nodes.items()})
    run = Run.create_empty(run_id)
    run.fab_id = f"{info.publisher}/{info.name}"
    run.fab_version = info.version
    run.override_config = dict(run_config)
    grid.set_run(run)
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    context = run_flower_server_app(
        grid=grid, context=context, server_app_dir=str(app_dir), server_app_attr=info.serverapp
    )
    return build_summary(grid, context, isolation)


def main() -> int:
    """Isolate, read the start frame, run the ServerApp, report done or failed."""
    isolation = isolate()
    frames_in, frames_out = frame_channel()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    start = read_frame(frames_in)
    if start is None:
        return 0
    try:
        if start.get("op") != "start":
            raise ValueError("the first frame is not a start frame")
        summary = run_server_app(start, frames_in, frames_out, isolation)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"[:MAX_REASON_CHARS]
        _log.error("ServerApp failed: %s", type(error).__name__)
        with contextlib.suppress(OSError):
            write_frame(frames_out, {"op": "failed", "reason": reason})
        return 1
    write_frame(frames_out, {"op": "done", "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
