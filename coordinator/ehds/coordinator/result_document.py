"""The result document of a study: the pooled aggregate, each node's released result, and
what happened at every node (the format is fixed by the federation contract).

It is built once, when the study completes, and stored as canonical JSON: GetResults serves the
same bytes (and digest) every time, whatever the analysis code does later. An iterative
analysis' document (`iteration_document`) has the same shape plus ``rounds``: its nodes are
each node's latest task, with the result it released in the last round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ehds.analyses.base import Analysis, JsonObject, canonical_json
from ehds.coordinator.state.models import StudyRow, TaskRow
from ehds.federation.model import ErrorCode, NodeTaskState

__all__ = [
    "CONTENT_TYPE",
    "build_result_document",
    "contribution_summary",
    "iteration_document",
    "node_results",
    "round_failure",
]

CONTENT_TYPE: Final = "application/json"

_VERBS: Final = {
    NodeTaskState.REFUSED: "refused",
    NodeTaskState.FAILED: "failed",
    NodeTaskState.TIMED_OUT: "timed out",
    NodeTaskState.CANCELLED: "was cancelled",
    NodeTaskState.NOT_DISPATCHED: "was not dispatched",
}


def node_results(contents: Mapping[str, bytes]) -> dict[str, JsonObject]:
    """Node name -> its released result, parsed (validated as a JSON object when stored)."""
    return {node: json.loads(content) for node, content in contents.items()}


def contribution_summary(study: StudyRow, tasks: Sequence[TaskRow]) -> str:
    """E.g. "2 of 3 nodes contributed, min_nodes is 3: node-dk refused (POLICY_REFUSED)"."""
    done = sum(1 for task in tasks if task.state == NodeTaskState.RELEASED.name)
    text = f"{done} of {len(tasks)} nodes contributed, min_nodes is {study.min_nodes}"
    others = [
        _outcome(task)
        for task in sorted(tasks, key=lambda t: t.node_name)
        if task.state != NodeTaskState.RELEASED.name
    ]
    return f"{text}: {', '.join(others)}" if others else text


def _outcome(task: TaskRow) -> str:
    """E.g. "node-dk refused (POLICY_REFUSED)"."""
    state = NodeTaskState[task.state]
    code = ErrorCode[task.error_code]
    detail = f" ({code.name})" if code is not ErrorCode.UNSPECIFIED else ""
    return f"{task.node_name} {_VERBS.get(state, state.name.lower())}{detail}"


def round_failure(round_number: int, tasks: Sequence[TaskRow]) -> str | None:
    """Why round ``round_number`` (>= 1) of an iteration cannot go on, or None: every node of
    the previous round must release again (a fit pooled over a set of nodes that changed half
    way is no pooled fit). E.g. "round 1: every node of round 0 must contribute, and node-dk
    refused (DISCLOSURE_REFUSED)"."""
    missing = [
        _outcome(task)
        for task in sorted(tasks, key=lambda t: t.node_name)
        if task.state != NodeTaskState.RELEASED.name
    ]
    if not missing:
        return None
    return (
        f"round {round_number}: every node of round {round_number - 1} must contribute, and "
        + ", ".join(missing)
    )


def build_result_document(
    study: StudyRow,
    tasks: Sequence[TaskRow],
    analysis: Analysis[Any],
    results: Mapping[str, JsonObject],
) -> bytes:
    """Canonical JSON of the document; runs `Analysis.aggregate` over ``results`` (node ->
    released result, RELEASED tasks only)."""
    params = analysis.parse_parameters(study.parameters)
    return _document(study, tasks, analysis.aggregate(params, results), results)


def iteration_document(
    study: StudyRow,
    tasks: Sequence[TaskRow],
    pooled: JsonObject,
    results: Mapping[str, JsonObject],
    rounds: int,
) -> bytes:
    """Canonical JSON of an iterative study's document. ``tasks``: every round's; ``pooled``:
    what `IterativeAnalysis.advance` finished with; ``results``: the last round's."""
    latest: dict[str, TaskRow] = {}
    for task in tasks:
        if task.node_name not in latest or task.round > latest[task.node_name].round:
            latest[task.node_name] = task
    return _document(study, list(latest.values()), pooled, results, rounds=rounds)


def _document(
    study: StudyRow,
    tasks: Sequence[TaskRow],
    pooled: JsonObject,
    results: Mapping[str, JsonObject],
    **extra: Any,
) -> bytes:
    nodes = [
        {
            "node": task.node_name,
            "state": task.state,
            "error_code": "" if task.error_code == ErrorCode.UNSPECIFIED.name else task.error_code,
            "reason": task.reason,
            "vocabulary_version": task.vocabulary_version,
            "result": results.get(task.node_name),
        }
        for task in sorted(tasks, key=lambda t: t.node_name)
    ]
    return canonical_json(
        {
            "study_id": study.id,
            "analysis": {"name": study.analysis_name, "version": study.analysis_version},
            "min_cell_count": study.min_cell_count,
            "pooled": pooled,
            "contributors": sorted(results),
            "nodes": nodes,
            **extra,
        }
    )
