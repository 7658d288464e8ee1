"""Changes made by nodes: Hello, heartbeats, acknowledgements, progress, results, outcomes;
and the operator's revocation of a node."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ehds.audit import AuditRef
from ehds.coordinator.effects import Effects
from ehds.coordinator.errors import NodeNotFoundError
from ehds.coordinator.result_document import CONTENT_TYPE
from ehds.coordinator.state.models import NodeRow, ResultRow, StudyRow, TaskRow
from ehds.coordinator.state.snapshots import analysis_label, node_info, profile_json
from ehds.coordinator.state.transitions import (
    Transitions,
    chunks,
    node_actor,
    task_subject,
)
from ehds.federation import limits
from ehds.federation.chunks import AssembledPayload
from ehds.federation.model import (
    CancelTask,
    ErrorCode,
    NodeInfo,
    NodeProfile,
    NodeTaskState,
    ProtocolVersion,
    ResultReceipt,
    StudyState,
    TaskStage,
)

__all__ = ["HelloOutcome", "NodeChanges", "ResultOutcome"]

log = logging.getLogger(__name__)

RESULT_CONTENT_TYPES = frozenset({CONTENT_TYPE, ""})

Report = tuple[str, str, TaskStage, float, datetime]
"""A progress report kept in memory: (node, task id, stage, fraction, reported at)."""

S = TypeVar("S", bound=Transitions)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class HelloOutcome:
    revoked: bool
    effects: Effects = field(default_factory=Effects)
    # (seq, hash) of the node's audit chain head last recorded here.
    audit_head: tuple[int, str] | None = None


@dataclass
class ResultOutcome:
    # The digest to put in the ResultReceipt; None: no receipt (unknown task, not this node's).
    receipt: bytes | None
    effects: Effects = field(default_factory=Effects)


def _without_autoflush(
    method: Callable[Concatenate[S, Session, P], R],
) -> Callable[Concatenate[S, Session, P], R]:
    """For the writes that come by the thousand (one per node and message): no flush before
    each lookup, one flush at commit. They query nothing that an earlier write of the same
    transaction could have left unflushed except through `session.get` (which sees it) and
    `Store._open_tasks` / `Store._tasks` (which flush first)."""

    def wrapper(self: S, session: Session, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with session.no_autoflush:
            return method(self, session, *args, **kwargs)

    return wrapper


class NodeChanges(Transitions):
    def node_connected(
        self,
        session: Session,
        now: datetime,
        name: str,
        version: ProtocolVersion,
        profile: NodeProfile,
        *,
        certificate_serial: int | None,
    ) -> HelloOutcome:
        """Record the node's Hello; dispatch what waited for it, re-send what it did not
        acknowledge, and cancel what ended while it was away."""
        node = session.get(NodeRow, name)
        if node is None:
            node = NodeRow(name=name, first_seen_at=now, revoked=False)
            session.add(node)
        elif node.revoked:
            return HelloOutcome(revoked=True)
        node.last_seen_at = now
        node.protocol_major = version.major
        node.protocol_minor = version.minor
        node.profile = profile_json(profile)
        node.certificate_serial = (
            f"{certificate_serial:x}" if certificate_serial is not None else None
        )
        self._audit(
            session,
            node_actor(name),
            "node.connected",
            subject=node_actor(name),
            protocol=str(version),
            software=f"{profile.software.name} {profile.software.version}",
            policy_version=profile.policy_version,
            vocabulary_version=profile.vocabulary_version,
            capabilities=[str(ref) for ref in profile.capabilities],
        )
        session.flush()
        outcome = HelloOutcome(revoked=False, audit_head=self.recorded_audit_head(session, name))
        effects = outcome.effects
        rows = session.execute(
            select(TaskRow, StudyRow)
            .join(StudyRow, TaskRow.study_id == StudyRow.id)
            .where(
                TaskRow.node_name == name,
                (TaskRow.ended_at.is_(None)) | (TaskRow.cancel_pending.is_(True)),
            )
            .order_by(StudyRow.seq)
        ).all()
        for task, study in rows:
            if task.ended_at is not None:
                effects.send(name, CancelTask(task.task_id, task.reason))
                task.cancel_pending = False
            elif task.state == NodeTaskState.NOT_DISPATCHED.name:
                self._dispatch(session, now, task, study, profile=profile, effects=effects)
            elif task.state == NodeTaskState.DISPATCHED.name:
                # At-least-once: sent before, never acknowledged (the same signed bytes).
                effects.send(name, self._assignment(session, task, study))
        return outcome

    def reconcile(
        self, session: Session, now: datetime, name: str, in_flight: frozenset[str]
    ) -> Effects:
        """The node's first Heartbeat on a stream: re-send acknowledged tasks it no longer
        lists, re-send the receipt of results it still holds, cancel tasks that ended here."""
        effects = Effects()
        rows = session.execute(
            select(TaskRow, StudyRow)
            .join(StudyRow, TaskRow.study_id == StudyRow.id)
            .where(
                TaskRow.node_name == name,
                TaskRow.ended_at.is_(None),
                TaskRow.state.in_(
                    (
                        NodeTaskState.RECEIVED.name,
                        NodeTaskState.RUNNING.name,
                        NodeTaskState.AWAITING_RELEASE.name,
                    )
                ),
            )
        ).all()
        for task, study in rows:
            if task.task_id not in in_flight:
                log.info("node %s lost task %s: sending it again", name, task.task_id)
                effects.send(name, self._assignment(session, task, study))
        listed = sorted(in_flight)
        for ids in chunks(listed):
            for task in session.scalars(
                select(TaskRow).where(
                    TaskRow.task_id.in_(ids),
                    TaskRow.node_name == name,
                    TaskRow.ended_at.is_not(None),
                )
            ):
                if task.state == NodeTaskState.RELEASED.name:
                    result = session.get(ResultRow, task.task_id)
                    if result is not None:
                        effects.send(
                            name, ResultReceipt(task.task_id, bytes.fromhex(result.sha256))
                        )
                else:
                    effects.send(name, CancelTask(task.task_id, task.reason or "task ended"))
        return effects

    def node_audit_head(self, session: Session, name: str, head: AuditRef) -> bool:
        """Record the head of node ``name``'s audit chain as an anchor in ours, unless it is
        the one recorded last; True if an entry was written. Both chains then hold evidence
        of each other: a node that later truncates or rewrites its chain no longer matches
        the anchors here (`ehds audit verify --against`)."""
        node = session.get(NodeRow, name)
        if node is None:
            return False
        if node.audit_head_seq == head.seq and node.audit_head_hash == head.hash:
            return False
        self._audit(
            session,
            node_actor(name),
            "node.audit_head",
            subject=node_actor(name),
            anchor=head,
        )
        node.audit_head_seq = head.seq
        node.audit_head_hash = head.hash
        return True

    def recorded_audit_head(self, session: Session, name: str) -> tuple[int, str] | None:
        """(seq, hash) of node ``name``'s chain head last recorded here."""
        node = session.get(NodeRow, name)
        if node is None or node.audit_head_seq is None or node.audit_head_hash is None:
            return None
        return node.audit_head_seq, node.audit_head_hash

    def flush_last_seen(self, session: Session, last_seen: Mapping[str, datetime]) -> None:
        if not last_seen:
            return
        session.execute(
            update(NodeRow),
            [{"name": name, "last_seen_at": ts} for name, ts in last_seen.items()],
        )

    def revoked_nodes(self, session: Session) -> set[str]:
        return set(session.scalars(select(NodeRow.name).where(NodeRow.revoked.is_(True))))

    def list_nodes(self, session: Session) -> list[NodeInfo]:
        return [node_info(row) for row in session.scalars(select(NodeRow).order_by(NodeRow.name))]

    def revoke_node(
        self, session: Session, now: datetime, operator: str, name: str, reason: str
    ) -> tuple[NodeInfo, Effects]:
        node = session.get(NodeRow, name)
        if node is None:
            raise NodeNotFoundError(name)
        effects = Effects()
        actor = f"operator {operator}"
        if not node.revoked:
            node.revoked = True
            node.revoked_at = now
            node.revoked_by = operator
            node.revoked_reason = reason
            self._audit(session, actor, "node.revoked", subject=node_actor(name), reason=reason)
        task_reason = f"node revoked: {reason}" if reason else "node revoked"
        rows = session.execute(
            select(TaskRow, StudyRow)
            .join(StudyRow, TaskRow.study_id == StudyRow.id)
            .where(TaskRow.node_name == name, TaskRow.ended_at.is_(None))
        ).all()
        for task, study in rows:
            self._end_task(
                session,
                now,
                task,
                study,
                state=NodeTaskState.FAILED,
                code=ErrorCode.CANCELLED,
                reason=task_reason,
                effects=effects,
                actor=actor,
            )
            self._check_finished(session, now, study, effects)
        return node_info(node), effects

    # ------------------------------------------------------------------ node messages

    @_without_autoflush
    def task_ack(self, session: Session, now: datetime, node: str, task_id: str) -> Effects:
        effects = Effects()
        task = self._owned_task(session, node, task_id, "TaskAck")
        if task is None:
            return effects
        if task.ended_at is not None:
            if task.state not in (NodeTaskState.RELEASED.name, NodeTaskState.REFUSED.name):
                effects.send(node, CancelTask(task.task_id, task.reason or "task ended"))
            return effects
        if task.state not in (NodeTaskState.DISPATCHED.name, NodeTaskState.NOT_DISPATCHED.name):
            return effects  # acknowledged again after a re-send: nothing changes
        study = self._study_of(session, task)
        task.state = NodeTaskState.RECEIVED.name
        task.dispatched_at = task.dispatched_at or now
        task.received_at = now
        task.updated_at = now
        self._audit(
            session,
            node_actor(node),
            "task.received",
            subject=task_subject(task.task_id),
            study=study.id,
            node=node,
        )
        self._advance(study, StudyState.RUNNING, now, effects)
        self._touch(study, now, effects)
        return effects

    @_without_autoflush
    def task_progress(
        self,
        session: Session,
        now: datetime,
        node: str,
        task_id: str,
        *,
        stage: TaskStage,
        fraction: float,
        reported_at: datetime | None = None,
    ) -> Effects:
        """Write a task's progress (RUNNING, or AWAITING_RELEASE for that stage; stage,
        fraction). The dispatcher keeps progress in memory and writes it lazily
        (`flush_progress`), except the AWAITING_RELEASE stage, written at once;
        ``reported_at``: when the node reported it (default ``now``)."""
        effects = Effects()
        task = self._owned_task(session, node, task_id, "TaskProgress")
        if task is None or task.ended_at is not None:
            return effects
        study = self._study_of(session, task)
        state = (
            NodeTaskState.AWAITING_RELEASE
            if stage is TaskStage.AWAITING_RELEASE
            else NodeTaskState.RUNNING
        )
        if task.state != state.name:
            task.state = state.name
            task.dispatched_at = task.dispatched_at or now
            task.received_at = task.received_at or now
            self._audit(
                session,
                node_actor(node),
                f"task.{state.name.lower()}",
                subject=task_subject(task.task_id),
                study=study.id,
                node=node,
            )
            self._advance(study, StudyState.RUNNING, now, effects)
        task.stage = stage.name
        task.fraction = min(1.0, max(0.0, fraction)) if math.isfinite(fraction) else 0.0
        updated = reported_at or now
        if task.updated_at is None or updated > task.updated_at:
            task.updated_at = updated
        self._touch(study, now, effects)
        return effects

    def flush_progress(self, session: Session, now: datetime, reports: list[Report]) -> Effects:
        """Write progress kept in memory: (node, task id, stage, fraction, reported at)."""
        effects = Effects()
        for node, task_id, stage, fraction, reported_at in reports:
            effects.merge(
                self.task_progress(
                    session,
                    now,
                    node,
                    task_id,
                    stage=stage,
                    fraction=fraction,
                    reported_at=reported_at,
                )
            )
        return effects

    def task_holder(self, session: Session, task_id: str) -> tuple[str, str, bool] | None:
        """(node, study id, still open) of a task, None if it is unknown."""
        task = session.get(TaskRow, task_id)
        if task is None:
            return None
        return task.node_name, task.study_id, task.ended_at is None

    @_without_autoflush
    def task_outcome(
        self,
        session: Session,
        now: datetime,
        node: str,
        task_id: str,
        *,
        code: ErrorCode,
        message: str,
    ) -> Effects:
        effects = Effects()
        task = self._owned_task(session, node, task_id, "TaskOutcome")
        if task is None or task.ended_at is not None:
            return effects
        study = self._study_of(session, task)
        state = NodeTaskState.REFUSED if code.is_refusal else NodeTaskState.FAILED
        self._end_task(
            session,
            now,
            task,
            study,
            state=state,
            code=code,
            reason=message[: limits.MAX_OUTCOME_MESSAGE_CHARS],
            effects=effects,
            actor=node_actor(node),
        )
        self._check_finished(session, now, study, effects)
        return effects

    @_without_autoflush
    def task_result(
        self, session: Session, now: datetime, node: str, task_id: str, payload: AssembledPayload
    ) -> ResultOutcome:
        """Store a node's result (one per task: a repeat replaces it while the study is open)
        and say which digest to acknowledge; the receipt goes out only after the commit."""
        task = self._owned_task(session, node, task_id, "result")
        if task is None:
            return ResultOutcome(receipt=None)
        outcome = ResultOutcome(receipt=payload.sha256)
        effects = outcome.effects
        study = self._study_of(session, task)
        digest = payload.sha256.hex()
        actor = node_actor(node)
        existing = (
            session.get(ResultRow, task.task_id)
            if task.state == NodeTaskState.RELEASED.name
            else None
        )
        if existing is not None:
            if (
                StudyState[study.state]
                in (StudyState.SUBMITTED, StudyState.DISPATCHED, StudyState.RUNNING)
                and existing.sha256 != digest
            ):
                # A repeat replaces, never duplicates (the study has not used it yet).
                existing.payload = payload.data
                existing.content_type = payload.content_type
                existing.sha256 = digest
                existing.size = len(payload.data)
                existing.received_at = now
                self._audit(
                    session,
                    actor,
                    "result.replaced",
                    subject=task_subject(task.task_id),
                    digest=f"sha256:{digest}",
                    study=study.id,
                    node=node,
                    size=len(payload.data),
                )
                return outcome
            outcome.receipt = bytes.fromhex(existing.sha256)
            return outcome
        if task.ended_at is not None:
            # Too late (timed out, cancelled, ...): not used, but acknowledged so that the node
            # stops sending it.
            self._audit(
                session,
                actor,
                "result.discarded",
                subject=task_subject(task.task_id),
                digest=f"sha256:{digest}",
                study=study.id,
                node=node,
                task_state=task.state,
            )
            return outcome
        problem = self._result_problem(payload)
        if problem is not None:
            self._end_task(
                session,
                now,
                task,
                study,
                state=NodeTaskState.FAILED,
                code=ErrorCode.INTERNAL,
                reason=problem,
                effects=effects,
                actor=actor,
            )
            self._check_finished(session, now, study, effects)
            return outcome
        session.add(
            ResultRow(
                task_id=task.task_id,
                study_id=study.id,
                node_name=node,
                content_type=payload.content_type or CONTENT_TYPE,
                payload=payload.data,
                sha256=digest,
                size=len(payload.data),
                received_at=now,
            )
        )
        self._count_ended(session, study)
        task.state = NodeTaskState.RELEASED.name
        task.error_code = ErrorCode.UNSPECIFIED.name
        task.reason = ""
        task.fraction = 1.0
        task.ended_at = now
        task.updated_at = now
        task.received_at = task.received_at or now
        latency = (now - task.dispatched_at).total_seconds() if task.dispatched_at else 0.0
        effects.completed.append((analysis_label(study), max(0.0, latency)))
        self._audit(
            session,
            actor,
            "task.released",
            subject=task_subject(task.task_id),
            digest=f"sha256:{digest}",
            study=study.id,
            node=node,
            size=len(payload.data),
        )
        self._advance(study, StudyState.RUNNING, now, effects)
        self._touch(study, now, effects)
        self._check_finished(session, now, study, effects)
        return outcome

    @staticmethod
    def _result_problem(payload: AssembledPayload) -> str | None:
        """Why a result cannot be used (a fixed text), or None."""
        if payload.content_type not in RESULT_CONTENT_TYPES:
            return f"result content type is not {CONTENT_TYPE}"
        try:
            value = json.loads(payload.data)
        except (ValueError, UnicodeDecodeError):
            return "result is not valid JSON"
        if not isinstance(value, dict):
            return "result is not a JSON object"
        return None
