"""Changes made by researchers (submit, cancel) and by the clock (deadlines, retention), and
the resumption of open studies at start.

A study is accepted only under a registered data permit that, at submission, is valid, signed
by a trusted HDAB, covers the analysis and every target node, and is held by the submitter
(`ehds.permits.check_permit`, in the library's order of rules). Each node checks the permit
again, against its own pinned HDAB keys, before it runs anything.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ehds.analyses.fl.analysis import is_hosted
from ehds.audit import payload_digest
from ehds.coordinator.effects import Effects
from ehds.coordinator.errors import InvalidStudyError, StudyPermitError
from ehds.coordinator.state.models import (
    NodeRow,
    PermitRow,
    ResultRow,
    StudyResultRow,
    StudyRow,
)
from ehds.coordinator.state.snapshots import analysis_ref, study_model
from ehds.coordinator.state.transitions import (
    AT_NODE,
    AUDIT_MAX_NAMES,
    COORDINATOR_ACTOR,
    OPEN_STUDY_STATES,
    Transitions,
    new_task,
    researcher_actor,
    study_subject,
)
from ehds.coordinator.validation import ValidatedSpec, resolve_targets
from ehds.federation.model import (
    ErrorCode,
    NodeProfile,
    NodeTaskState,
    Study,
    StudySpec,
    StudyState,
)
from ehds.permits import Permit, PermitRefusal, PermitRefusedError, check_permit

__all__ = ["StudyChanges"]


class StudyChanges(Transitions):
    def submit(
        self,
        session: Session,
        now: datetime,
        submitter: str,
        validated: ValidatedSpec,
        *,
        request_id: str,
        connected: Mapping[str, NodeProfile],
        revoked_serials: frozenset[int] = frozenset(),
    ) -> tuple[Study, Effects]:
        """``revoked_serials``: the CRL in force; a node last seen with one of these
        certificates counts as revoked (no target) until it connects with a valid one."""
        effects = Effects()
        spec = validated.spec
        if request_id:
            existing = session.scalars(
                select(StudyRow).where(
                    StudyRow.submitted_by == submitter, StudyRow.request_id == request_id
                )
            ).one_or_none()
            if existing is not None:
                same = (
                    existing.title == spec.title
                    and analysis_ref(existing) == spec.analysis
                    and existing.parameters == spec.parameters
                    and existing.min_nodes == spec.min_nodes
                    and existing.deadline_seconds == spec.deadline_seconds
                    and json.loads(existing.target_nodes) == list(spec.target_nodes)
                    and existing.data_permit_id == spec.data_permit_id
                )
                if not same:
                    raise InvalidStudyError(
                        f"request_id: already used for study {existing.id}, with another spec"
                    )
                return self._snapshot(session, existing, with_parameters=True), effects
        permit, permit_row = self._study_permit(session, now, submitter, spec)
        known: dict[str, bool] = {}
        for name, revoked, serial in session.execute(
            select(NodeRow.name, NodeRow.revoked, NodeRow.certificate_serial)
        ):
            known[name] = revoked or (serial is not None and int(serial, 16) in revoked_serials)
        targets = resolve_targets(spec, known, permit.nodes)
        study = StudyRow(
            id=secrets.token_hex(8),
            title=spec.title,
            analysis_name=spec.analysis.name,
            analysis_version=spec.analysis.version,
            parameters=spec.parameters,
            min_nodes=spec.min_nodes,
            deadline_seconds=spec.deadline_seconds,
            target_nodes=json.dumps(list(spec.target_nodes)),
            data_permit_id=spec.data_permit_id,
            min_cell_count=self._min_cell_count,
            state=StudyState.SUBMITTED.name,
            state_reason="",
            submitted_by=submitter,
            request_id=request_id or None,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=spec.deadline_seconds),
            round=0,
        )
        session.add(study)
        session.flush()  # the study row before its tasks (foreign key)
        tasks = [new_task(study.id, name, 0, now) for name in targets]
        session.add_all(tasks)
        session.info.setdefault("studies", {})[study.id] = study
        session.info.setdefault("open_tasks", {})[study.id] = len(tasks)
        self._audit(
            session,
            researcher_actor(submitter),
            "study.submitted",
            subject=study_subject(study.id),
            digest=payload_digest(spec.parameters),
            analysis=str(spec.analysis),
            min_nodes=spec.min_nodes,
            deadline_seconds=spec.deadline_seconds,
            targets=targets if len(targets) <= AUDIT_MAX_NAMES else None,
            target_count=len(targets),
            permit=spec.data_permit_id,
            permit_digest=permit_row.digest,
            request_id=request_id,
        )
        effects.studies_submitted = 1
        effects.changed_studies.add(study.id)
        effects.deadlines[study.id] = study.deadline_at
        for task in tasks:
            profile = connected.get(task.node_name)
            if profile is not None:
                self._dispatch(session, now, task, study, profile=profile, effects=effects)
        session.flush()
        return study_model(study, tasks, with_parameters=True), effects

    def _study_permit(
        self, session: Session, now: datetime, submitter: str, spec: StudySpec
    ) -> tuple[Permit, PermitRow]:
        """The study's permit if it allows the study now, else `StudyPermitError` naming the
        first rule it breaks (the order of `ehds.permits.check_permit`: the document, its
        validity, then the nodes, the analysis, the holder)."""
        row = session.get(PermitRow, spec.data_permit_id)
        if row is None:
            raise StudyPermitError(
                PermitRefusal.MISSING,
                "no permit of this id is registered at this coordinator "
                "(register it first: ehds permit register)",
            )
        try:
            permit = check_permit(row.document, trusted=self._trusted, now=now).permit
            outside = [name for name in spec.target_nodes if not permit.covers_node(name)]
            if outside:
                # The researcher's own target names: safe, and what they must fix.
                raise StudyPermitError(
                    PermitRefusal.NODE_NOT_COVERED,
                    f"{PermitRefusal.NODE_NOT_COVERED.message} ({', '.join(outside)})",
                )
            if not permit.covers_analysis(spec.analysis.name):
                raise PermitRefusedError(PermitRefusal.ANALYSIS_NOT_COVERED)
            if not permit.held_by(submitter):
                raise PermitRefusedError(PermitRefusal.NOT_HOLDER)
        except PermitRefusedError as exc:
            raise StudyPermitError(exc.reason) from None
        return permit, row

    def cancel(
        self,
        session: Session,
        now: datetime,
        submitter: str,
        study_id: str,
        *,
        reason: str,
        connected: Collection[str],
    ) -> tuple[Study, Effects]:
        effects = Effects()
        study = self._visible_study(session, submitter, study_id)
        if not StudyState[study.state].is_final:
            actor = f"researcher {submitter}"
            why = f"study cancelled by {submitter}" + (f": {reason}" if reason else "")
            for task in self._tasks(session, study.id):
                if task.ended_at is not None:
                    continue
                at_node = task.state in AT_NODE
                self._end_task(
                    session,
                    now,
                    task,
                    study,
                    state=NodeTaskState.CANCELLED,
                    code=ErrorCode.CANCELLED,
                    reason=why,
                    effects=effects,
                    actor=actor,
                )
                if at_node:
                    self._stop_at_node(task, why, connected, effects)
            self._end_study(
                session,
                now,
                study,
                state=StudyState.CANCELLED,
                reason=why,
                effects=effects,
                actor=actor,
            )
        return self._snapshot(session, study, with_parameters=True), effects

    def expire(
        self, session: Session, now: datetime, study_id: str, connected: Collection[str]
    ) -> Effects:
        """The study's deadline timer fired: time out every task still open, then finish."""
        effects = Effects()
        study = self._study(session, study_id)
        if study is None:
            return effects
        state = StudyState[study.state]
        if state.is_final or state is StudyState.AGGREGATING:
            return effects
        if now < study.deadline_at:
            effects.deadlines[study.id] = study.deadline_at  # fired early: arm it again
            return effects
        for task in self._tasks(session, study.id):
            if task.ended_at is not None:
                continue
            at_node = task.state in AT_NODE
            reason = (
                "no result before the study's deadline"
                if at_node
                else "the node did not connect before the study's deadline"
            )
            self._end_task(
                session,
                now,
                task,
                study,
                state=NodeTaskState.TIMED_OUT,
                code=ErrorCode.DEADLINE_EXCEEDED,
                reason=reason,
                effects=effects,
                actor=COORDINATOR_ACTOR,
            )
            if at_node:
                self._stop_at_node(task, "study deadline passed", connected, effects)
        self._check_finished(session, now, study, effects)
        return effects

    def aggregate(self, session: Session, now: datetime, study_id: str) -> Effects:
        """Pool the results of an AGGREGATING study into its result document."""
        effects = Effects()
        study = self._study(session, study_id)
        if study is None or study.state != StudyState.AGGREGATING.name:
            return effects
        self._aggregate(session, now, study, self._tasks(session, study.id), effects)
        return effects

    def dispatch_round(
        self,
        session: Session,
        now: datetime,
        study_id: str,
        connected: Mapping[str, NodeProfile],
    ) -> Effects:
        """Send an iterative study's new round to the nodes connected now (`Effects.rounds`);
        the others get their task when they reconnect (`NodeChanges.node_connected`)."""
        effects = Effects()
        study = self._study(session, study_id)
        if study is None:
            return effects
        for task in self._round_tasks(session, study):
            if StudyState[study.state].is_final:
                break  # a task the node does not offer ended the round, and the study
            profile = connected.get(task.node_name)
            if (
                profile is not None
                and task.ended_at is None
                and task.state == NodeTaskState.NOT_DISPATCHED.name
            ):
                self._dispatch(session, now, task, study, profile=profile, effects=effects)
        return effects

    def resume(self, session: Session) -> Effects:
        """At start: re-arm the deadline of every open study (one past its deadline fires at
        once), and finish an aggregation a crash interrupted."""
        effects = Effects()
        for study in session.scalars(select(StudyRow).where(StudyRow.state.in_(OPEN_STUDY_STATES))):
            if study.state == StudyState.AGGREGATING.name:
                effects.aggregate.add(study.id)
            else:
                effects.deadlines[study.id] = study.deadline_at
                # Federated training whose ServerApp this restart ended: start it again (a
                # study still joining starts it when the join ends, as usual).
                if is_hosted(self._registry.get(analysis_ref(study))) and (
                    study.round > 0 or self._open_tasks(session, study) == 0
                ):
                    effects.fl_rounds.add(study.id)
        return effects

    def purge_ended(self, session: Session, now: datetime, cutoff: datetime, limit: int) -> int:
        """Retention: delete the results, result document and parameters of up to ``limit``
        studies that ended before ``cutoff``; the study and task rows stay (marked purged) and
        each purge is one audit entry. Returns how many studies were purged."""
        studies = list(
            session.scalars(
                select(StudyRow)
                .where(StudyRow.ended_at < cutoff, StudyRow.purged_at.is_(None))
                .order_by(StudyRow.ended_at)
                .limit(limit)
            )
        )
        for study in studies:
            results = session.execute(delete(ResultRow).where(ResultRow.study_id == study.id))
            document = session.execute(
                delete(StudyResultRow).where(StudyResultRow.study_id == study.id)
            )
            study.parameters = b""
            study.round_parameters = None
            study.round_state = None
            study.purged_at = now
            assert study.ended_at is not None  # selected on it
            self._audit(
                session,
                COORDINATOR_ACTOR,
                "retention.deleted",
                subject=study_subject(study.id),
                results=int(getattr(results, "rowcount", 0) or 0),
                result_document=bool(getattr(document, "rowcount", 0)),
                parameters=True,
                ended_at=study.ended_at.isoformat(),
            )
        return len(studies)
