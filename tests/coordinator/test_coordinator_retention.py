"""Retention at the coordinator: the results, result document and parameters of studies that
ended more than `retention.days` ago are deleted, each deletion audited; the study and its
tasks stay, and open or recent studies are untouched."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import grpc
from coordinator_harness import Caller, FakeNode, Pki, rpc_error, run, spec

from ehds.coordinator.config import RetentionConfig
from ehds.coordinator.server import CoordinatorServer
from ehds.federation.model import StudyState


def _query(database: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return list(db.execute(sql, args))


def test_coordinator_deletes_the_results_of_studies_ended_long_ago(tmp_path: Path) -> None:
    database = tmp_path / "coordinator-state.db"

    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open(minor=3)
            old, recent = [await alice.submit(spec(targets=["node-a"])) for _ in range(2)]
            tasks = [(await node.expect("task_assignment")).task_assignment for _ in range(2)]
            for task in tasks:
                await node.complete(task)
            for study in (old, recent):
                assert (await alice.wait_final(study.id)).state is StudyState.COMPLETED
            running = await alice.submit(spec(targets=["node-a"]))
            await node.expect("task_assignment")
            # The sweep at start found nothing; "old" ended two days ago (says the database).
            assert await server.governance.purge_expired(1) == 0
            await server.database.call(
                lambda: _backdate(server, old.id, "2000-01-01 00:00:00.000000")
            )
            assert await server.governance.purge_expired(1) == 1
            assert await server.governance.purge_expired(1) == 0  # once only

            error = await rpc_error(alice.results(old.id))
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "retention" in (error.details() or "")
            kept = await alice.get(old.id)
            assert kept.state is StudyState.COMPLETED  # the study and its tasks stay
            assert kept.spec.parameters == b""
            assert [s.node_name for s in kept.nodes] == ["node-a"]
            assert (await alice.results(recent.id))["study_id"] == recent.id
            assert (await alice.get(running.id)).spec.parameters == b'{"seconds":0.0}'
        finally:
            await node.close()
            await alice.close()

        for table in ("results", "study_results"):
            rows = _query(database, f"SELECT study_id, count(*) FROM {table} GROUP BY 1")
            counts = {str(study_id): count for study_id, count in rows}
            assert old.id not in counts
            assert counts[recent.id] == 1
        ((purged_at,),) = _query(database, "SELECT purged_at FROM studies WHERE id = ?", old.id)
        assert purged_at is not None
        entries = [
            json.loads(str(row[0]))
            for row in _query(
                database, "SELECT entry FROM audit_log WHERE action = 'retention.deleted'"
            )
        ]
        assert [(e["subject"], e["actor"]) for e in entries] == [(f"study {old.id}", "coordinator")]
        assert entries[0]["detail"]["results"] == 1
        assert entries[0]["detail"]["result_document"] is True

    run(tmp_path, body, retention=RetentionConfig(days=1, check_interval_seconds=3600))


def test_coordinator_sweeps_periodically_when_retention_is_set(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        alice = Caller(server.address, pki.tls("alice"))
        try:
            await node.open(minor=3)
            study = await alice.submit(spec(targets=["node-a"]))
            await node.complete((await node.expect("task_assignment")).task_assignment)
            await alice.wait_final(study.id)
            for _ in range(100):  # days: 0 deletes what has ended, at the next sweep
                if (await alice.get(study.id)).spec.parameters == b"":
                    break
                await asyncio.sleep(0.05)
            error = await rpc_error(alice.results(study.id))
            assert "retention" in (error.details() or "")
        finally:
            await node.close()
            await alice.close()

    run(tmp_path, body, retention=RetentionConfig(days=0, check_interval_seconds=0.1))


def _backdate(server: CoordinatorServer, study_id: str, ended_at: str) -> None:
    with server.database.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE studies SET ended_at = ? WHERE id = ?", (ended_at, study_id)
        )
