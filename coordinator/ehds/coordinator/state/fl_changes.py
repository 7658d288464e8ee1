"""What the coordinator's federated-learning host changes: the rounds a ServerApp asks for,
and the end of its training.

Why the ServerApp's rounds are ordinary tasks: each Flower message a node receives is then a
signed task assignment checked against the permit and the node's policy, and each reply a
released result, audited at both ends like any analysis. The host (`ehds.coordinator.fl_host`)
reads a round's replies with `fl_round`, asks for the next with `fl_push`, and ends the
study with `fl_finish` or `fl_fail`; each is one transaction with its audit entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ehds.analyses.base import JsonObject
from ehds.analyses.fl.analysis import base_parameters, node_parameters, round_input
from ehds.analyses.iteration import round_parameters
from ehds.coordinator.effects import Effects
from ehds.coordinator.result_document import iteration_document
from ehds.coordinator.state.models import ResultRow, StudyRow, TaskRow
from ehds.coordinator.state.transitions import (
    Transitions,
)
from ehds.federation import limits
from ehds.federation.model import NodeTaskState, StudyState

MAX_ROUND_BYTES = 64 * 1024 * 1024
"""Every node's message of one round together (each node's own is at most 1 MiB)."""


@dataclass(frozen=True)
class FlRound:
    """A federated-learning study's round as the host needs it.

    ``open``: the study still runs. ``round``: 0 is the join. ``parameters``: round 0's
    (with the bundle). ``results``: node -> released result (JSON) or None (refused,
    failed, timed out) for the round's tasks; ``waiting``: some of its tasks are still open.
    ``joined``: the nodes whose join (round 0) was released, the ServerApp's nodes."""

    study_id: str
    open: bool
    round: int
    parameters: bytes
    results: dict[str, JsonObject | None]
    waiting: bool
    joined: list[str]


class FlChanges(Transitions):
    def fl_round(self, session: Session, study_id: str) -> FlRound | None:
        study = self._study(session, study_id)
        if study is None:
            return None
        tasks = self._round_tasks(session, study)
        payloads = self._round_results(session, study)
        results: dict[str, JsonObject | None] = {}
        for task in tasks:
            payload = payloads.get(task.node_name)
            released = task.state == NodeTaskState.RELEASED.name and bool(payload)
            results[task.node_name] = json.loads(payload) if released and payload else None
        state = StudyState[study.state]
        return FlRound(
            study_id=study.id,
            open=not state.is_final,
            round=study.round,
            parameters=study.parameters,
            results=results,
            waiting=any(task.ended_at is None for task in tasks),
            joined=sorted(self._join_results(session, study)),
        )

    def fl_push(
        self, session: Session, now: datetime, study_id: str, messages: Mapping[str, str]
    ) -> Effects:
        """The ServerApp's next batch (node -> base64 message): a new round, one task per
        node, dispatched once committed. Raises ValueError when the batch cannot be sent (the
        host then fails the study)."""
        effects = Effects()
        study = self._study(session, study_id)
        if study is None or StudyState[study.state].is_final:
            return effects
        if self._open_tasks(session, study) > 0:
            raise ValueError("a round is still open")
        known = {task.node_name for task in self._tasks(session, study.id) if task.round == 0}
        unknown = sorted(set(messages) - known)
        if unknown:
            raise ValueError(f"messages for nodes outside the study: {unknown}")
        next_round = study.round + 1
        parameters = round_parameters(
            base_parameters(study.parameters), next_round, _without_number(next_round, messages)
        )
        if len(parameters) > MAX_ROUND_BYTES:
            raise ValueError(f"round {next_round} is {len(parameters)} bytes")
        for node in messages:
            size = len(node_parameters(parameters, node))
            if size > limits.MAX_PARAMETERS_BYTES:
                raise ValueError(
                    f"the message for node {node!r} makes {size} bytes of parameters, more "
                    f"than the {limits.MAX_PARAMETERS_BYTES} allowed"
                )
        study.round = next_round
        study.round_parameters = parameters
        self._open_round(
            session, now, study, sorted(messages), parameters=parameters, effects=effects
        )
        return effects

    def fl_finish(
        self, session: Session, now: datetime, study_id: str, training: JsonObject
    ) -> Effects:
        """The ServerApp returned: its summary (model, per-round metrics, privacy) is the
        study's result document."""
        effects = Effects()
        study = self._study(session, study_id)
        if study is None or StudyState[study.state].is_final:
            return effects
        tasks = self._tasks(session, study.id)
        joined = self._join_results(session, study)
        pooled: dict[str, Any] = {"training": training, "joined": joined}
        document = iteration_document(study, tasks, pooled, {}, study.round + 1)
        self._complete(
            session,
            now,
            study,
            document=document,
            contributed=f"{len(joined)} of {sum(1 for t in tasks if t.round == 0)}",
            effects=effects,
        )
        return effects

    def fl_fail(self, session: Session, now: datetime, study_id: str, reason: str) -> Effects:
        effects = Effects()
        study = self._study(session, study_id)
        if study is None or StudyState[study.state].is_final:
            return effects
        self._end_study(
            session, now, study, state=StudyState.FAILED, reason=reason[:500], effects=effects
        )
        return effects

    def _join_results(self, session: Session, study: StudyRow) -> dict[str, JsonObject]:
        """Node -> what it released when it joined (rows, events, columns, isolation)."""
        rows = session.execute(
            select(ResultRow.node_name, ResultRow.payload)
            .join(TaskRow, TaskRow.task_id == ResultRow.task_id)
            .where(
                ResultRow.study_id == study.id,
                TaskRow.round == 0,
                TaskRow.state == NodeTaskState.RELEASED.name,
            )
        )
        return {node: json.loads(payload) for node, payload in sorted(rows.tuples()) if payload}


def _without_number(number: int, messages: Mapping[str, str]) -> JsonObject:
    data = round_input(number, messages)
    data.pop("number")
    return data
