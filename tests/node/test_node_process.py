"""`ehds node serve` as a real process against the fake coordinator: SIGKILL in the middle of a
task, restart, and the task still completes exactly once from the coordinator's point of view."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path

from node_harness import (
    FakeCoordinator,
    Pki,
    assignment,
    coordinator_server,
    write_node_config,
    write_policy,
)

from ehds.federation.model import (
    Heartbeat,
    ResultReceipt,
    TaskAck,
    TaskOutcome,
    TaskProgress,
    TaskStage,
)

TIMEOUT_S = 40.0
START_S = 15.0


async def _start_node(config: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from ehds.cli.main import run; run()",
            "-v",
            "node",
            "serve",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), START_S)
    assert line.decode().startswith("node hospital-a ready"), line
    return process


async def _finish(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.kill()
    code = await asyncio.wait_for(process.wait(), START_S)
    assert process.stdout is not None
    await process.stdout.read()
    return code


def test_sigkill_mid_task_and_restart_completes_the_task(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()
    log = tmp_path / "node.log"

    async def main() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            node = await _start_node(config, log)
            try:
                session = await coordinator.next_session(timeout=START_S)
                session.send(assignment("t-kill", "test.sleep", b'{"seconds":1.5}'))
                await session.next(TaskAck)
                await session.next(TaskProgress, lambda m: m.stage is TaskStage.COMPUTING)
                node.send_signal(signal.SIGKILL)
            finally:
                assert await _finish(node) == -signal.SIGKILL

            node = await _start_node(config, log)
            try:
                session = await coordinator.next_session(timeout=START_S)
                beat = await session.next(Heartbeat)
                assert beat.in_flight_task_ids == ("t-kill",)  # it survived the kill
                payload, _ = await session.result("t-kill", timeout=10)
                assert json.loads(payload.data) == {"slept": 1.5}
                session.send(ResultReceipt("t-kill", payload.sha256))
                await session.next(Heartbeat, lambda m: m.in_flight_task_ids == ())
                node.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(node.wait(), START_S) == 0
            finally:
                await _finish(node)
            outcomes = [
                m
                for s in coordinator.all_sessions
                for m in s.received
                if isinstance(m, TaskOutcome)
            ]
            assert outcomes == []

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    with sqlite3.connect(tmp_path / "state" / "node.db") as db:
        task = db.execute("SELECT status, attempts FROM tasks WHERE task_id='t-kill'").fetchone()
        receipted = db.execute(
            "SELECT receipted_at IS NOT NULL, payload IS NULL FROM results WHERE task_id='t-kill'"
        ).fetchone()
    assert task == ("done", 2)
    assert receipted == (1, 1)
    assert "Traceback" not in log.read_text()
