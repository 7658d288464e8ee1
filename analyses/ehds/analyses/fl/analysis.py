"""The `fl` analysis: a Flower app trained across nodes, in rounds of ordinary tasks.

Why an iterative analysis whose rounds the coordinator does not compute: the rounds are
Flower's. Round 0 is the join (each node checks the bundle against its own allow-list before
any of its code runs, builds its feature extract, checks its disclosure rules and starts its
ClientApp worker). After it, the researcher's ServerApp, run by the coordinator in a process
of its own, decides every round: each batch of Flower messages it sends becomes one round of
signed, permit-checked, audited tasks (``hosted``), and each node's reply is that task's
result. A node's task carries its own message only (`node_parameters`).

Nothing here imports Flower: the coordinator's and the node's main processes stay small; only
the ServerApp process and the node's worker process load it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from ehds.analyses.base import ComputeContext, DisclosureRefusedError, JsonObject, canonical_json
from ehds.analyses.iteration import (
    ROUND_FIELD,
    Finished,
    IterationFailedError,
    IterativeAnalysis,
    NextRound,
)
from ehds.federation.model import TaskStage

from .extract import build_extract
from .parameters import MAX_ROUNDS, FlParameters

JOIN_FIELDS: tuple[str, ...] = ("rows", "events", "columns", "isolation")


class FederatedLearning(IterativeAnalysis[FlParameters]):
    name = "fl"
    version = "1.0.0"
    parameters = FlParameters
    description = (
        "A Flower app (FAB) trained across nodes: each node trains on its own feature extract "
        "in a network-isolated worker; the researcher's ServerApp aggregates at the coordinator."
    )
    hosted: ClassVar[bool] = True
    # Round 0 (join), a standardisation query, then a train and an evaluate round per Flower
    # round, with room to spare for apps that send more.
    max_rounds: ClassVar[int] = 4 * MAX_ROUNDS + 10

    def compute(self, params: FlParameters, ctx: ComputeContext) -> JsonObject:
        runtime = ctx.require_fl()
        if params.round is None:
            return self._join(params, ctx)
        message = params.round.messages.get(_own_key(params))
        if message is None:
            raise IterationFailedError("fl: this round carries no message for this node")
        try:
            data = base64.b64decode(message, validate=True)
        except binascii.Error:
            raise IterationFailedError("fl: the round's message is not base64") from None
        ctx.report(TaskStage.COMPUTING, 0.5)
        reply = runtime.deliver(ctx.study_id, data)
        return {"reply": base64.b64encode(reply).decode("ascii")}

    def _join(self, params: FlParameters, ctx: ComputeContext) -> JsonObject:
        runtime = ctx.require_fl()
        fab = params.app.fab_bytes()
        runtime.check_app(params.app.name, params.app.version, fab)
        ctx.report(TaskStage.COMPUTING, 0.1)
        path = runtime.extract_path(ctx.study_id)
        summary = build_extract(ctx, params, path)
        threshold = max(runtime.min_rows, ctx.min_cell_count)
        if summary.rows < threshold:
            path.unlink(missing_ok=True)
            raise DisclosureRefusedError(
                "fl.min_rows",
                f"fl.min_rows: at least {threshold} persons are required at a node",
            )
        events_needed = max(runtime.min_events, ctx.min_cell_count)
        if summary.events < events_needed or summary.rows - summary.events < events_needed:
            path.unlink(missing_ok=True)
            raise DisclosureRefusedError(
                "fl.min_events",
                f"fl.min_events: at least {events_needed} persons with and without the "
                "outcome are required at a node",
            )
        ctx.check_cancelled()
        isolation = runtime.start(
            ctx.study_id, fab=fab, extract=path, run_config=params.app_run_config()
        )
        return {
            "rows": summary.rows,
            "events": summary.events,
            "columns": list(summary.columns),
            "isolation": isolation,
        }

    def advance(
        self,
        params: FlParameters,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        raise IterationFailedError("fl: the rounds are the ServerApp's (hosted), not advance()")

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        """Per round and metric: the aggregate, then each node's value where it released it."""
        header = ["round", "type", "metric", "aggregate", "nodes"]
        rows: list[list[Any]] = []
        summary = aggregate.get("training") if isinstance(aggregate, dict) else None
        rounds = summary.get("rounds", []) if isinstance(summary, dict) else []
        for entry in rounds if isinstance(rounds, list) else []:
            if not isinstance(entry, dict):
                continue
            nodes = _mapping(entry.get("nodes"))
            metrics = _mapping(entry.get("aggregate"))
            for metric, value in sorted(metrics.items()):
                per_node = {
                    node: values[metric]
                    for node, values in sorted(nodes.items())
                    if isinstance(values, dict) and metric in values
                }
                rows.append(
                    [entry.get("round"), entry.get("type"), metric, value, json.dumps(per_node)]
                )
        return header, rows


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _own_key(params: FlParameters) -> str:
    """A node's task carries exactly one message (`node_parameters`), keyed by its name."""
    assert params.round is not None
    if len(params.round.messages) != 1:
        raise IterationFailedError("fl: a node's task must carry exactly one message")
    return next(iter(params.round.messages))


def round_input(round_number: int, messages: Mapping[str, str]) -> JsonObject:
    """The ``round`` of the coordinator's round parameters: every node's message."""
    return {"number": round_number, "messages": dict(sorted(messages.items()))}


def node_parameters(parameters: bytes, node: str) -> bytes:
    """The parameters one node's task carries: the round's, with only that node's message."""
    data = json.loads(parameters)
    round_ = data.get(ROUND_FIELD)
    if not isinstance(round_, dict):
        return parameters
    messages = round_.get("messages")
    if not isinstance(messages, dict) or node not in messages:
        raise ValueError(f"the round carries no message for node {node!r}")
    data[ROUND_FIELD] = {**round_, "messages": {node: messages[node]}}
    return canonical_json(data)


def base_parameters(parameters: bytes) -> bytes:
    """Round 0's parameters without the bundle: what every later round starts from."""
    data = json.loads(parameters)
    app = data.get("app")
    if isinstance(app, dict):
        data["app"] = {**app, "fab": None}
    return canonical_json(data)


def is_hosted(analysis: object) -> bool:
    return bool(getattr(analysis, "hosted", False))


__all__ = [
    "FederatedLearning",
    "base_parameters",
    "is_hosted",
    "node_parameters",
    "round_input",
]
