"""The human release gate, operator side: `ehds node review list|show|release|reject`.

A result whose analysis the policy releases ``manual``ly is kept at the node (status ``held``)
until a person looks at it. This module lets that person see exactly what would leave (the
stored bytes, their SHA-256 and the rows as a table) and record a decision.

Why decisions go through a table rather than into the task directly: the running agent is the
only writer of the node's audit chain and of task states. The review command writes one row in
``release_decisions`` in a short transaction of its own, beside the running agent and without
its process lock; the agent picks it up within a second, audits it as this operator's act and
sends the result or RELEASE_REJECTED. The first decision recorded for a task wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ehds.analyses.results import SummarisedResult, is_summarised, render
from ehds.core.errors import InputError, StateError
from ehds.federation.model import AnalysisRef
from ehds.node.state_db import require_current_schema, sqlite_engine
from ehds.node.state_schema import Decision, ReleaseDecisionRow, ResultRow, TaskRow, TaskStatus

OPERATOR_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


class ReviewError(InputError):
    """A review request that cannot be honoured (unknown task, not held, already decided)."""


class ReviewStateError(StateError):
    """The node's state database cannot be used for review (missing, unreadable, old)."""


def operator_actor(name: str) -> str:
    """The audit actor of a decision: ``operator NAME``; `ReviewError` for an unusable name."""
    if not OPERATOR_NAME.fullmatch(name):
        raise ReviewError(
            "--as: an operator name is 1 to 100 characters from A-Z, a-z, 0-9 and . _ @ -"
        )
    return f"operator {name}"


@dataclass(frozen=True)
class HeldResult:
    task_id: str
    study_id: str
    analysis: AnalysisRef
    requested_by: str
    permit: str
    computed_at: datetime | None
    size: int
    sha256: str
    content_type: str
    # A decision recorded and not yet applied by the agent: "release by operator x".
    pending: str | None


def describe(payload: bytes) -> str:
    """The result as a person reads it: a summarised result's rows as its table; another
    document's lists of records as tables and its other fields as lines; anything else as
    indented JSON. Either way, every value the stored bytes hold."""
    try:
        document: Any = json.loads(payload)
    except ValueError:
        return "(not JSON: the raw bytes would be sent; see --raw)\n"
    if is_summarised(document):
        try:
            parsed = SummarisedResult.model_validate(document)
        except ValueError:
            pass
        else:
            header = f"min_cell_count {parsed.min_cell_count}, {len(parsed.rows)} row(s)\n\n"
            return header + render(parsed.rows)
    if isinstance(document, dict) and all(_printable(v) for v in document.values()):
        parts = []
        for key in sorted(document):
            value = document[key]
            if isinstance(value, list) and value:
                parts.append(f"{key} ({len(value)} row(s)):\n{_table(value)}")
            else:
                parts.append(f"{key}: {json.dumps(value)}\n")
        return "".join(parts)
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values())


def _printable(value: Any) -> bool:
    """A scalar, or a list of flat records (a table)."""
    if isinstance(value, list):
        return all(_is_record(item) for item in value)
    return not isinstance(value, dict)


def _table(records: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for record in records:
        columns += [key for key in record if key not in columns]
    cells = [[json.dumps(r[c]) if c in r else "" for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [columns, ["-" * w for w in widths], *cells]
    return (
        "\n".join(
            "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )
        + "\n"
    )


class ReviewStore:
    """The node's state database as the review command uses it (no lock, no migration)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ReviewStateError(
                f"state database {path} does not exist: has this node run (`ehds node serve`)?"
            )
        self.path = path
        self._engine = sqlite_engine(path)
        try:
            require_current_schema(self._engine, path)
        except StateError as exc:
            self._engine.dispose()
            raise ReviewStateError(str(exc)) from None
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self) -> Session:
        return self._sessions()

    def held(self) -> list[HeldResult]:
        """Every held result, oldest first."""
        with self._session() as session:
            rows = session.execute(
                sa.select(TaskRow, ResultRow)
                .join(ResultRow, ResultRow.task_id == TaskRow.task_id)
                .where(TaskRow.status == TaskStatus.HELD.value)
                .order_by(TaskRow.ended_at, TaskRow.task_id)
            ).all()
            pending = self._pending(session)
            return [_held(task, result, pending.get(task.task_id)) for task, result in rows]

    def show(self, task_id: str) -> tuple[HeldResult, bytes]:
        """A held result and its exact bytes; `ReviewError` if the task holds no result."""
        with self._session() as session:
            task = session.get(TaskRow, task_id)
            result = session.get(ResultRow, task_id)
            if task is None or result is None or task.status != TaskStatus.HELD.value:
                raise ReviewError(_not_held(task_id, task))
            assert result.payload is not None
            pending = self._pending(session).get(task_id)
            return _held(task, result, pending), result.payload

    def decide(
        self, task_id: str, decision: Decision, actor: str, now: datetime | None = None
    ) -> None:
        """Record ``decision`` on a held result (the agent applies it); `ReviewError` if the
        task is not held or a decision is already recorded."""
        try:
            self._record(task_id, decision, actor, now or datetime.now(UTC))
        except sa.exc.IntegrityError:  # another operator, at the same moment
            raise ReviewError(
                f"task {task_id}: a decision was recorded meanwhile; the first decision stands"
            ) from None

    def _record(self, task_id: str, decision: Decision, actor: str, now: datetime) -> None:
        with self._session() as session, session.begin():
            task = session.get(TaskRow, task_id)
            if task is None or task.status != TaskStatus.HELD.value:
                raise ReviewError(_not_held(task_id, task))
            earlier = session.get(ReleaseDecisionRow, task_id)
            if earlier is not None:
                raise ReviewError(
                    f"task {task_id}: {earlier.decided_by} already recorded "
                    f"'{earlier.decision}'; the first decision stands"
                )
            session.add(
                ReleaseDecisionRow(
                    task_id=task_id,
                    decision=decision.value,
                    decided_by=actor,
                    decided_at=now,
                    applied_at=None,
                )
            )

    @staticmethod
    def _pending(session: Session) -> dict[str, str]:
        rows = session.scalars(
            sa.select(ReleaseDecisionRow).where(ReleaseDecisionRow.applied_at.is_(None))
        )
        return {row.task_id: f"{row.decision} by {row.decided_by}" for row in rows}


def _not_held(task_id: str, task: TaskRow | None) -> str:
    if task is None:
        return f"task {task_id}: no such task at this node"
    return f"task {task_id} holds no result awaiting release (status {task.status})"


def _held(task: TaskRow, result: ResultRow, pending: str | None) -> HeldResult:
    return HeldResult(
        task_id=task.task_id,
        study_id=task.study_id,
        analysis=AnalysisRef(task.analysis_name, task.analysis_version),
        requested_by=task.requested_by,
        permit=task.permit,
        computed_at=task.ended_at,
        size=result.size,
        sha256=result.sha256.hex(),
        content_type=result.content_type,
        pending=pending,
    )
