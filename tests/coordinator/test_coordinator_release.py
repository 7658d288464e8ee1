"""The human release gate as the coordinator sees it: a task held at its node for release is
AWAITING_RELEASE in every snapshot (and after a restart) while no result exists here; the
node's operator releases it (the result arrives) or rejects it (REFUSED, RELEASE_REJECTED);
a cancel or a deadline still reaches a held task."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from coordinator_harness import (
    Caller,
    FakeNode,
    Pki,
    make_config,
    make_pki,
    node_status,
    register_default_permits,
    run,
    spec,
)

from ehds.coordinator.server import CoordinatorServer
from ehds.federation.model import ErrorCode, NodeTaskState, StudyState, TaskStage


def _rows(database: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return list(db.execute(query, args))


def test_coordinator_shows_a_held_result_as_awaiting_release_until_released(
    tmp_path: Path,
) -> None:
    database = tmp_path / "coordinator-state.db"

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open(minor=3)
            study = await alice.submit(spec(targets=["node-a"]))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            await node.progress(task.task_id, 1.0, TaskStage.AWAITING_RELEASE)
            held = await alice.wait_node_state(study.id, "node-a", NodeTaskState.AWAITING_RELEASE)
            assert held.state is StudyState.RUNNING
            assert node_status(held, "node-a").stage is TaskStage.AWAITING_RELEASE
            # Written at once (not only in memory), and no result is held here meanwhile.
            await asyncio.sleep(0.1)
            await alice.get(study.id)  # reads after the queued writes
            assert _rows(database, "SELECT state FROM tasks WHERE task_id = ?", task.task_id) == [
                ("AWAITING_RELEASE",)
            ]
            assert _rows(database, "SELECT count(*) FROM results") == [(0,)]
            # The node's operator releases it: the result arrives.
            await node.progress(task.task_id, 1.0, TaskStage.UPLOADING)
            await node.complete(task)
            done = await alice.wait_final(study.id)
            assert done.state is StudyState.COMPLETED
            assert node_status(done, "node-a").state is NodeTaskState.RELEASED
            actions = [
                row[0]
                for row in _rows(
                    database,
                    "SELECT action FROM audit_log WHERE subject = ? ORDER BY seq",
                    f"task {task.task_id}",
                )
            ]
            assert actions == [
                "task.dispatched",
                "task.received",
                "task.awaiting_release",
                "task.running",
                "task.released",
            ]
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_refuses_a_task_whose_release_was_rejected_and_cancels_held_ones(
    tmp_path: Path,
) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open(minor=3)
            rejected = await alice.submit(spec(targets=["node-a"]))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            await node.progress(task.task_id, 1.0, TaskStage.AWAITING_RELEASE)
            await alice.wait_node_state(rejected.id, "node-a", NodeTaskState.AWAITING_RELEASE)
            await node.outcome(
                task.task_id, ErrorCode.RELEASE_REJECTED, "release.rejected: by the operator"
            )
            final = await alice.wait_final(rejected.id)
            status = node_status(final, "node-a")
            assert (status.state, status.error_code) == (
                NodeTaskState.REFUSED,
                ErrorCode.RELEASE_REJECTED,
            )
            assert final.state is StudyState.FAILED

            cancelled = await alice.submit(spec(targets=["node-a"]))
            task = (await node.expect("task_assignment")).task_assignment
            await node.ack(task.task_id)
            await node.progress(task.task_id, 1.0, TaskStage.AWAITING_RELEASE)
            await alice.wait_node_state(cancelled.id, "node-a", NodeTaskState.AWAITING_RELEASE)
            await alice.cancel(cancelled.id, "changed my mind")
            cancel = (await node.expect("cancel_task")).cancel_task
            assert cancel.task_id == task.task_id
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body)


def test_coordinator_keeps_awaiting_release_across_a_restart(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, pki)
    study_id = ""

    async def first() -> None:
        nonlocal study_id
        async with CoordinatorServer(config) as server:
            await register_default_permits(server, pki)
            node = FakeNode(server.address, pki.tls("node-a"), "node-a")
            alice = Caller(server.address, pki.tls("alice"))
            try:
                await node.open(minor=3)
                study_id = (await alice.submit(spec(targets=["node-a"]))).id
                task = (await node.expect("task_assignment")).task_assignment
                await node.ack(task.task_id)
                await node.progress(task.task_id, 1.0, TaskStage.AWAITING_RELEASE)
                await alice.wait_node_state(study_id, "node-a", NodeTaskState.AWAITING_RELEASE)
            finally:
                await node.close()
                await alice.close()

    async def second() -> None:
        async with CoordinatorServer(config) as server:
            alice = Caller(server.address, pki.tls("alice"))
            try:
                status = node_status(await alice.get(study_id), "node-a")
                assert status.state is NodeTaskState.AWAITING_RELEASE
            finally:
                await alice.close()

    asyncio.run(first())
    asyncio.run(second())
