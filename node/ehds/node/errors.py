"""What a node says when a task ends without a result, and the errors the agent raises.

Why fixed texts: a `TaskOutcome` leaves the institution. An exception's text can hold values
from the CDM (a failed cast quotes the value, a constraint error quotes the row), so the only
text that ever leaves is the constant below for the outcome's code; the exception itself stays
in the node's own log.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ehds.core.errors import StateError
from ehds.federation.model import ErrorCode, TaskOutcome

OUTCOME_MESSAGES: Final[Mapping[ErrorCode, str]] = MappingProxyType(
    {
        ErrorCode.POLICY_REFUSED: "analysis not allowed by site policy",
        ErrorCode.ANALYSIS_UNKNOWN: "analysis unknown to this node",
        ErrorCode.ANALYSIS_VERSION_UNSUPPORTED: "analysis version not supported by this node",
        ErrorCode.INVALID_PARAMETERS: "parameters do not match the analysis' schema",
        ErrorCode.DISCLOSURE_REFUSED: "result withheld by disclosure control",
        ErrorCode.DEADLINE_EXCEEDED: "task deadline passed before it finished",
        ErrorCode.CANCELLED: "task cancelled",
        ErrorCode.INTERNAL: "internal error at the node; details are in the node's log",
        ErrorCode.CDM_UNAVAILABLE: "the node's CDM database is unavailable",
        ErrorCode.PERMIT_REFUSED: "data permit does not cover this task",
        ErrorCode.ASSIGNMENT_REJECTED: "the assignment was not accepted by the node",
        ErrorCode.RELEASE_REJECTED: (
            "release.rejected: the node's operator did not release the result"
        ),
        ErrorCode.UNSPECIFIED: "task ended without a result",
    }
)


def outcome(task_id: str, code: ErrorCode) -> TaskOutcome:
    """The one way a node builds a `TaskOutcome`: the code and its fixed text, nothing else."""
    return TaskOutcome(task_id=task_id, error_code=code, message=OUTCOME_MESSAGES[code])


class NodeStartError(StateError):
    """The node cannot start (no valid policy, unreadable certificate, state database in use).

    A node that cannot be sure of its policy runs nothing: it refuses to start rather than run
    with a guess."""


class NodeStateError(StateError):
    """The node's own state database is unusable (corrupt, or held by another node process)."""


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and of what caused it, with every exception message withheld.

    Why: the node's own log is read by operators and shipped to log platforms; a database
    error's message can quote a CDM value or a statement's bound parameters, so the log keeps
    where it failed (frames, exception types) and never what the message said.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(
            f"{frames}{kind.__module__}.{kind.__qualname__}: <message withheld: may quote data>"
        )
        current = current.__cause__ or current.__context__
    return "\n(caused by)\n".join(parts)
