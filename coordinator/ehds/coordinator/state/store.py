"""Every query and every change of the coordinator's state, as functions of a `Session`.

They run on the database thread (`worker.py`), one after another, each inside a transaction:
a change and its audit event commit together or not at all. A change returns `Effects` (what to
send, whom to wake up) and never acts outside the database itself; the dispatcher applies the
effects after the commit. The state machine is described in `transitions.py`.

    transitions.py     the row-level steps (end a task, finish a study, dispatch, aggregate)
    node_changes.py    what nodes change (and the operator's revocation)
    study_changes.py   what researchers and deadlines change; resumption at start
    store.py           `Store`: all of them, and the reads behind StudyApi
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ehds.coordinator.errors import ResultsNotReadyError
from ehds.coordinator.state.models import StudyResultRow, StudyRow, TaskRow
from ehds.coordinator.state.node_changes import HelloOutcome, NodeChanges, ResultOutcome
from ehds.coordinator.state.snapshots import study_model
from ehds.coordinator.state.study_changes import StudyChanges
from ehds.coordinator.state.transitions import chunks
from ehds.federation.model import Study, StudyState

__all__ = ["HelloOutcome", "ResultOutcome", "Store", "StudyPage"]


@dataclass(frozen=True)
class StudyPage:
    studies: list[Study]
    # seq of the last study on this page when more may follow.
    next_after: int | None


class Store(NodeChanges, StudyChanges):
    """The coordinator's state operations (see the module docstring)."""

    # ------------------------------------------------------------------ reads

    def get_study(
        self, session: Session, submitter: str | None, study_id: str, *, with_parameters: bool
    ) -> Study:
        study = self._visible_study(session, submitter, study_id)
        return self._snapshot(session, study, with_parameters=with_parameters)

    def list_studies(
        self, session: Session, submitter: str | None, page_size: int, after: int | None
    ) -> StudyPage:
        query = select(StudyRow).order_by(StudyRow.seq.desc()).limit(page_size + 1)
        if submitter is not None:
            query = query.where(StudyRow.submitted_by == submitter)
        if after is not None:
            query = query.where(StudyRow.seq < after)
        rows = list(session.scalars(query))
        more = len(rows) > page_size
        rows = rows[:page_size]
        tasks: dict[str, list[TaskRow]] = {row.id: [] for row in rows}
        for ids in chunks([row.id for row in rows]):
            for task in session.scalars(select(TaskRow).where(TaskRow.study_id.in_(ids))):
                tasks[task.study_id].append(task)
        studies = [study_model(row, tasks[row.id], with_parameters=False) for row in rows]
        return StudyPage(studies, rows[-1].seq if more and rows else None)

    def result_document(self, session: Session, submitter: str | None, study_id: str) -> bytes:
        study = self._visible_study(session, submitter, study_id)
        if study.state != StudyState.COMPLETED.name:
            raise ResultsNotReadyError(study.id, study.state)
        row = session.get(StudyResultRow, study.id)
        if row is None:  # COMPLETED is written in the same transaction as the document
            raise RuntimeError(f"study {study.id} is COMPLETED without a result document")
        return row.content
