"""The state machine of tasks and studies, shared by the changes that nodes and researchers
make (`node_changes.py`, `study_changes.py`); `store.py` puts them together.

Task lifecycle (`TaskRow.state`; final once `ended_at` is set):

    NOT_DISPATCHED --(node connected and offers the analysis)--> DISPATCHED --TaskAck-->
    RECEIVED --TaskProgress--> RUNNING <--> AWAITING_RELEASE --result stored--> RELEASED
    any open state --TaskOutcome--> REFUSED | FAILED,  --deadline--> TIMED_OUT,
    --study cancelled--> CANCELLED,  --node revoked--> FAILED;
    NOT_DISPATCHED is final when the node does not offer the analysis.

AWAITING_RELEASE: the node computed the result and holds it for its operator's review
(policy ``release: manual``); the coordinator holds no result meanwhile. A release rejected by
the node's operator ends the task REFUSED (RELEASE_REJECTED).

Study lifecycle: SUBMITTED -> DISPATCHED (a task sent) -> RUNNING (a task acknowledged) ->
AGGREGATING (every task final, >= min_nodes results) -> COMPLETED, in the same transaction as
the last task's end; FAILED (too few results, or the aggregation failed); CANCELLED.

Iterative analyses (`ehds.analyses.iteration`) run in rounds. When every task of the current
round has ended, `IterativeAnalysis.advance` gets that round's released results, in the same
transaction as the last task's end: either the next round (the study's round, its parameters
and the analysis' state are stored, a task is created per contributor of this round, and
`Effects.rounds` dispatches them once committed) or the end (result document, COMPLETED).
Round 0 needs min_nodes results like any study; a later round needs every node of the round
before. Only the current round's tasks are open, so cancel, deadline and revocation work on
them as on any task.

Every change appends its entry to the coordinator's audit chain (`ehds.audit`) in the same
transaction, and returns what must happen outside the database as `Effects`. A TaskAssignment
is signed once, when it is first sent, and stored: every re-send is the same bytes.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from ehds.analyses.base import JsonObject, canonical_json
from ehds.analyses.fl.analysis import is_hosted, node_parameters
from ehds.analyses.iteration import (
    Finished,
    IterationFailedError,
    IterativeAnalysis,
    NextRound,
    round_parameters,
)
from ehds.analyses.registry import Registry
from ehds.audit import AuditLog, AuditRef, payload_digest
from ehds.coordinator.effects import Effects
from ehds.coordinator.errors import StudyNotFoundError
from ehds.coordinator.result_document import (
    CONTENT_TYPE,
    build_result_document,
    contribution_summary,
    iteration_document,
    node_results,
    round_failure,
)
from ehds.coordinator.state.models import (
    PermitHolderRow,
    PermitRow,
    ResultRow,
    StudyResultRow,
    StudyRow,
    TaskRow,
    task_id,
)
from ehds.coordinator.state.snapshots import analysis_label, analysis_ref, study_model
from ehds.core.signing import Signer, sha256_hex
from ehds.federation import limits, model
from ehds.federation.assignment_signing import signing_bytes
from ehds.federation.model import (
    CancelTask,
    ErrorCode,
    NodeProfile,
    NodeTaskState,
    Study,
    StudyState,
    TaskAssignment,
    TaskStage,
)
from ehds.permits import HdabKey

__all__ = [
    "COORDINATOR_ACTOR",
    "Transitions",
    "Viewer",
    "chunks",
    "node_actor",
    "round_seconds",
    "study_subject",
    "task_subject",
]

log = logging.getLogger(__name__)


COORDINATOR_ACTOR = "coordinator"
IN_CLAUSE_CHUNK = 500
NONCE_BYTES = 16
AUDIT_TEXT_CHARS = 500
AUDIT_MAX_NAMES = 200
"""Lists of node names in an entry: longer ones are recorded by count (each task's own
entries name its node)."""

NOT_CONNECTED = "node not connected"
AGGREGATION_FAILED = "aggregation failed at the coordinator (see its log)"
OPEN_STUDY_STATES = (
    StudyState.SUBMITTED.name,
    StudyState.DISPATCHED.name,
    StudyState.RUNNING.name,
    StudyState.AGGREGATING.name,
)
# States in which a node holds (or may hold) the task: it must hear of a cancel.
AT_NODE = frozenset(
    {
        NodeTaskState.DISPATCHED.name,
        NodeTaskState.RECEIVED.name,
        NodeTaskState.RUNNING.name,
        NodeTaskState.AWAITING_RELEASE.name,
    }
)

Viewer = str | None
"""Who reads studies: a researcher's name (sees the studies of the permits they hold, and the
ones they submitted), or None for everything (operators, auditors, the coordinator itself)."""


def node_actor(name: str) -> str:
    return f"node {name}"


def researcher_actor(name: str) -> str:
    return f"researcher {name}"


def study_subject(study_id: str) -> str:
    return f"study {study_id}"


def task_subject(task_id: str) -> str:
    return f"task {task_id}"


def chunks(values: Sequence[str], size: int = IN_CLAUSE_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def new_task(study_id: str, node: str, round_number: int, now: datetime) -> TaskRow:
    """A task not yet sent: dispatched when its node is connected and offers the analysis."""
    return TaskRow(
        task_id=task_id(study_id, node, round_number),
        study_id=study_id,
        node_name=node,
        round=round_number,
        state=NodeTaskState.NOT_DISPATCHED.name,
        error_code=ErrorCode.UNSPECIFIED.name,
        reason=NOT_CONNECTED,
        vocabulary_version="",
        stage=TaskStage.UNSPECIFIED.name,
        fraction=0.0,
        updated_at=now,
        cancel_pending=False,
    )


def round_seconds(tasks: Sequence[TaskRow], now: datetime) -> float | None:
    """How long a round that ends ``now`` took, from its first dispatch: None when it did not
    end in this transaction (no task of it ended ``now``: a deadline on a hosted study whose
    round had already ended, timed then) or none of its tasks was ever sent."""
    if not any(task.ended_at == now for task in tasks):
        return None
    sent = [task.dispatched_at for task in tasks if task.dispatched_at is not None]
    if not sent:
        return None
    return max(0.0, (now - min(sent)).total_seconds())


def to_model_ref(ref: AuditRef | None) -> model.AuditRef | None:
    return None if ref is None else model.AuditRef(ref.chain, ref.seq, ref.hash)


class Transitions:
    """Row-level steps of the state machine. Stateless: everything lives in the database (and,
    for one transaction, in ``session.info`` caches).

    ``audit_log`` is the coordinator's chain, ``signer`` its key (the TLS key) that signs the
    task assignments, ``trusted`` the HDAB keys permits are checked against.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        min_cell_count: int,
        audit_log: AuditLog,
        signer: Signer,
        trusted: Sequence[HdabKey] = (),
    ) -> None:
        self._registry = registry
        self._min_cell_count = min_cell_count
        self.audit_log = audit_log
        self._signer = signer
        self._trusted = tuple(trusted)

    # ------------------------------------------------------------------ helpers

    def _audit(
        self,
        session: Session,
        actor: str,
        action: str,
        *,
        subject: str = "",
        digest: str = "",
        anchor: AuditRef | None = None,
        **detail: Any,
    ) -> AuditRef:
        """Append an entry to the chain inside the change's own transaction. Free texts (a
        reason) are cut to `AUDIT_TEXT_CHARS`: the chain holds identifiers and codes, and an
        over-long text must not fail the change it records."""
        # The chain is a Core table that no ORM change touches: reading its head need not
        # flush the session (a flush per entry would cost more than the entry itself).
        with session.no_autoflush:
            return self.audit_log.append(
                session,
                actor=actor,
                action=action,
                subject=subject,
                detail={
                    key: value[:AUDIT_TEXT_CHARS] if isinstance(value, str) else value
                    for key, value in detail.items()
                },
                digest=digest,
                anchor=anchor,
            )

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

    def _visible_study(self, session: Session, viewer: Viewer, study_id: str) -> StudyRow:
        """The study if ``viewer`` may see it; `StudyNotFoundError` otherwise, the same as for a
        study that does not exist (a researcher cannot probe for other permits' studies)."""
        study = self._study(session, study_id)
        if study is None or (viewer is not None and not self._may_see(session, viewer, study)):
            raise StudyNotFoundError(study_id)
        return study

    @staticmethod
    def _may_see(session: Session, researcher: str, study: StudyRow) -> bool:
        if study.submitted_by == researcher:
            return True
        return session.get(PermitHolderRow, (study.data_permit_id, researcher)) is not None

    def _permit_document(self, session: Session, permit_id: str) -> bytes:
        """The registered document of ``permit_id`` (b"" for a study older than permits),
        looked up once per transaction."""
        cache: dict[str, bytes] = session.info.setdefault("permit_documents", {})
        document = cache.get(permit_id)
        if document is None:
            row = session.get(PermitRow, permit_id)
            document = cache[permit_id] = row.document if row is not None else b""
        return document

    def _assignment(self, session: Session, task: TaskRow, study: StudyRow) -> TaskAssignment:
        """The task's signed TaskAssignment. Signed and stored the first time (ECDSA
        signatures are randomised: storing the signature is what makes re-sends identical)."""
        reference = (
            AuditRef(self.audit_log.chain, task.audit_seq, task.audit_hash)
            if task.audit_seq is not None and task.audit_hash is not None
            else None
        )
        unsigned = TaskAssignment(
            task_id=task.task_id,
            study_id=study.id,
            analysis=analysis_ref(study),
            parameters=self._task_parameters(study, task),
            deadline=study.deadline_at,
            min_cell_count=study.min_cell_count,
            data_permit_id=study.data_permit_id,
            requested_by=study.submitted_by,
            permit=self._permit_document(session, study.data_permit_id),
            nonce=task.nonce or "",
            expires_at=study.deadline_at,
            coordinator_audit_ref=to_model_ref(reference),
        )
        if task.signature is None or task.nonce is None:
            task.nonce = secrets.token_hex(NONCE_BYTES)
            unsigned = replace(unsigned, nonce=task.nonce)
            task.signature = self._signer.sign(signing_bytes(unsigned))
        return replace(unsigned, signature=task.signature)

    def _task_parameters(self, study: StudyRow, task: TaskRow) -> bytes:
        """The parameter bytes the task's node receives: the study's in round 0, the round's
        after (only the current round's tasks are ever sent). A hosted (federated-learning)
        round holds one message per node; each node's task carries its own only."""
        if not task.round:
            return study.parameters
        if task.round != study.round or study.round_parameters is None:
            raise RuntimeError(f"task {task.task_id} is not of its study's current round")
        if is_hosted(self._registry.get(analysis_ref(study))):
            return node_parameters(study.round_parameters, task.node_name)
        return study.round_parameters

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

    def _round_tasks(self, session: Session, study: StudyRow) -> list[TaskRow]:
        """The tasks of the study's current round (every task, for a study of one round)."""
        return [task for task in self._tasks(session, study.id) if task.round == study.round]

    def _snapshot(self, session: Session, study: StudyRow, *, with_parameters: bool) -> Study:
        return study_model(
            study, self._round_tasks(session, study), with_parameters=with_parameters
        )

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
        self._audit(
            session,
            actor,
            f"task.{state.name.lower()}",
            subject=task_subject(task.task_id),
            study=study.id,
            node=task.node_name,
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
        tasks = self._round_tasks(session, study)
        done = sum(1 for task in tasks if task.state == NodeTaskState.RELEASED.name)
        analysis = self._registry.get(analysis_ref(study))
        if isinstance(analysis, IterativeAnalysis):
            self._end_round(session, now, study, tasks, analysis=analysis, effects=effects)
        elif done >= study.min_nodes:
            study.state = StudyState.AGGREGATING.name
            self._audit(
                session, COORDINATOR_ACTOR, "study.aggregating", subject=study_subject(study.id)
            )
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
        digest: str = "",
    ) -> None:
        study.state = state.name
        study.state_reason = reason
        study.ended_at = now
        effects.ended_studies.add(study.id)
        self._audit(
            session,
            actor,
            f"study.{state.name.lower()}",
            subject=study_subject(study.id),
            digest=digest,
            reason=reason,
        )
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
        detail: dict[str, Any] = {
            "study": study.id,
            "node": task.node_name,
            "analysis": str(analysis_ref(study)),
            "permit": study.data_permit_id,
            "requested_by": study.submitted_by,
            "vocabulary_version": profile.vocabulary_version,
        }
        if task.round:
            detail["round"] = task.round
        reference = self._audit(
            session,
            COORDINATOR_ACTOR,
            "task.dispatched",
            subject=task_subject(task.task_id),
            # Of the bytes the node receives (a later round's parameters carry its input).
            digest=payload_digest(self._task_parameters(study, task)),
            **detail,
        )
        # The assignment names this entry (the node records it): fixed from now on.
        task.audit_seq, task.audit_hash = reference.seq, reference.hash
        effects.send(task.node_name, self._assignment(session, task, study))
        effects.dispatched[analysis_label(study)] += 1
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
        contents = self._round_results(session, study)
        try:
            analysis = self._registry.get(analysis_ref(study))
            if isinstance(analysis, IterativeAnalysis):
                # A study left AGGREGATING by a version without rounds (`resume`).
                self._end_round(session, now, study, tasks, analysis=analysis, effects=effects)
                return
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
                reason=AGGREGATION_FAILED,
                effects=effects,
            )
            return
        self._complete(
            session,
            now,
            study,
            document=document,
            contributed=f"{len(contents)} of {len(tasks)}",
            effects=effects,
        )

    def _complete(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        *,
        document: bytes,
        contributed: str,
        effects: Effects,
    ) -> None:
        session.add(
            StudyResultRow(
                study_id=study.id,
                content_type=CONTENT_TYPE,
                content=document,
                sha256=sha256_hex(document),
                created_at=now,
            )
        )
        self._end_study(
            session,
            now,
            study,
            state=StudyState.COMPLETED,
            reason=f"{contributed} nodes contributed",
            effects=effects,
            digest=payload_digest(document),
        )

    def _round_results(self, session: Session, study: StudyRow) -> dict[str, bytes]:
        """Node -> the result it released in the study's current round."""
        rows = session.execute(
            select(ResultRow.node_name, ResultRow.payload)
            .join(TaskRow, TaskRow.task_id == ResultRow.task_id)
            .where(ResultRow.study_id == study.id, TaskRow.round == study.round)
        )
        return dict(rows.tuples().all())

    # ------------------------------------------------------------------ rounds

    def _end_round(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        tasks: Sequence[TaskRow],
        *,
        analysis: IterativeAnalysis[Any],
        effects: Effects,
    ) -> None:
        """Every task of an iterative study's current round has ended: fail the study, start
        the next round, or finish it (see the module docstring)."""
        released = [task for task in tasks if task.state == NodeTaskState.RELEASED.name]
        seconds = round_seconds(tasks, now)
        if seconds is not None:
            effects.rounds_ended.append((analysis_label(study), seconds))
        if is_hosted(analysis):
            self._end_hosted_round(session, now, study, tasks, released=released, effects=effects)
            return
        if study.round == 0:
            problem = (
                contribution_summary(study, tasks) if len(released) < study.min_nodes else None
            )
        else:
            problem = round_failure(study.round, tasks)
        if problem is not None:
            self._end_study(
                session, now, study, state=StudyState.FAILED, reason=problem, effects=effects
            )
            return
        results = node_results(self._round_results(session, study))
        try:
            step = self._advance_analysis(study, analysis, results)
        except IterationFailedError as exc:
            self._end_study(
                session, now, study, state=StudyState.FAILED, reason=str(exc), effects=effects
            )
            return
        except Exception:
            # Analysis code, as in `_aggregate`: its failure fails this study only.
            log.exception("round %d of study %s failed at the coordinator", study.round, study.id)
            self._end_study(
                session,
                now,
                study,
                state=StudyState.FAILED,
                reason=AGGREGATION_FAILED,
                effects=effects,
            )
            return
        if isinstance(step, tuple):
            parameters, state = step
            self._start_round(
                session,
                now,
                study,
                released,
                parameters=parameters,
                state=state,
                effects=effects,
            )
            return
        document = iteration_document(
            study, self._tasks(session, study.id), step.result, results, study.round + 1
        )
        self._complete(
            session,
            now,
            study,
            document=document,
            contributed=f"{len(results)} of {len(tasks)}",
            effects=effects,
        )

    def _end_hosted_round(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        tasks: Sequence[TaskRow],
        *,
        released: Sequence[TaskRow],
        effects: Effects,
    ) -> None:
        """A federated-learning round ended: its replies go to the study's ServerApp
        (`Effects.fl_rounds`, once committed), which decides the next round or the end. A node
        that failed a later round is an error reply to the ServerApp, not the study's end:
        Flower's strategies decide how many replies they need."""
        problem: str | None = None
        if study.round == 0 and len(released) < study.min_nodes:
            problem = contribution_summary(study, tasks)
        elif now >= study.deadline_at:
            problem = "the study's deadline passed during federated training"
        if problem is not None:
            self._end_study(
                session, now, study, state=StudyState.FAILED, reason=problem, effects=effects
            )
            return
        effects.fl_rounds.add(study.id)
        self._touch(study, now, effects)

    def _advance_analysis(
        self,
        study: StudyRow,
        analysis: IterativeAnalysis[Any],
        results: dict[str, JsonObject],
    ) -> tuple[bytes, str] | Finished:
        """`IterativeAnalysis.advance` over this round's results: Finished, or the next
        round's (parameters, state as canonical JSON). `IterationFailedError` when the
        iteration cannot go on."""
        params = analysis.parse_parameters(study.parameters)
        state = json.loads(study.round_state) if study.round_state is not None else None
        step = analysis.advance(params, study.round, state, results)
        if isinstance(step, Finished):
            return step
        if not isinstance(step, NextRound):
            raise TypeError(f"{analysis.ref()}.advance returned {type(step).__name__}")
        next_round = study.round + 1
        if next_round >= analysis.max_rounds:
            raise IterationFailedError(
                f"{analysis.ref()} did not finish in {analysis.max_rounds} rounds"
            )
        parameters = round_parameters(study.parameters, next_round, step.round_input)
        if len(parameters) > limits.MAX_PARAMETERS_BYTES:
            raise IterationFailedError(
                f"{analysis.ref()}: the parameters of round {next_round} are {len(parameters)} "
                f"bytes, more than the {limits.MAX_PARAMETERS_BYTES} allowed"
            )
        return parameters, canonical_json(step.state).decode()

    def _start_round(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        contributors: Sequence[TaskRow],
        *,
        parameters: bytes,
        state: str,
        effects: Effects,
    ) -> None:
        """Store the next round and create its tasks (NOT_DISPATCHED, like a study's first
        tasks: `Effects.rounds` sends them to the nodes connected once this commits)."""
        study.round += 1
        study.round_parameters = parameters
        study.round_state = state
        self._open_round(
            session,
            now,
            study,
            sorted(contributor.node_name for contributor in contributors),
            parameters=parameters,
            effects=effects,
        )

    def _open_round(
        self,
        session: Session,
        now: datetime,
        study: StudyRow,
        nodes: Sequence[str],
        *,
        parameters: bytes,
        effects: Effects,
    ) -> None:
        """Create the tasks of the study's (already stored) current round, audit it and
        dispatch them once committed (`Effects.rounds`)."""
        tasks = [new_task(study.id, node, study.round, now) for node in nodes]
        session.add_all(tasks)
        session.info.setdefault("open_tasks", {})[study.id] = len(tasks)
        self._audit(
            session,
            COORDINATOR_ACTOR,
            "study.round",
            subject=study_subject(study.id),
            digest=payload_digest(parameters),
            round=study.round,
            nodes=len(tasks),
        )
        effects.rounds.add(study.id)
        self._touch(study, now, effects)
