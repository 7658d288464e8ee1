"""Rows to protocol models (`ehds.federation.model`): what the services hand out."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from ehds.analyses.base import canonical_json
from ehds.coordinator.state.models import NodeRow, StudyRow, TaskRow
from ehds.federation.model import (
    AnalysisRef,
    ErrorCode,
    NodeInfo,
    NodeProfile,
    NodeTaskState,
    ProtocolVersion,
    SoftwareInfo,
    Study,
    StudyNodeStatus,
    StudySpec,
    StudyState,
    TaskStage,
)

__all__ = [
    "analysis_label",
    "analysis_ref",
    "node_info",
    "profile_from_json",
    "profile_json",
    "study_model",
]


def analysis_ref(study: StudyRow) -> AnalysisRef:
    return AnalysisRef(study.analysis_name, study.analysis_version)


def analysis_label(study: StudyRow) -> str:
    """The ``analysis`` label of the coordinator's metrics: "name version"."""
    return f"{study.analysis_name} {study.analysis_version}"


def profile_json(profile: NodeProfile) -> str:
    return canonical_json(dataclasses.asdict(profile)).decode()


def profile_from_json(text: str) -> NodeProfile:
    data = json.loads(text)
    return NodeProfile(
        software=SoftwareInfo(data["software"]["name"], data["software"]["version"]),
        cdm_version=data["cdm_version"],
        vocabulary_version=data["vocabulary_version"],
        engine=data["engine"],
        capabilities=tuple(AnalysisRef(c["name"], c["version"]) for c in data["capabilities"]),
        policy_version=data["policy_version"],
    )


def node_info(row: NodeRow, *, connected: bool = False) -> NodeInfo:
    version = (
        ProtocolVersion(row.protocol_major, row.protocol_minor)
        if row.protocol_major is not None and row.protocol_minor is not None
        else None
    )
    return NodeInfo(
        name=row.name,
        connected=connected,
        last_seen=row.last_seen_at,
        protocol_version=version,
        profile=profile_from_json(row.profile) if row.profile else None,
        revoked=row.revoked,
    )


def _node_status(task: TaskRow) -> StudyNodeStatus:
    return StudyNodeStatus(
        node_name=task.node_name,
        state=NodeTaskState[task.state],
        error_code=ErrorCode[task.error_code],
        reason=task.reason,
        vocabulary_version=task.vocabulary_version,
        stage=TaskStage[task.stage],
        fraction=task.fraction,
        updated_at=task.updated_at,
    )


def study_model(study: StudyRow, tasks: Sequence[TaskRow], *, with_parameters: bool) -> Study:
    """``tasks``: the study's current round's (the only round of most studies).
    ``with_parameters=False`` for List and Watch, which leave spec.parameters empty so that
    a page stays far below gRPC's 4 MiB."""
    return Study(
        id=study.id,
        spec=StudySpec(
            title=study.title,
            analysis=analysis_ref(study),
            parameters=study.parameters if with_parameters else b"",
            min_nodes=study.min_nodes,
            deadline_seconds=study.deadline_seconds,
            target_nodes=tuple(json.loads(study.target_nodes)),
            data_permit_id=study.data_permit_id,
        ),
        state=StudyState[study.state],
        state_reason=study.state_reason,
        nodes=tuple(_node_status(task) for task in sorted(tasks, key=lambda t: t.node_name)),
        submitted_by=study.submitted_by,
        created_at=study.created_at,
        updated_at=study.updated_at,
        round=study.round,
    )
