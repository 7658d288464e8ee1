"""Every query and every change of the coordinator's state, as functions of a `Session`.

They run on the database thread (`worker.py`), one after another, each inside a transaction:
a change and its audit event commit together or not at all. A change returns `Effects` (what to
send, whom to wake up) and never acts outside the database itself; the dispatcher applies the
effects after the commit. The state machine is described in `transitions.py`.

    transitions.py     the row-level steps (end a task, finish a study, dispatch, aggregate),
                       the audit chain, signed task assignments, who may see a study
    node_changes.py    what nodes change (and the operator's revocation), audit anchors
    study_changes.py   what researchers, deadlines and retention change; resumption at start
    permit_changes.py  the register of data permits
    store.py           `Store`: all of them, and the reads behind StudyApi and AuditApi
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ehds.coordinator.errors import ResultsNotReadyError, ResultsPurgedError
from ehds.coordinator.state.fl_changes import FlChanges
from ehds.coordinator.state.models import PermitHolderRow, StudyResultRow, StudyRow, TaskRow
from ehds.coordinator.state.node_changes import HelloOutcome, NodeChanges, ResultOutcome
from ehds.coordinator.state.permit_changes import PermitChanges
from ehds.coordinator.state.snapshots import study_model
from ehds.coordinator.state.study_changes import StudyChanges
from ehds.coordinator.state.transitions import Viewer, chunks
from ehds.federation.model import Study, StudyState

__all__ = ["HelloOutcome", "ResultOutcome", "Store", "StudyPage"]


@dataclass(frozen=True)
class StudyPage:
    studies: list[Study]
    # seq of the last study on this page when more may follow.
    next_after: int | None


class Store(NodeChanges, StudyChanges, PermitChanges, FlChanges):
    """The coordinator's state operations (see the module docstring)."""

    # ------------------------------------------------------------------ reads

    def get_study(
        self, session: Session, viewer: Viewer, study_id: str, *, with_parameters: bool
    ) -> Study:
        study = self._visible_study(session, viewer, study_id)
        return self._snapshot(session, study, with_parameters=with_parameters)

    def list_studies(
        self, session: Session, viewer: Viewer, page_size: int, after: int | None
    ) -> StudyPage:
        """The studies ``viewer`` may see (those it submitted and those of the permits it
        holds; None: all), newest first."""
        query = select(StudyRow).order_by(StudyRow.seq.desc()).limit(page_size + 1)
        if viewer is not None:
            held = select(PermitHolderRow.permit_id).where(PermitHolderRow.holder == viewer)
            query = query.where(
                or_(StudyRow.submitted_by == viewer, StudyRow.data_permit_id.in_(held))
            )
        if after is not None:
            query = query.where(StudyRow.seq < after)
        rows = list(session.scalars(query))
        more = len(rows) > page_size
        rows = rows[:page_size]
        tasks: dict[str, list[TaskRow]] = {row.id: [] for row in rows}
        for ids in chunks([row.id for row in rows]):
            for task in session.scalars(select(TaskRow).where(TaskRow.study_id.in_(ids))):
                tasks[task.study_id].append(task)
        rounds = {row.id: row.round for row in rows}
        tasks = {
            study: [task for task in listed if task.round == rounds[study]]
            for study, listed in tasks.items()
        }
        studies = [study_model(row, tasks[row.id], with_parameters=False) for row in rows]
        return StudyPage(studies, rows[-1].seq if more and rows else None)

    def result_document(self, session: Session, viewer: Viewer, study_id: str) -> bytes:
        study = self._visible_study(session, viewer, study_id)
        if study.state != StudyState.COMPLETED.name:
            raise ResultsNotReadyError(study.id, study.state)
        if study.purged_at is not None:
            raise ResultsPurgedError(study.id)
        row = session.get(StudyResultRow, study.id)
        if row is None:  # COMPLETED is written in the same transaction as the document
            raise RuntimeError(f"study {study.id} is COMPLETED without a result document")
        return row.content

    def audit_lines(
        self, session: Session, *, since: datetime | None, after_seq: int, limit: int
    ) -> tuple[list[bytes], int]:
        """Up to ``limit`` lines of the coordinator's chain in order, and the seq of the last
        one (``after_seq`` if none): AuditApi.Export pages through the chain by seq."""
        lines: list[bytes] = []
        for line in self.audit_log.lines(session, since=since, after_seq=after_seq):
            lines.append(line)
            if len(lines) >= limit:
                break
        last = int(json.loads(lines[-1])["seq"]) if lines else after_seq
        return lines, last
