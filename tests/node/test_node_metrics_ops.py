"""The node's audit chain length on its metrics port: the chain's length in the state
database (not the entries appended since the start), right after a restart too, and wired by
the agent itself."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec
from node_harness import (
    FakeCoordinator,
    Pki,
    RunningNode,
    Session,
    assignment,
    run_scenario,
)

from ehds.audit import AuditLog
from ehds.core.signing import Signer
from ehds.federation.model import ResultReceipt
from ehds.node.audit_trail import AuditNote
from ehds.node.metrics import NodeMetrics
from ehds.node.state import NodeState
from ehds.node.state_schema import audit_log

CHAIN: Final = "ehds_node_audit_chain_length"


def open_state(path: Path, signer: Signer) -> NodeState:
    state = NodeState.open(path)
    state.attach_audit(AuditLog(audit_log, signer, "node hospital-x"))
    return state


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM audit_log").fetchone()
    return int(count)


def test_the_chain_length_follows_appends_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "node-state.db"
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    metrics = NodeMetrics()
    assert metrics.registry.get_sample_value(CHAIN) == 0  # no chain followed yet
    with open_state(path, signer) as state:
        metrics.follow_audit_chain(lambda: state.audit_head)
        assert metrics.registry.get_sample_value(CHAIN) == 0  # an empty chain
        state.record_policy("1", "sha256:" + "0" * 64)
        for n in range(4):
            state.audit(AuditNote("workspace.created", f"workspace w{n}"))
        assert metrics.registry.get_sample_value(CHAIN) == 5 == rows(path)

    # A new process: a new state object on the same file, new metrics, nothing appended yet.
    with open_state(path, signer) as state:
        restarted = NodeMetrics()
        restarted.follow_audit_chain(lambda: state.audit_head)
        assert restarted.registry.get_sample_value(CHAIN) == 5
        state.audit(AuditNote("workspace.dropped", "workspace w0"))
        assert restarted.registry.get_sample_value(CHAIN) == 6 == rows(path)


def test_the_agent_reports_its_own_chain(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-ok", "person_count"))
        payload, _ = await session.result("t-ok")
        session.send(ResultReceipt("t-ok", payload.sha256))
        head = node.state.audit_head
        assert head is not None
        assert head.seq > 3  # the policy, the assignment, its start and its result at least
        length = node.metrics.registry.get_sample_value(CHAIN)
        assert length is not None
        assert length >= head.seq  # entries may follow (the receipt) but never go missing
        assert length <= len(node.state.audit_lines())

    run_scenario(tmp_path, pki, cdm, scenario)
