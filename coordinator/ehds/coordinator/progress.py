"""Task progress, kept in memory: a TaskProgress is not a database write.

Nodes report progress (stage, fraction) several times per task; writing each report, and
re-reading the study for every Watch stream it wakes, was most of the coordinator's work on a
short study. Here a report updates this table on the event loop. What the researcher sees is the
stored study with the table laid over it (`overlay`): a task the node reported on shows RUNNING
(AWAITING_RELEASE in that stage) with its stage and fraction, whatever its stored open state.

The RUNNING state (and its audit event) is written lazily: with the task's next change (its
result or outcome, in the same group of writes) and by the periodic flush. After a restart a
task may therefore show RECEIVED until the node reports again, an accepted loss.

Ownership: a node may only report on its own tasks. The table learns which node holds which task
from the TaskAssignments the coordinator sends (`assigned`); a report on a task it does not know
(after a restart) is checked against the database first (`Dispatcher`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from ehds.federation.model import NodeTaskState, Study, StudyState, TaskStage

__all__ = ["LiveProgress", "ProgressEntry"]

_OPEN_AT_NODE = frozenset(
    {
        NodeTaskState.DISPATCHED,
        NodeTaskState.RECEIVED,
        NodeTaskState.RUNNING,
        NodeTaskState.AWAITING_RELEASE,
    }
)


@dataclass
class ProgressEntry:
    task_id: str
    node: str
    study_id: str
    stage: TaskStage = TaskStage.UNSPECIFIED
    fraction: float = 0.0
    updated_at: datetime | None = None
    # The node reported on the task (it is RUNNING) since the entry was last written.
    dirty: bool = False
    # RUNNING (and its audit event) is in the database.
    persisted: bool = False

    @property
    def reported(self) -> bool:
        return self.updated_at is not None


class LiveProgress:
    """Tasks held by nodes and their latest progress; event loop only."""

    def __init__(self) -> None:
        self._tasks: dict[str, ProgressEntry] = {}
        # study id -> node name -> entry (a study has one task per node).
        self._studies: dict[str, dict[str, ProgressEntry]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def assigned(self, task_id: str, node: str, study_id: str) -> None:
        """The coordinator sent ``task_id`` to ``node`` (again: the entry is kept)."""
        entry = self._tasks.get(task_id)
        if entry is not None and entry.node == node and entry.study_id == study_id:
            return
        entry = ProgressEntry(task_id, node, study_id)
        self._tasks[task_id] = entry
        self._studies.setdefault(study_id, {})[node] = entry

    def known(self, task_id: str) -> bool:
        return task_id in self._tasks

    def report(
        self, node: str, task_id: str, stage: TaskStage, fraction: float, now: datetime
    ) -> ProgressEntry | None:
        """Record a node's report; None if the task is not ``node``'s (or unknown here)."""
        entry = self._tasks.get(task_id)
        if entry is None or entry.node != node:
            return None
        entry.stage = stage
        entry.fraction = min(1.0, max(0.0, fraction)) if math.isfinite(fraction) else 0.0
        entry.updated_at = now
        entry.dirty = True
        return entry

    def entry(self, task_id: str) -> ProgressEntry | None:
        return self._tasks.get(task_id)

    def dirty(self) -> list[ProgressEntry]:
        return [entry for entry in self._tasks.values() if entry.dirty]

    def forget_study(self, study_id: str) -> None:
        for entry in self._studies.pop(study_id, {}).values():
            if self._tasks.get(entry.task_id) is entry:
                del self._tasks[entry.task_id]

    def overlay(self, study: Study) -> Study:
        """``study`` as stored, with the progress reported since laid over its open tasks: a
        task the node reported on is RUNNING, or AWAITING_RELEASE in that stage."""
        if study.state.is_final:
            return study
        entries = self._studies.get(study.id)
        if not entries:
            return study
        changed = False
        nodes = []
        latest = study.updated_at
        for status in study.nodes:
            entry = entries.get(status.node_name)
            if entry is None or entry.updated_at is None or status.state not in _OPEN_AT_NODE:
                nodes.append(status)
                continue
            updated = entry.updated_at
            if status.updated_at is not None and status.updated_at > updated:
                updated = status.updated_at
            nodes.append(
                replace(
                    status,
                    state=(
                        NodeTaskState.AWAITING_RELEASE
                        if entry.stage is TaskStage.AWAITING_RELEASE
                        else NodeTaskState.RUNNING
                    ),
                    stage=entry.stage,
                    fraction=entry.fraction,
                    updated_at=updated,
                )
            )
            if latest is None or updated > latest:
                latest = updated
            changed = True
        if not changed:
            return study
        state = study.state
        if state in (StudyState.SUBMITTED, StudyState.DISPATCHED):
            state = StudyState.RUNNING
        return replace(study, nodes=tuple(nodes), state=state, updated_at=latest)
