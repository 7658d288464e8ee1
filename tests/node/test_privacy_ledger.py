"""The node's differential-privacy budget ledger: charges per permit and researcher, each
refusal rule, idempotent re-charges, and the audit entry written with each charge."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import Pki

from ehds.analyses.base import DisclosureRefusedError
from ehds.audit import AuditEntry, AuditFormatError, AuditLog, verify_lines
from ehds.core.signing import Signer
from ehds.node import privacy_ledger
from ehds.node.audit_trail import AuditNote
from ehds.node.policy import PrivacyBudget
from ehds.node.privacy_ledger import (
    BUDGET_PERMIT_RULE,
    BUDGET_RECHARGE_RULE,
    BUDGET_RESEARCHER_RULE,
    BUDGET_UNSET_RULE,
    LedgerTask,
    TaskPrivacyLedger,
)
from ehds.node.privacy_report import LedgerStateError, read_ledger, render, to_json
from ehds.node.state import NodeState
from ehds.node.state_schema import PrivacyLedgerRow, audit_log

CHAIN = "node hospital-a"
BUDGET = PrivacyBudget(permit_rho=1.0, researcher_rho=0.8)


@pytest.fixture
def signer(pki: Pki) -> Signer:
    return Signer.from_file(pki.tls("hospital-a").key)


@pytest.fixture
def state(tmp_path: Path, signer: Signer) -> Iterator[NodeState]:
    with NodeState.open(tmp_path / "node.db") as opened:
        opened.attach_audit(AuditLog(audit_log, signer, CHAIN))
        yield opened


def _ledger(
    state: NodeState,
    task_id: str,
    *,
    researcher: str = "alice",
    permit: str = "permit-7",
    budget: PrivacyBudget | None = BUDGET,
) -> TaskPrivacyLedger:
    task = LedgerTask(
        task_id=task_id,
        permit=permit,
        researcher=researcher,
        study_id=f"study-{task_id}",
        analysis="person_count 1.1.0",
    )
    return TaskPrivacyLedger(state, task, lambda: budget)


def _charge(ledger: TaskPrivacyLedger, rho: float) -> None:
    ledger.charge(rho=rho, epsilon=rho * 10, delta=1e-6)


def _refused(ledger: TaskPrivacyLedger, rho: float) -> DisclosureRefusedError:
    with pytest.raises(DisclosureRefusedError) as caught:
        _charge(ledger, rho)
    return caught.value


def _rows(state: NodeState) -> dict[str, PrivacyLedgerRow]:
    with state.audited() as recorder:
        rows = recorder.session.query(PrivacyLedgerRow).all()
        return {row.task_id: row for row in rows}


def _entries(state: NodeState) -> list[AuditEntry]:
    return [AuditEntry.parse(line) for line in state.audit_lines()]


def test_researchers_of_one_permit_share_its_budget(state: NodeState, signer: Signer) -> None:
    _charge(_ledger(state, "t-1", researcher="alice"), 0.6)
    _charge(_ledger(state, "t-2", researcher="bob"), 0.3)
    # Bob has spent 0.3 of his 0.8, but the permit's 1.0 would be passed with Alice's 0.6.
    refusal = _refused(_ledger(state, "t-3", researcher="bob"), 0.2)
    assert refusal.rule == BUDGET_PERMIT_RULE
    assert "rho 1 per permit" in refusal.message
    # The message names the budget and the request, never what others spent or what is left.
    for spent_or_left in ("0.6", "0.9", "0.1", "alice"):
        assert spent_or_left not in refusal.message
    assert set(_rows(state)) == {"t-1", "t-2"}  # the refusal recorded no charge
    # Another permit has a budget of its own.
    _charge(_ledger(state, "t-4", researcher="bob", permit="permit-8"), 0.2)
    # What still fits under the permit is allowed.
    _charge(_ledger(state, "t-5", researcher="bob"), 0.1)

    entries = _entries(state)
    assert [(e.action, e.subject) for e in entries] == [
        ("privacy.charged", "task t-1"),
        ("privacy.charged", "task t-2"),
        ("privacy.refused", "task t-3"),
        ("privacy.charged", "task t-4"),
        ("privacy.charged", "task t-5"),
    ]
    charged = entries[0].detail
    assert charged["permit"] == "permit-7"
    assert charged["researcher"] == "alice"
    assert charged["study"] == "study-t-1"
    assert charged["analysis"] == "person_count 1.1.0"
    assert (charged["rho"], charged["epsilon"], charged["delta"]) == (0.6, 6.0, 1e-6)
    assert entries[2].detail["rule"] == BUDGET_PERMIT_RULE
    report = verify_lines(state.audit_lines(), keys={signer.key_id: signer.public_key})
    assert report.ok, report.problem


def test_one_researcher_cannot_spend_the_whole_permit(state: NodeState) -> None:
    _charge(_ledger(state, "t-1"), 0.5)
    refusal = _refused(_ledger(state, "t-2"), 0.4)  # 0.9 > 0.8, the permit has room (1.0)
    assert refusal.rule == BUDGET_RESEARCHER_RULE
    assert "rho 0.8" in refusal.message
    assert "0.5" not in refusal.message
    # Another researcher of the permit still has the rest of it.
    _charge(_ledger(state, "t-3", researcher="bob"), 0.4)
    assert set(_rows(state)) == {"t-1", "t-3"}


def test_no_budget_in_the_policy_refuses_every_charge(state: NodeState) -> None:
    refusal = _refused(_ledger(state, "t-1", budget=None), 0.01)
    assert refusal.rule == BUDGET_UNSET_RULE
    assert "privacy.budget" in refusal.message
    assert _rows(state) == {}
    [entry] = _entries(state)
    assert (entry.action, entry.detail["rule"]) == ("privacy.refused", BUDGET_UNSET_RULE)


def test_a_task_is_charged_once(state: NodeState) -> None:
    ledger = _ledger(state, "t-1")
    _charge(ledger, 0.5)
    _charge(ledger, 0.5)  # a re-run after a restart
    _charge(_ledger(state, "t-1"), 0.5)  # ... with a new ledger object
    [row] = _rows(state).values()
    assert row.rho == 0.5
    assert [e.action for e in _entries(state)] == ["privacy.charged"]
    # Only 0.5 is spent: 0.3 more fits the researcher's 0.8.
    _charge(_ledger(state, "t-2"), 0.3)
    # Charging the same task more than it was charged is refused, not silently allowed.
    refusal = _refused(ledger, 0.6)
    assert refusal.rule == BUDGET_RECHARGE_RULE
    assert _rows(state)["t-1"].rho == 0.5


def test_exact_fractions_of_the_budget_fit(state: NodeState) -> None:
    for number in range(8):  # 8 x 0.1 = 0.8 despite floating point
        _charge(_ledger(state, f"t-{number}"), 0.1)
    assert _refused(_ledger(state, "t-9"), 0.1).rule == BUDGET_RESEARCHER_RULE
    assert math.isclose(sum(row.rho for row in _rows(state).values()), 0.8)


def test_the_charge_and_its_audit_entry_commit_together(
    state: NodeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unrecordable(task_id: str, **detail: object) -> AuditNote:
        return AuditNote("privacy.charged", f"task {task_id}", detail={"rho": math.nan})

    monkeypatch.setattr(privacy_ledger, "privacy_charged", unrecordable)
    with pytest.raises(AuditFormatError):
        _charge(_ledger(state, "t-1"), 0.5)
    assert _rows(state) == {}
    assert _entries(state) == []


@pytest.mark.parametrize(
    ("rho", "epsilon", "delta"),
    [
        (0.0, 1.0, 1e-6),
        (-1.0, 1.0, 1e-6),
        (math.inf, 1.0, 1e-6),
        (0.1, math.nan, 1e-6),
        (0.1, 1.0, 1.0),
    ],
)
def test_amounts_an_analysis_cannot_charge(
    state: NodeState, rho: float, epsilon: float, delta: float
) -> None:
    with pytest.raises(ValueError, match="privacy charge"):
        _ledger(state, "t-1").charge(rho=rho, epsilon=epsilon, delta=delta)
    assert _rows(state) == {}
    assert _entries(state) == []


def test_the_operators_report_of_the_ledger(state: NodeState, tmp_path: Path) -> None:
    _charge(_ledger(state, "t-1", researcher="alice"), 0.5)
    _charge(_ledger(state, "t-2", researcher="bob"), 0.25)
    _charge(_ledger(state, "t-3", researcher="bob", permit="permit-8"), 0.125)
    # Read beside the running node (its lock held), as `ehds node privacy ledger` does.
    report = read_ledger(state.path, BUDGET)
    assert [c.task_id for c in report.charges] == ["t-1", "t-2", "t-3"]
    seven, eight = report.permits
    assert (seven.permit, seven.spent, seven.remaining) == ("permit-7", 0.75, 0.25)
    alice, bob = seven.researchers
    # Alice's own budget has 0.3 left, but the permit only 0.25.
    assert (alice.researcher, alice.spent, alice.remaining) == ("alice", 0.5, 0.25)
    assert (bob.researcher, bob.spent, bob.remaining) == ("bob", 0.25, 0.25)
    assert (eight.spent, eight.remaining) == (0.125, 0.875)
    text = render(report)
    assert "permit permit-7: spent 0.75, remaining 0.25" in text
    assert "  alice: spent 0.5, remaining 0.25" in text
    only = read_ledger(state.path, None, "permit-8")
    assert [c.task_id for c in only.charges] == ["t-3"]
    assert only.permits[0].remaining is None
    assert "budget: none" in render(only)
    document = to_json(only)
    assert document["budget"] is None
    assert document["charges"][0]["rho"] == 0.125
    with pytest.raises(LedgerStateError, match="does not exist"):
        read_ledger(tmp_path / "elsewhere.db", BUDGET)
