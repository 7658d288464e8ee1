"""The human release gate: a result whose analysis the policy releases ``manual``ly stays at
the node until an operator releases it with `ehds node review release` (or rejects it).

The review commands run as the operator would run them, through `ehds.cli.main.main`, beside
the running agent (they write the decision without the agent's lock); the fake coordinator
records everything the node sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import io
import json
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from node_harness import (
    FakeCoordinator,
    LocalAnalyses,
    Pki,
    RunningNode,
    Session,
    assignment,
    audit_entries,
    eventually,
    run_scenario,
    write_node_config,
    write_policy,
)

from ehds.cli.main import main
from ehds.federation.model import (
    ErrorCode,
    Heartbeat,
    ResultChunk,
    TaskAck,
    TaskOutcome,
    TaskProgress,
    TaskStage,
)
from ehds.node.errors import OUTCOME_MESSAGES

MANUAL = {"manual": ("person_count", "test.gate")}
PARAMETERS = b'{"age_band_edges":[0,18,45,65]}'


async def review(config: Path, *args: str) -> tuple[int, str, str]:
    """``ehds node review ARGS --config node.yaml`` in a thread: (exit code, stdout, stderr)."""

    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["node", "review", *args, "--config", str(config)])
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


def _config(node: RunningNode) -> Path:
    return node.config.policy.parent / "node.yaml"


def _chunks(session: Session, task_id: str) -> list[ResultChunk]:
    return [m for m in session.received if isinstance(m, ResultChunk) and m.task_id == task_id]


async def _held(session: Session, task_id: str) -> None:
    progress = await session.next(
        TaskProgress, lambda m: m.task_id == task_id and m.stage is TaskStage.AWAITING_RELEASE
    )
    assert progress.fraction == 1.0


def test_a_held_result_leaves_only_after_an_operator_releases_it(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        config = _config(node)
        session.send(assignment("t-held", "person_count", PARAMETERS))
        await session.next(TaskAck, lambda m: m.task_id == "t-held")
        await _held(session, "t-held")
        # Held: in flight for the coordinator (it must not time the node out for silence),
        # and nothing of the result has left.
        await session.next(Heartbeat, lambda m: "t-held" in m.in_flight_task_ids)
        await asyncio.sleep(0.6)  # longer than the decision poll
        assert _chunks(session, "t-held") == []

        code, out, _ = await review(config, "list")
        assert code == 0
        assert "t-held" in out
        assert "person_count 1.0.0" in out
        assert "for alice" in out
        code, shown, _ = await review(config, "show", "t-held")
        assert code == 0
        stored = node.state.held()[0]
        assert stored.task_id == "t-held"
        sha = shown.split("sha256 ", 1)[1].split()[0]
        assert "cells (" in shown
        assert "age_band" in shown
        code, _, _ = await review(config, "list", "--json")
        assert code == 0
        assert _chunks(session, "t-held") == []  # looking releases nothing

        code, out, _ = await review(config, "release", "t-held", "--as", "dpo")
        assert code == 0, out
        assert "operator dpo" in out
        payload, _ = await session.result("t-held")
        assert payload.sha256.hex() == sha == hashlib.sha256(payload.data).hexdigest()
        # What `show` printed is what left: every row of the document.
        cells = json.loads(payload.data)["cells"]
        assert f"cells ({len(cells)} row(s))" in shown
        assert all(json.dumps(cell["age_band"]) in shown for cell in cells)

        entries = audit_entries(node.state)
        actions = [e.action for e in entries]
        held = actions.index("result.held")
        released = actions.index("result.released")
        sent = actions.index("result.sent")
        assert held < released < sent
        assert entries[released].actor == "operator dpo"
        assert entries[held].digest == entries[released].digest == entries[sent].digest
        # The chunks carry the head that records their sending.
        [chunk, *_] = _chunks(session, "t-held")
        assert chunk.audit_head is not None
        assert (chunk.audit_head.seq, chunk.audit_head.hash) == (
            entries[sent].seq,
            entries[sent].hash,
        )
        # Released once: a second decision is refused, the node is not asked again.
        code, _, err = await review(config, "reject", "t-held", "--as", "dpo")
        assert code == 2
        assert "holds no result awaiting release" in err

    run_scenario(tmp_path, pki, cdm, scenario, policy=MANUAL)


def test_a_rejected_result_never_leaves(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        config = _config(node)
        session.send(assignment("t-no", "person_count", PARAMETERS))
        await _held(session, "t-no")
        code, _, _ = await review(config, "reject", "t-no", "--as", "dpo")
        assert code == 0
        rejected = await session.next(TaskOutcome, lambda m: m.task_id == "t-no")
        assert rejected.error_code is ErrorCode.RELEASE_REJECTED
        assert rejected.message == OUTCOME_MESSAGES[ErrorCode.RELEASE_REJECTED]
        assert rejected.message.startswith("release.rejected: ")
        await session.next(Heartbeat, lambda m: "t-no" not in m.in_flight_task_ids)
        assert _chunks(session, "t-no") == []
        assert node.state.held() == []
        [entry] = [e for e in audit_entries(node.state) if e.action == "result.rejected"]
        assert entry.actor == "operator dpo"
        code, out, _ = await review(config, "list")
        assert (code, out.strip()) == (0, "no results held for release")

    run_scenario(tmp_path, pki, cdm, scenario, policy=MANUAL)


def test_a_held_result_is_announced_again_after_a_reconnect_and_kept_past_its_deadline(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    analyses = LocalAnalyses()
    analyses.gate.gate.set()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        config = _config(node)
        session.send(assignment("t-gate", "test.gate", deadline=timedelta(seconds=1.5)))
        await _held(session, "t-gate")
        session.abort(grpc.StatusCode.UNAVAILABLE, "coordinator restarting")
        second = await coordinator.next_session()
        beat = await second.next(Heartbeat)
        assert beat.in_flight_task_ids == ("t-gate",)
        await _held(second, "t-gate")
        await asyncio.sleep(1.6)  # the deadline passes: the result stays held
        assert [t.task_id for t in node.state.held()] == ["t-gate"]
        code, _, _ = await review(config, "release", "t-gate")  # as the OS user
        assert code == 0
        payload, _ = await second.result("t-gate")
        assert payload.data == b'{"opened":true}'
        assert _chunks(session, "t-gate") == []
        [entry] = [e for e in audit_entries(node.state) if e.action == "result.released"]
        assert entry.actor == f"operator {getpass.getuser()}"

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses, policy=MANUAL)


def test_release_auto_sends_at_once_and_audits_the_policy_as_releaser(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-auto", "person_count", PARAMETERS))
        await session.result("t-auto")
        assert not [
            m
            for m in session.received
            if isinstance(m, TaskProgress) and m.stage is TaskStage.AWAITING_RELEASE
        ]
        [entry] = [e for e in audit_entries(node.state) if e.action == "result.released"]
        assert entry.actor == "policy auto"

    run_scenario(tmp_path, pki, cdm, scenario)


def test_review_refuses_what_it_cannot_do(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        config = _config(node)
        code, _, err = await review(config, "release", "t-missing", "--as", "dpo")
        assert code == 2
        assert "no such task" in err
        code, _, err = await review(config, "show", "t-missing")
        assert code == 2
        assert "no such task" in err
        code, _, err = await review(config, "release", "t-x", "--as", "bad name")
        assert code == 2
        assert "--as" in err
        session.send(assignment("t-1", "person_count", PARAMETERS))
        await _held(session, "t-1")
        # Two operators at once: the first decision stands (whether or not the node has
        # applied it yet).
        first = await review(config, "release", "t-1", "--as", "ann")
        second = await review(config, "reject", "t-1", "--as", "bob")
        assert first[0] == 0
        assert second[0] == 2
        assert "first decision stands" in second[2] or "holds no result" in second[2]
        await session.result("t-1")
        await eventually(lambda: node.state.pending_decisions() == [])

    run_scenario(tmp_path, pki, cdm, scenario, policy=MANUAL)


def test_review_needs_an_existing_migrated_state(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path / "policy.yaml")
    config = write_node_config(tmp_path, pki=pki, cdm=cdm, address="127.0.0.1:1")
    assert main(["node", "review", "list", "--config", str(config)]) == 2
    assert "does not exist" in capsys.readouterr().err
