"""The agent's periodic governance work: applying operators' release decisions, the
retention sweep, and dropping idle study workspaces. All run on the agent's event loop for its
whole life (connected or not) and touch the state database on worker threads.

Why polling for decisions: `ehds node review` is another process that must not take the
agent's lock or write its audit chain; it leaves a row in ``release_decisions``, and the agent
notices it within `DECISION_POLL_S` (one indexed query on a small table).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

from ehds.analyses.engine import IbisCdm
from ehds.node.fl_sessions import FlSessions
from ehds.node.state import AppliedDecision, NodeState
from ehds.node.state_schema import Decision
from ehds.node.workspaces import drop_idle_workspaces

log = logging.getLogger(__name__)

DECISION_POLL_S: Final = 0.5
"""How often the agent looks for release decisions recorded by `ehds node review`."""

RETENTION_SWEEP_S: Final = 3600.0
"""How often ended tasks are swept when the policy sets ``retention_days``."""

WORKSPACE_SWEEP_S: Final = 600.0
FL_SWEEP_S: Final = 300.0
"""How often idle study workspaces are looked for (one indexed query when none is idle)."""


async def apply_decisions(
    state: NodeState,
    deliver: Callable[[AppliedDecision], Awaitable[None]],
    interval: float = DECISION_POLL_S,
) -> NoReturn:
    """Apply (and audit) each recorded decision, then ``deliver`` it: the agent sends the
    result (release) or RELEASE_REJECTED (reject) when it has a stream."""
    while True:
        try:
            for task_id in await asyncio.to_thread(state.pending_decisions):
                applied = await asyncio.to_thread(state.apply_decision, task_id)
                if applied is None:
                    continue
                if applied.task is None:
                    log.warning(
                        "task %s: %s by %s ignored: the result is not held",
                        task_id,
                        applied.decision.value,
                        applied.decided_by,
                    )
                    continue
                log.info(
                    "task %s: result %s by %s",
                    task_id,
                    "released" if applied.decision is Decision.RELEASE else "rejected",
                    applied.decided_by,
                )
                await deliver(applied)
        except Exception:
            log.exception("cannot apply release decisions; trying again")
        await asyncio.sleep(interval)


async def sweep_retention(
    state: NodeState, days: Callable[[], int | None], interval: float = RETENTION_SWEEP_S
) -> NoReturn:
    """Delete ended tasks older than ``days()`` (the policy in force: None keeps them), at
    once and then every ``interval`` seconds."""
    while True:
        keep = days()
        if keep is not None:
            try:
                deleted = await asyncio.to_thread(state.sweep_retention, keep)
            except Exception:
                log.exception("retention sweep failed; trying again later")
            else:
                if deleted:
                    log.info(
                        "retention: deleted %d task(s) ended more than %d day(s) ago",
                        len(deleted),
                        keep,
                    )
        await asyncio.sleep(interval)


async def sweep_workspaces(
    state: NodeState,
    engine: Callable[[], IbisCdm],
    ttl_hours: Callable[[], float],
    interval: float = WORKSPACE_SWEEP_S,
) -> NoReturn:
    """Drop the workspace tables unused for ``ttl_hours()`` (the policy in force), through
    the node's engine (``engine`` opens one), at once and then every ``interval`` seconds."""
    while True:
        hours = ttl_hours()
        try:
            dropped = await asyncio.to_thread(drop_idle_workspaces, state, engine, hours)
        except Exception:
            log.exception("workspace sweep failed; trying again later")
        else:
            if dropped:
                log.info(
                    "workspaces: dropped %d table(s) unused for %g hour(s)", len(dropped), hours
                )
        await asyncio.sleep(interval)


async def stop_idle_fl_workers(sessions: FlSessions, interval: float = FL_SWEEP_S) -> NoReturn:
    """Stop federated-learning workers that had no message for a while (a study that ended,
    or one whose coordinator went away); the next message starts one again."""
    while True:
        await asyncio.sleep(interval)
        try:
            stopped = await asyncio.to_thread(sessions.stop_idle)
        except Exception:
            log.exception("stopping idle FL workers failed; trying again later")
        else:
            if stopped:
                log.info("fl: stopped %d idle ClientApp worker(s)", stopped)
