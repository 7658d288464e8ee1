"""The result document of a study: the pooled aggregate, each node's released result, and
what happened at every node (the format is fixed by the federation contract).

It is built once, when the study completes, and stored as canonical JSON: GetResults serves the
same bytes (and digest) every time, whatever the analysis code does later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ehds.analyses.base import Analysis, JsonObject, canonical_json
from ehds.coordinator.state.models import StudyRow, TaskRow
from ehds.federation.model import ErrorCode, NodeTaskState

__all__ = ["CONTENT_TYPE", "build_result_document", "contribution_summary", "node_results"]

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
    others = []
    for task in sorted(tasks, key=lambda t: t.node_name):
        state = NodeTaskState[task.state]
        if state is NodeTaskState.RELEASED:
            continue
        code = ErrorCode[task.error_code]
        detail = f" ({code.name})" if code is not ErrorCode.UNSPECIFIED else ""
        others.append(f"{task.node_name} {_VERBS.get(state, state.name.lower())}{detail}")
    return f"{text}: {', '.join(others)}" if others else text


def build_result_document(
    study: StudyRow,
    tasks: Sequence[TaskRow],
    analysis: Analysis[Any],
    results: Mapping[str, JsonObject],
) -> bytes:
    """Canonical JSON of the document; runs `Analysis.aggregate` over ``results`` (node ->
    released result, RELEASED tasks only)."""
    params = analysis.parse_parameters(study.parameters)
    pooled = analysis.aggregate(params, results)
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
        }
    )
