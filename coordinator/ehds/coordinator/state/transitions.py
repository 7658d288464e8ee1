"""The state machine of tasks and studies, shared by the changes that nodes and researchers
make (`node_changes.py`, `study_changes.py`); `store.py` puts them together.

Task lifecycle (`TaskRow.state`; final once `ended_at` is set):

    NOT_DISPATCHED --(node connected and offers the analysis)--> DISPATCHED --TaskAck-->
    RECEIVED --TaskProgress--> RUNNING --result stored--> DONE
    any open state --TaskOutcome--> REFUSED | FAILED,  --deadline--> TIMED_OUT,
    --study cancelled--> CANCELLED,  --node revoked--> FAILED;
    NOT_DISPATCHED is final when the node does not offer the analysis.

Study lifecycle: SUBMITTED -> DISPATCHED (a task sent) -> RUNNING (a task acknowledged) ->
AGGREGATING (every task final, >= min_nodes results) -> COMPLETED, in the same transaction as
the last task's end; FAILED (too few results, or the aggregation failed); CANCELLED.

Every change writes its audit event in the same transaction, and returns what must happen
outside the database as `Effects`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from ehds.analyses.base import canonical_json
from ehds.analyses.registry import Registry
from ehds.coordinator.effects import Effects
from ehds.coordinator.errors import StudyNotFoundError
from ehds.coordinator.result_document import (
    CONTENT_TYPE,
    build_result_document,
    contribution_summary,
    node_results,
)
from ehds.coordinator.state.models import (
    AuditEventRow,
    ResultRow,
    StudyResultRow,
    StudyRow,
    TaskRow,
)
from ehds.coordinator.state.snapshots import analysis_label, analysis_ref, assignment, study_model
from ehds.federation.model import (
    CancelTask,
    ErrorCode,
    NodeProfile,
    NodeTaskState,
    Study,
    StudyState,
)

__all__ = ["COORDINATOR_ACTOR", "Transitions", "audit", "chunks", "node_actor"]

log = logging.getLogger(__name__)


COORDINATOR_ACTOR = "coordinator"
IN_CLAUSE_CHUNK = 500

NOT_CONNECTED = "node not connected"
OPEN_STUDY_STATES = (
    StudyState.SUBMITTED.name,
    StudyState.DISPATCHED.name,
    StudyState.RUNNING.name,
    StudyState.AGGREGATING.name,
)
# States in which a node holds (or may hold) the task: it must hear of a cancel.
AT_NODE = frozenset(
    {NodeTaskState.DISPATCHED.name, NodeTaskState.RECEIVED.name, NodeTaskState.RUNNING.name}
)


def audit(
    session: Session,
    now: datetime,
    actor: str,
    action: str,
    *,
    study_id: str | None = None,
    node: str | None = None,
    **detail: Any,
) -> None:
    session.add(
        AuditEventRow(
            ts=now,
            actor=actor,
            action=action,
            study_id=study_id,
            node=node,
            detail=canonical_json(detail).decode(),
        )
    )


def node_actor(name: str) -> str:
    return f"node {name}"


def chunks(values: Sequence[str], size: int = IN_CLAUSE_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class Transitions:
    """Row-level steps of the state machine. Stateless: everything lives in the database (and,
    for one transaction, in ``session.info`` caches)."""

    def __init__(self, registry: Registry, *, min_cell_count: int) -> None:
        self._registry = registry
        self._min_cell_count = min_cell_count

    # ------------------------------------------------------------------ helpers

    def _study(self, session: Session, study_id: str) -> StudyRow | None:
        # Cached for the session (one transaction): a group of writes about one study (a
        # thousand acknowledgements) looks it up once.
        cache: dict[str, StudyRow] = session.info.setdefault("studies", {})
        study = cache.get(study_id)
        if study is None:
            study = session.scalars(select(StudyRow).where(StudyRow.id == study_id)).one_or_none()
            if study is not None:
                cache[study_id] = study
        return study

    def _open_tasks(self, session: Session, study: StudyRow) -> int:
        """How many of the study's tasks are not final, counted once per transaction and kept
        up to date by `_end_task` (so that the thousandth result does not count again)."""
        counts: dict[str, int] = session.info.setdefault("open_tasks", {})
        count = counts.get(study.id)
        if count is None:
            session.flush()
            count = counts[study.id] = (
                session.scalar(
                    select(func.count())
                    .select_from(TaskRow)
                    .where(TaskRow.study_id == study.id, TaskRow.ended_at.is_(None))
                )
                or 0
            )
        return count

    def _visible_study(self, session: Session, submitter: str | None, study_id: str) -> StudyRow:
        study = self._study(session, study_id)
        if study is None or (submitter is not None and study.submitted_by != submitter):
            raise StudyNotFoundError(study_id)
        return study

    def _count_ended(self, session: Session, study: StudyRow) -> None:
        """Call just BEFORE setting a task's ended_at (the count still includes it)."""
        session.info["open_tasks"][study.id] = self._open_tasks(session, study) - 1

    def _tasks(self, session: Session, study_id: str) -> list[TaskRow]:
        session.flush()  # the hot writes run without autoflush (see task_ack)
        return list(
            session.scalars(
                select(TaskRow).where(TaskRow.study_id == study_id).order_by(TaskRow.node_name)
            )
        )

    def _snapshot(self, session: Session, study: StudyRow, *, with_parameters: bool) -> Study:
        return study_model(study, self._tasks(session, study.id), with_parameters=with_parameters)

    def _touch(self, study: StudyRow, now: datetime, effects: Effects) -> None:
        study.updated_at = now
        effects.changed_studies.add(study.id)

    def _advance(self, study: StudyRow, state: StudyState, now: datetime, effects: Effects) -> None:
        """Move an open study forward to ``state`` (never backwards, never out of a final
        state)."""
        current = StudyState[study.state]
        if current.is_final or current is StudyState.AGGREGATING or current >= state:
            return
        study.state = state.name
        self._touch(study, now, effects)

    def _end_task(
        self,
        session: Session,
        now: datetime,
        task: TaskRow,
        study: StudyRow,
        *,
        state: NodeTaskState,
        code: ErrorCode,
        reason: str,
        effects: Effects,
        actor: str,
    ) -> None:
        self._count_ended(session, study)
        task.state = state.name
        task.error_code = code.name
        task.reason = reason
        task.ended_at = now
        task.updated_at = now
        label = analysis_label(study)
        if state is NodeTaskState.REFUSED:
            effects.refused[label] += 1
        elif state in (NodeTaskState.FAILED, NodeTaskState.TIMED_OUT):
            effects.failed[label] += 1
        audit(
            session,
            now,
            actor,
            f"task.{state.name.lower()}",
            study_id=study.id,
            node=task.node_name,
            task_id=task.task_id,
            error_code=code.name,
            reason=reason,
        )
        self._touch(study, now, effects)

    def _stop_at_node(
        self,
        task: TaskRow,
        reason: str,
        connected: Collection[str],
        effects: Effects,
    ) -> None:
        """Tell the node to stop a task it may hold: now, or when it reconnects."""
        if task.node_name in connected:
            effects.send(task.node_name, CancelTask(task.task_id, reason))
        else:
            task.cancel_pending = True

    def _check_finished(
        self, session: Session, now: datetime, study: StudyRow, effects: Effects
    ) -> None:
        """After a task ended: once every task is final, aggregate or fail the study."""
        current = StudyState[study.state]
        if current.is_final or current is StudyState.AGGREGATING:
            return
        if self._open_tasks(session, study) > 0:
            return
        tasks = self._tasks(session, study.id)
        done = sum(1 for task in tasks if task.state == NodeTaskState.DONE.name)
        if done >= study.min_nodes:
            study.state = StudyState.AGGREGATING.name
            audit(session, now, COORDINATOR_ACTOR, "study.aggregating", study_id=study.id)
            # In the same transaction as the last task's end: one commit fewer on the path
            # from the last result to the researcher (AGGREGATING is then never seen from
            # outside; a study left AGGREGATING by an older version is finished by `resume`).
            self._aggregate(session, now, study, tasks, effects)
        else:
            self._end_study(
                session,
                now,
                study,
                state=StudyState.FAILED,
                reason=contribution_summary(study, tasks),
                effects=effects,
            )
        self._touch(study, now, effects)

    def _end_study(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        *,
        state: StudyState,
        reason: str,
        effects: Effects,
        actor: str = COORDINATOR_ACTOR,
    ) -> None:
        study.state = state.name
        study.state_reason = reason
        study.ended_at = now
        effects.ended_studies.add(study.id)
        audit(session, now, actor, f"study.{state.name.lower()}", study_id=study.id, reason=reason)
        self._touch(study, now, effects)

    def _dispatch(
        self,
        session: Session,
        now: datetime,
        task: TaskRow,
        study: StudyRow,
        *,
        profile: NodeProfile,
        effects: Effects,
    ) -> None:
        """Send a NOT_DISPATCHED task to its (connected) node, or end it if the node's policy
        does not offer the analysis: the coordinator never sends what a node cannot run."""
        ref = analysis_ref(study)
        if ref not in profile.capabilities:
            offered = sorted(c.version for c in profile.capabilities if c.name == ref.name)
            if offered:
                code = ErrorCode.ANALYSIS_VERSION_UNSUPPORTED
                reason = (
                    f'the node\'s policy does not offer "{ref}" '
                    f"(it offers version {', '.join(offered)})"
                )
            else:
                code = ErrorCode.ANALYSIS_UNKNOWN
                reason = f'the node\'s policy does not offer "{ref}"'
            task.vocabulary_version = profile.vocabulary_version
            self._end_task(
                session,
                now,
                task,
                study,
                state=NodeTaskState.NOT_DISPATCHED,
                code=code,
                reason=reason,
                effects=effects,
                actor=COORDINATOR_ACTOR,
            )
            self._check_finished(session, now, study, effects)
            return
        task.state = NodeTaskState.DISPATCHED.name
        task.reason = ""
        task.dispatched_at = now
        task.updated_at = now
        task.vocabulary_version = profile.vocabulary_version
        effects.send(task.node_name, assignment(task, study))
        effects.dispatched[analysis_label(study)] += 1
        audit(
            session,
            now,
            COORDINATOR_ACTOR,
            "task.dispatched",
            study_id=study.id,
            node=task.node_name,
            task_id=task.task_id,
            vocabulary_version=profile.vocabulary_version,
        )
        self._advance(study, StudyState.DISPATCHED, now, effects)
        self._touch(study, now, effects)

    def _task(self, session: Session, task_id: str) -> TaskRow | None:
        """`session.get`, except that the second task of one study looked up in a transaction
        loads every task of that study in one query: a group of writes about one study (a
        thousand acknowledgements or results) then costs one query, not one per write, while a
        transaction of one write still loads one row."""
        task = session.identity_map.get(identity_key(TaskRow, task_id))
        if task is not None:
            return task
        task = session.get(TaskRow, task_id)
        if task is None:
            return None
        misses: dict[str, int] = session.info.setdefault("task_misses", {})
        count = misses[task.study_id] = misses.get(task.study_id, 0) + 1
        if count == 2:
            # Held here: the identity map keeps unchanged rows only weakly.
            held: list[TaskRow] = session.info.setdefault("task_rows", [])
            held.extend(session.scalars(select(TaskRow).where(TaskRow.study_id == task.study_id)))
        return task

    def _owned_task(self, session: Session, node: str, task_id: str, what: str) -> TaskRow | None:
        task = self._task(session, task_id)
        if task is None or task.node_name != node:
            # Not the node's to talk about (or unknown here): ignored, never an error to the
            # node, which could otherwise probe for other nodes' task ids.
            log.warning("ignored %s from node %s for task %r: not its task", what, node, task_id)
            return None
        return task

    def _study_of(self, session: Session, task: TaskRow) -> StudyRow:
        study = self._study(session, task.study_id)
        if study is None:  # the foreign key makes this impossible
            raise RuntimeError(f"task {task.task_id} has no study")
        return study

    def _aggregate(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        tasks: Sequence[TaskRow],
        effects: Effects,
    ) -> None:
        contents = {
            row.node_name: row.payload
            for row in session.scalars(select(ResultRow).where(ResultRow.study_id == study.id))
        }
        try:
            analysis = self._registry.get(analysis_ref(study))
            document = build_result_document(study, tasks, analysis, node_results(contents))
        except Exception:
            # Aggregation code is analysis code: its failure fails this study, not the
            # coordinator. The exception stays in the coordinator's log (no data in it: the
            # inputs are released aggregates).
            log.exception("aggregating study %s failed", study.id)
            self._end_study(
                session,
                now,
                study,
                state=StudyState.FAILED,
                reason="aggregation failed at the coordinator (see its log)",
                effects=effects,
            )
            return
        session.add(
            StudyResultRow(
                study_id=study.id,
                content_type=CONTENT_TYPE,
                content=document,
                sha256=hashlib.sha256(document).hexdigest(),
                created_at=now,
            )
        )
        summary = f"{len(contents)} of {len(tasks)} nodes contributed"
        self._end_study(
            session, now, study, state=StudyState.COMPLETED, reason=summary, effects=effects
        )
