"""Progress kept in memory (`ehds.coordinator.progress`) and the throttled Watch wake-ups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from ehds.coordinator.dispatch import StudyNotifier
from ehds.coordinator.progress import LiveProgress
from ehds.federation.model import (
    AnalysisRef,
    NodeTaskState,
    Study,
    StudyNodeStatus,
    StudySpec,
    StudyState,
    TaskStage,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _study(*states: NodeTaskState, state: StudyState = StudyState.RUNNING) -> Study:
    return Study(
        id="s1",
        spec=StudySpec(
            title="t",
            analysis=AnalysisRef("test.sleep", "1.0.0"),
            parameters=b"",
            min_nodes=1,
            deadline_seconds=60,
            target_nodes=(),
            data_permit_id="",
        ),
        state=state,
        state_reason="",
        nodes=tuple(
            StudyNodeStatus(node_name=f"n{i}", state=s, updated_at=T0) for i, s in enumerate(states)
        ),
        submitted_by="alice",
        created_at=T0,
        updated_at=T0,
    )


def test_progress_overlays_open_tasks_of_their_node_only() -> None:
    live = LiveProgress()
    live.assigned("t0", "n0", "s1")
    live.assigned("t1", "n1", "s1")
    later = T0 + timedelta(seconds=1)
    assert live.report("n1", "t0", TaskStage.COMPUTING, 0.5, later) is None  # not n1's task
    assert live.report("n0", "t0", TaskStage.COMPUTING, 7.0, later) is not None
    live.report("n1", "t1", TaskStage.COMPUTING, 0.5, later)
    shown = live.overlay(_study(NodeTaskState.RECEIVED, NodeTaskState.RELEASED))
    assert shown.nodes[0].state is NodeTaskState.RUNNING
    assert shown.nodes[0].fraction == 1.0
    assert shown.nodes[0].stage is TaskStage.COMPUTING
    assert shown.nodes[1].state is NodeTaskState.RELEASED  # final: stored state wins
    assert shown.updated_at == later
    assert [e.task_id for e in live.dirty()] == ["t0", "t1"]
    live.forget_study("s1")
    assert len(live) == 0
    assert live.overlay(_study(NodeTaskState.RECEIVED)).nodes[0].state is NodeTaskState.RECEIVED


def test_progress_wakes_watchers_at_most_once_per_interval() -> None:
    async def body() -> None:
        notifier = StudyNotifier(progress_interval=0.2)
        event = notifier.event("s1")
        notifier.notify_progress("s1")
        assert event.is_set()  # the first report wakes at once
        event = notifier.event("s1")
        notifier.notify_progress("s1")
        notifier.notify_progress("s1")
        assert not event.is_set()
        await asyncio.sleep(0.1)
        assert not event.is_set()
        await asyncio.wait_for(event.wait(), 1)  # ... the next within the interval
        event = notifier.event("s1")
        notifier.notify_progress("s1")
        assert not event.is_set()
        notifier.notify({"s1"})  # a change of state wakes at once
        assert event.is_set()
        notifier.forget("s1")

    asyncio.run(body())
