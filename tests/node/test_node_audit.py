"""The node's audit chain in a running node: it verifies, its head travels on every Heartbeat,
TaskOutcome and ResultChunk, policy changes are in it, retention deletes and records.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from node_harness import (
    DEFAULT_ANALYSES,
    FakeCoordinator,
    LocalAnalyses,
    Pki,
    RunningNode,
    Session,
    assignment,
    audit_entries,
    coordinator_server,
    eventually,
    run_scenario,
    running_node,
    write_node_config,
    write_policy,
)

from ehds.audit import AuditEntry, anchors_for, payload_digest, verify_lines
from ehds.cli.main import main
from ehds.core.signing import key_id, load_public_key
from ehds.federation.model import (
    ErrorCode,
    Heartbeat,
    ResultReceipt,
    TaskAck,
    TaskOutcome,
)

TIMEOUT_S = 25.0


def _keys(pki: Pki) -> dict[str, object]:
    public = load_public_key(pki.tls("hospital-a").certificate)
    return {key_id(public): public}


def test_the_chain_verifies_and_its_head_travels_with_every_message(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        first = await session.next(Heartbeat)
        # The chain already holds the policy in force when the first heartbeat leaves.
        assert first.audit_head is not None
        assert first.audit_head.chain == "node hospital-a"
        session.send(assignment("t-ok", "person_count"))
        payload, _ = await session.result("t-ok")
        session.send(ResultReceipt("t-ok", payload.sha256))
        session.send(assignment("t-fail", "test.fail"))
        failed = await session.next(TaskOutcome, lambda m: m.task_id == "t-fail")
        entries = audit_entries(node.state)
        [failure] = [e for e in entries if e.action == "task.failed"]
        assert failure.detail == {"code": "INTERNAL"}
        assert failed.audit_head is not None
        assert failed.audit_head.seq >= failure.seq
        await eventually(lambda: node.state.result("t-ok") is None)  # receipted
        head = node.state.audit_head
        assert head is not None
        beat = await session.next(
            Heartbeat, lambda m: m.audit_head is not None and m.audit_head.seq == head.seq
        )
        assert beat.audit_head is not None
        assert beat.audit_head.hash == head.hash

        lines = node.state.audit_lines()
        report = verify_lines(lines, keys=_keys(pki))  # type: ignore[arg-type]
        assert report.ok, report.problem
        assert report.entries == len(lines) == head.seq
        actions = [AuditEntry.parse(line).action for line in lines]
        assert actions[0] == "policy.loaded"
        for action in (
            "assignment.received",
            "task.started",
            "result.released",
            "result.sent",
            "result.receipted",
            "task.failed",
        ):
            assert action in actions, action
        # The coordinator's refs are anchors in the node's chain: an auditor holding the
        # coordinator's chain checks them against it.
        assert [a.seq for a in anchors_for(lines, "coordinator central")] == [41, 41]
        # Nothing of the failure's text is in the chain (it could quote a CDM value).
        assert analyses.fail.SECRET.encode() not in b"".join(lines)

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_a_disclosure_refusal_is_audited_with_its_rule(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-small", "test.refuse"))
        refused = await session.next(TaskOutcome, lambda m: m.task_id == "t-small")
        assert refused.error_code is ErrorCode.DISCLOSURE_REFUSED
        [entry] = [e for e in audit_entries(node.state) if e.action == "task.refused"]
        assert (entry.subject, entry.detail) == ("task t-small", {"rule": "small_population"})
        assert refused.audit_head is not None
        assert refused.audit_head.seq >= entry.seq

    analyses = (*DEFAULT_ANALYSES, ("test.refuse", "1.0.0"))
    run_scenario(tmp_path, pki, cdm, scenario, policy={"analyses": analyses})


def test_audit_verify_command_checks_a_stopped_node(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-1", "person_count"))
        await session.result("t-1")

    run_scenario(tmp_path, pki, cdm, scenario)
    config = tmp_path / "node.yaml"
    assert main(["audit", "verify", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "audit chain node hospital-a:" in out
    assert out.rstrip().endswith("OK")


def _policy_entries(config: Path) -> list[AuditEntry]:
    with sqlite3.connect(config.parent / "state" / "node.db") as db:
        rows = db.execute(
            "SELECT entry FROM audit_log WHERE action LIKE 'policy.%' ORDER BY seq"
        ).fetchall()
    return [AuditEntry.parse(row[0].encode()) for row in rows]


def test_policy_changes_are_audited_at_start_and_on_reload(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    policy = write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main_() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            registry = LocalAnalyses().registry()
            async with running_node(config, registry=registry) as node:
                await (await coordinator.next_session()).next(Heartbeat)
                assert node.agent.reload_policy()  # unchanged: nothing recorded
                write_policy(policy, (("person_count", "1.0.0"),), version="test-policy-2")
                assert node.agent.reload_policy()
                # A pinned key that cannot be read: the policy in force stays, unrecorded.
                text = policy.read_text().replace("hdab/test-hdab.pub.pem", "hdab/gone.pem")
                policy.write_text(text.replace("test-policy-2", "test-policy-3"))
                assert not node.agent.reload_policy()
                assert node.agent.policy.version == "test-policy-2"
            # Restarted with the file as it was last in force: loaded again, not changed.
            write_policy(policy, (("person_count", "1.0.0"),), version="test-policy-2")
            async with running_node(config, registry=registry):
                await (await coordinator.next_session()).next(Heartbeat)
            # Changed while the node was down: recorded as a change at the next start.
            write_policy(policy, version="test-policy-4", min_cell_count=20)
            async with running_node(config, registry=registry):
                await (await coordinator.next_session()).next(Heartbeat)

    asyncio.run(asyncio.wait_for(main_(), TIMEOUT_S))
    entries = _policy_entries(tmp_path / "node.yaml")
    assert [(e.action, e.detail.get("version")) for e in entries] == [
        ("policy.loaded", "test-policy-1"),
        ("policy.changed", "test-policy-2"),
        ("policy.loaded", "test-policy-2"),
        ("policy.changed", "test-policy-4"),
    ]
    assert entries[1].detail["old_version"] == "test-policy-1"
    assert entries[1].detail["old_digest"] == entries[0].digest
    assert entries[3].detail["old_version"] == "test-policy-2"
    assert entries[3].digest == payload_digest(policy.read_bytes())
    assert len({e.digest for e in entries}) == 3


def test_retention_deletes_ended_tasks_and_records_it(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    policy = write_policy(tmp_path / "policy.yaml")
    coordinator = FakeCoordinator()

    async def main_() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            registry = LocalAnalyses().registry()
            async with running_node(config, registry=registry) as node:
                session = await coordinator.next_session()
                for task_id in ("t-old", "t-new"):
                    session.send(assignment(task_id, "person_count"))
                    payload, _ = await session.result(task_id)
                    session.send(ResultReceipt(task_id, payload.sha256))
                await eventually(lambda: node.state.in_flight_task_ids() == ())
            with sqlite3.connect(config.parent / "state" / "node.db") as db:
                db.execute(
                    "UPDATE tasks SET ended_at=? WHERE task_id='t-old'",
                    ((datetime.now(UTC) - timedelta(days=3)).replace(tzinfo=None).isoformat(" "),),
                )
            write_policy(policy, retention_days=2)
            async with running_node(config, registry=registry, retention_sweep_seconds=0.1) as node:
                await eventually(lambda: node.state.task("t-old") is None)
                assert node.state.task("t-new") is not None
                [deleted] = [
                    e for e in audit_entries(node.state) if e.action == "retention.deleted"
                ]
                assert deleted.subject == "task t-old"
                assert deleted.detail["retention_days"] == 2
                # The coordinator re-sends the deleted task's assignment: recognised, not re-run.
                session = await coordinator.next_session()
                session.send(assignment("t-old", "person_count"))
                await session.next(TaskAck, lambda m: m.task_id == "t-old")
                await asyncio.sleep(0.3)
                assert node.state.task("t-old") is None
                assert not [
                    m
                    for m in session.received
                    if isinstance(m, TaskOutcome) and m.error_code is ErrorCode.ASSIGNMENT_REJECTED
                ]

    asyncio.run(asyncio.wait_for(main_(), TIMEOUT_S))
