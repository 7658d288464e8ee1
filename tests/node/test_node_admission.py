"""What the node refuses before anything runs: assignments that are not the coordinator's,
unaltered and current; tasks whose permit, researcher or analysis the site does not admit.

Every refusal is a typed outcome whose message names the rule (never a value), an entry in the
node's audit chain, and a task that never runs. Real mutual TLS against the fake coordinator,
which signs assignments with its certificate's key as a real coordinator does.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from node_harness import (
    OTHER_HDAB,
    TEST_HDAB,
    FakeCoordinator,
    LocalAnalyses,
    Pki,
    RunningNode,
    Session,
    assignment,
    audit_entries,
    run_scenario,
)

from ehds.federation.model import ErrorCode, TaskAck, TaskOutcome
from ehds.permits import PermitRefusal
from ehds.pki import Role, init_authority, issue_certificate


async def _outcome(session: Session, task_id: str) -> TaskOutcome:
    return await session.next(TaskOutcome, lambda m: m.task_id == task_id)


async def _refused(session: Session, task_id: str) -> TaskOutcome:
    await session.next(TaskAck, lambda m: m.task_id == task_id)
    return await session.next(TaskOutcome, lambda m: m.task_id == task_id)


def test_a_tampered_assignment_is_rejected_audited_and_never_stored(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        signed = coordinator.sign(assignment("t-tampered", "test.gate"))
        # Altered after signing: a bigger cell threshold would be harmless, other parameters not.
        session.send(dataclasses.replace(signed, parameters=b'{"tampered":true}'))
        rejected = await _refused(session, "t-tampered")
        assert rejected.error_code is ErrorCode.ASSIGNMENT_REJECTED
        assert rejected.message.startswith("assignment.bad_signature: ")
        assert "tampered" not in rejected.message
        assert node.state.task("t-tampered") is None
        [entry] = [e for e in audit_entries(node.state) if e.action == "assignment.rejected"]
        assert entry.detail["code"] == "assignment.bad_signature"
        assert entry.actor == "unverified coordinator"
        assert entry.anchor is None  # nothing it claims is trusted
        assert rejected.audit_head is not None
        assert (rejected.audit_head.seq, rejected.audit_head.hash) == (entry.seq, entry.hash)
        # A forged signature (not base64, or someone else's) is the same refusal.
        session.send(dataclasses.replace(signed, task_id="t-forged", signature="not-a-signature"))
        forged = await _refused(session, "t-forged")
        assert forged.message.startswith("assignment.bad_signature: ")
        assert analyses.gate.runs == 0

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_a_replayed_assignment_is_rejected_and_the_task_runs_once(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        first = assignment("t-1", "test.gate", nonce="nonce-a")
        session.send(first)
        await session.next(TaskAck, lambda m: m.task_id == "t-1")
        # Validly signed, same task id, another nonce: a replay (or a coordinator that signed
        # two different assignments for one task); either way the node acts on one only.
        session.send(dataclasses.replace(first, nonce="nonce-b", signature=""))
        replayed = await _outcome(session, "t-1")
        assert replayed.error_code is ErrorCode.ASSIGNMENT_REJECTED
        assert replayed.message.startswith("assignment.replayed: ")
        # The same assignment again (same nonce) is a re-delivery: acked, never run twice.
        session.send(first)
        await session.next(TaskAck, lambda m: m.task_id == "t-1")
        analyses.gate.gate.set()
        result, _ = await session.result("t-1")
        assert result.data == b'{"opened":true}'
        assert analyses.gate.runs == 1
        actions = [e.action for e in audit_entries(node.state)]
        assert actions.count("assignment.received") == 1
        assert actions.count("assignment.rejected") == 1
        assert actions.count("assignment.repeated") == 1
        assert actions.count("task.started") == 1

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_an_expired_assignment_is_rejected(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        past = datetime.now(UTC) - timedelta(seconds=5)
        session.send(assignment("t-expired", "person_count", deadline=past, expires_at=past))
        rejected = await _refused(session, "t-expired")
        assert rejected.error_code is ErrorCode.ASSIGNMENT_REJECTED
        assert rejected.message.startswith("assignment.expired: ")
        assert node.state.task("t-expired") is None
        [entry] = [e for e in audit_entries(node.state) if e.action == "assignment.rejected"]
        assert entry.detail["code"] == "assignment.expired"
        assert entry.actor == "coordinator central"  # the signature verified

    run_scenario(tmp_path, pki, cdm, scenario)


def _foreign_coordinator_certificate(root: Path) -> bytes:
    """A coordinator certificate with the right name from another CA."""
    init_authority(root, "elsewhere")
    issue_certificate(root, Role.COORDINATOR, "central")
    return (root / "issued" / "central.pem").read_bytes()


@pytest.mark.parametrize("certificate", ["node", "foreign"])
def test_assignments_from_an_unknown_signer_are_rejected(
    tmp_path: Path, pki: Pki, cdm: Path, certificate: str
) -> None:
    pem = (
        pki.tls("hospital-b").certificate.read_bytes()
        if certificate == "node"
        else _foreign_coordinator_certificate(tmp_path / "other-pki")
    )
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-1", "test.gate"))
        rejected = await _refused(session, "t-1")
        assert rejected.error_code is ErrorCode.ASSIGNMENT_REJECTED
        assert rejected.message.startswith("assignment.unknown_signer: ")
        assert analyses.gate.runs == 0
        assert node.state.task("t-1") is None

    run_scenario(
        tmp_path,
        pki,
        cdm,
        scenario,
        analyses=analyses,
        coordinator=FakeCoordinator(certificate=pem),
    )


def _expired_permit() -> bytes:
    now = datetime.now(UTC)
    return TEST_HDAB.permit(
        valid_from=now - timedelta(days=2), valid_until=now - timedelta(hours=1)
    )


PERMIT_CASES = {
    "another HDAB": ({"permit": OTHER_HDAB.permit()}, PermitRefusal.UNTRUSTED_ISSUER),
    "trusted key, other issuer name": (
        {"permit": TEST_HDAB.permit(issuer="other-hdab")},
        PermitRefusal.UNTRUSTED_ISSUER,
    ),
    "expired": ({"permit": _expired_permit()}, PermitRefusal.EXPIRED),
    "not yet valid": (
        {
            "permit": TEST_HDAB.permit(
                valid_from=datetime.now(UTC) + timedelta(days=1),
                valid_until=datetime.now(UTC) + timedelta(days=2),
            )
        },
        PermitRefusal.NOT_YET_VALID,
    ),
    "node not covered": (
        {"permit": TEST_HDAB.permit(nodes=("hospital-b",))},
        PermitRefusal.NODE_NOT_COVERED,
    ),
    "analysis not covered": (
        {"permit": TEST_HDAB.permit(analyses=("person_count",))},
        PermitRefusal.ANALYSIS_NOT_COVERED,
    ),
    "not a holder": ({"requested_by": "bob"}, PermitRefusal.NOT_HOLDER),
    "no permit": ({"permit": b""}, PermitRefusal.MISSING),
    "not a permit": ({"permit": b'{"format":"x"}'}, PermitRefusal.MALFORMED),
}


@pytest.mark.parametrize("case", PERMIT_CASES.values(), ids=PERMIT_CASES.keys())
def test_a_permit_that_does_not_cover_the_task_is_refused_and_nothing_runs(
    tmp_path: Path, pki: Pki, cdm: Path, case: tuple[dict[str, object], PermitRefusal]
) -> None:
    changes, reason = case
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        session.send(assignment("t-permit", "test.gate", **changes))  # type: ignore[arg-type]
        refused = await _refused(session, "t-permit")
        assert refused.error_code is ErrorCode.PERMIT_REFUSED
        assert refused.message == f"{reason.value}: {reason.message}"
        assert analyses.gate.runs == 0
        actions = [e.action for e in audit_entries(node.state)]
        assert "task.started" not in actions
        [entry] = [e for e in audit_entries(node.state) if e.action == "permit.refused"]
        assert (entry.subject, entry.detail) == ("task t-permit", {"code": reason.value})
        assert refused.audit_head is not None
        assert refused.audit_head.seq >= entry.seq
        labels = {"analysis": "test.gate 1.0.0", "outcome": "refused"}
        assert node.metrics.registry.get_sample_value("ehds_node_tasks_total", labels) == 1

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)


def test_a_researcher_outside_the_policy_is_refused(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        # alice holds a valid permit, but this site admits only bob.
        session.send(assignment("t-alice", "test.gate"))
        refused = await _refused(session, "t-alice")
        assert refused.error_code is ErrorCode.POLICY_REFUSED
        assert refused.message == (
            "policy.researcher_not_allowed: the researcher is not allowed by this site's policy"
        )
        assert "alice" not in refused.message
        assert analyses.gate.runs == 0
        [entry] = [e for e in audit_entries(node.state) if e.action == "policy.refused"]
        assert entry.detail == {"code": "policy.researcher_not_allowed"}

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses, policy={"researchers": ("bob",)})


def test_an_analysis_outside_the_policy_is_refused_after_the_permit(
    tmp_path: Path, pki: Pki, cdm: Path
) -> None:
    analyses = LocalAnalyses()

    async def scenario(coordinator: FakeCoordinator, node: RunningNode, session: Session) -> None:
        # The permit covers test.forbidden; the site's policy does not allow it.
        session.send(assignment("t-forbidden", "test.forbidden"))
        refused = await _refused(session, "t-forbidden")
        assert refused.error_code is ErrorCode.POLICY_REFUSED
        assert refused.message.startswith("policy.analysis_not_allowed: ")
        # With a permit that does not cover it either, the permit answers first.
        session.send(
            assignment(
                "t-both", "test.forbidden", permit=TEST_HDAB.permit(analyses=("person_count",))
            )
        )
        first = await _refused(session, "t-both")
        assert first.message.startswith("permit.analysis_not_covered: ")
        assert analyses.forbidden.runs == 0

    run_scenario(tmp_path, pki, cdm, scenario, analyses=analyses)
