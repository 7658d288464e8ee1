"""Study workspaces: named tables in the engine's results place that an analysis of several
rounds keeps between them (a GLM's design matrix), and their removal once idle.

Why the node names them, not the analysis: the node must know every row-level table it holds
to drop it. `StudyWorkspace.table_name` derives the name from the study (``ws_<first 16 hex of
sha256(study id)>_<purpose>``: the same in every round and every restart, never an id from
the wire in a table name) and records it with the time it was last used (``workspaces``).
The node's upkeep (`drop_idle_workspaces`) drops the tables unused for the site policy's
``workspace_ttl_hours`` through the node's engine, then forgets them; each drop is audited.

Order of a drop: the table first, then its row, and the row only if nobody used the workspace
meanwhile. A failed drop keeps the row (retried at the next sweep), so a table is never
forgotten while it still exists; a round that starts after its table was dropped finds it
missing and builds it again (what an analysis does with a missing workspace table anyway).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import sqlalchemy as sa

from ehds.analyses.engine import IbisCdm
from ehds.node.audit_trail import workspace_created, workspace_dropped
from ehds.node.state import NodeState
from ehds.node.state_schema import WorkspaceRow

__all__ = [
    "PURPOSE_PATTERN",
    "IdleWorkspace",
    "StudyWorkspace",
    "drop_idle_workspaces",
    "workspace_table_name",
]

log = logging.getLogger(__name__)

PREFIX: Final = "ws_"
STUDY_HEX: Final = 16
MAX_NAME: Final = 63
"""PostgreSQL's identifier limit, the shortest of the three engines."""

PURPOSE_PATTERN: Final = re.compile(r"[a-z0-9_]+")
MAX_PURPOSE: Final = MAX_NAME - len(PREFIX) - STUDY_HEX - 1


def _now() -> datetime:
    return datetime.now(UTC)


def workspace_table_name(study_id: str, purpose: str) -> str:
    """``ws_<16 hex of sha256(study_id)>_<purpose>``; `ValueError` for a bad purpose."""
    if not PURPOSE_PATTERN.fullmatch(purpose) or len(purpose) > MAX_PURPOSE:
        raise ValueError(
            f"workspace purpose must be 1 to {MAX_PURPOSE} characters from a-z, 0-9 and _"
        )
    study = hashlib.sha256(study_id.encode("utf-8")).hexdigest()[:STUDY_HEX]
    return f"{PREFIX}{study}_{purpose}"


class StudyWorkspace:
    """The `ehds.analyses.base.Workspace` of one study at this node."""

    def __init__(
        self, state: NodeState, study_id: str, *, clock: Callable[[], datetime] = _now
    ) -> None:
        self._state = state
        self._study_id = study_id
        self._clock = clock

    def table_name(self, purpose: str) -> str:
        """The name, recorded (audited ``workspace.created`` the first time) and marked used
        now; the analysis creates the table itself when it does not exist."""
        if not self._study_id:
            raise ValueError("a workspace needs the task's study id")
        name = workspace_table_name(self._study_id, purpose)
        now = self._clock()
        with self._state.audited() as recorder:
            session = recorder.session
            row = session.get(WorkspaceRow, name)
            if row is not None:
                row.last_used_at = now
                return name
            session.add(
                WorkspaceRow(
                    name=name,
                    study_id=self._study_id,
                    purpose=purpose,
                    created_at=now,
                    last_used_at=now,
                )
            )
            recorder.append(workspace_created(name, study=self._study_id, purpose=purpose))
        return name


@dataclass(frozen=True)
class IdleWorkspace:
    name: str
    study_id: str
    last_used_at: datetime


def idle_workspaces(state: NodeState, cutoff: datetime) -> list[IdleWorkspace]:
    """Workspaces last used before ``cutoff``, oldest first."""
    with state.audited() as recorder:  # only a read: no entry is appended
        rows = recorder.session.scalars(
            sa.select(WorkspaceRow)
            .where(WorkspaceRow.last_used_at < cutoff)
            .order_by(WorkspaceRow.last_used_at, WorkspaceRow.name)
        ).all()
        return [IdleWorkspace(row.name, row.study_id, row.last_used_at) for row in rows]


def _forget(state: NodeState, idle: IdleWorkspace, cutoff: datetime, ttl_hours: float) -> bool:
    """Delete the row if it is still idle (audited); False if it was used meanwhile."""
    with state.audited() as recorder:
        session = recorder.session
        deleted = session.execute(
            sa.delete(WorkspaceRow).where(
                WorkspaceRow.name == idle.name, WorkspaceRow.last_used_at < cutoff
            )
        )
        if deleted.rowcount == 0:  # type: ignore[attr-defined]
            return False
        recorder.append(
            workspace_dropped(
                idle.name,
                study=idle.study_id,
                last_used_at=idle.last_used_at,
                ttl_hours=ttl_hours,
            )
        )
        return True


def drop_idle_workspaces(
    state: NodeState,
    engine: Callable[[], IbisCdm],
    ttl_hours: float,
    *,
    now: datetime | None = None,
) -> list[str]:
    """Drop every workspace table unused for ``ttl_hours`` and forget it; returns the names
    dropped. ``engine`` opens the node's engine (called only when something is idle; the
    engine is closed here). A table that cannot be dropped stays recorded (logged)."""
    cutoff = (now or _now()) - timedelta(hours=ttl_hours)
    idle = idle_workspaces(state, cutoff)
    if not idle:
        return []
    dropped: list[str] = []
    opened = engine()
    try:
        for workspace in idle:
            try:
                opened.drop_results_table(workspace.name)
            except Exception as exc:
                log.warning(
                    "workspace %s: cannot drop its table (%s); trying again at the next sweep",
                    workspace.name,
                    type(exc).__name__,
                )
                continue
            if _forget(state, workspace, cutoff, ttl_hours):
                dropped.append(workspace.name)
    finally:
        opened.close()
    return dropped
