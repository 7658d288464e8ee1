"""The node's differential-privacy budget ledger: what each data permit, and each researcher
under it, has spent.

Why a ledger at the node: noise protects one release; many releases to the same people add up.
Under zero-concentrated DP (zCDP) the privacy loss of several releases is the sum of their
``rho``, so the node keeps every charge (`PrivacyLedgerRow`) and refuses a release that would
take a permit's total, or one researcher's total under that permit, past the budget its site
policy grants (``privacy.budget`` in ``policy.yaml``). Several researchers share one permit's
budget: a project cannot reset its budget by adding a member.

An analysis charges once per task, before it draws any noise (`ComputeContext.privacy`). The
charge is recorded and audited (``privacy.charged``) in one transaction; a refusal records no
charge, is audited (``privacy.refused``) and raises `DisclosureRefusedError`, which ends the
task DISCLOSURE_REFUSED. Charges are serialised by the state's audit lock, so two tasks of one
permit cannot both pass against a total that counts neither.

A task charged before (a re-run after a restart, the same parameters) is not charged again.

Messages name the rule and the budget, never what others have spent: telling researcher A that
"0.3 of the permit's 1.0 is left" would tell A what B has done.

Sums use a small relative tolerance (`TOLERANCE`) so that budgets spent in exact fractions
(ten charges of 0.1 against 1.0) are not refused by floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ehds.analyses.base import DisclosureRefusedError
from ehds.node.audit_trail import privacy_charged, privacy_refused
from ehds.node.policy import PrivacyBudget
from ehds.node.state import NodeState
from ehds.node.state_schema import PrivacyLedgerRow

__all__ = [
    "BUDGET_PERMIT_RULE",
    "BUDGET_RECHARGE_RULE",
    "BUDGET_RESEARCHER_RULE",
    "BUDGET_UNSET_RULE",
    "PRIVACY_REQUIRED_RULE",
    "TOLERANCE",
    "LedgerTask",
    "TaskPrivacyLedger",
    "privacy_required",
    "spent",
]

PRIVACY_REQUIRED_RULE: Final = "privacy.required"
BUDGET_UNSET_RULE: Final = "privacy.budget.unset"
BUDGET_PERMIT_RULE: Final = "privacy.budget.permit"
BUDGET_RESEARCHER_RULE: Final = "privacy.budget.researcher"
BUDGET_RECHARGE_RULE: Final = "privacy.budget.recharge"

TOLERANCE: Final = 1e-9
"""Relative slack on a budget: a total within this fraction above it still fits."""


@dataclass(frozen=True)
class LedgerTask:
    """Who a charge is for: the task, its permit and researcher, its study and analysis."""

    task_id: str
    permit: str
    researcher: str
    study_id: str
    analysis: str


def privacy_required() -> DisclosureRefusedError:
    """The refusal of a task whose analysis the site policy runs only with differential
    privacy (``privacy.required_for``) and whose parameters ask for none."""
    return DisclosureRefusedError(
        PRIVACY_REQUIRED_RULE,
        "this node releases results of this analysis only with differential privacy: "
        "set the parameter privacy (rho)",
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _fits(total: float, limit: float) -> bool:
    return total <= limit * (1.0 + TOLERANCE)


def spent(session: Session, permit: str, researcher: str | None = None) -> float:
    """The rho charged under ``permit`` (to ``researcher`` only, if given)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(PrivacyLedgerRow.rho), 0.0)).where(
        PrivacyLedgerRow.permit == permit
    )
    if researcher is not None:
        query = query.where(PrivacyLedgerRow.researcher == researcher)
    return float(session.execute(query).scalar_one())


def _check_amounts(rho: float, epsilon: float, delta: float) -> None:
    """The analysis' own numbers: a bad one is a bug in the analysis, not a refusal."""
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError("privacy charge: rho must be a finite number above 0")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError("privacy charge: epsilon must be a finite number, at least 0")
    if not (math.isfinite(delta) and 0 <= delta < 1):
        raise ValueError("privacy charge: delta must be in [0, 1)")


class TaskPrivacyLedger:
    """The `ehds.analyses.base.PrivacyAccountant` of one task.

    ``budget`` is read at each charge (the policy in force then: a budget lowered by a policy
    reload applies to the next charge)."""

    def __init__(
        self,
        state: NodeState,
        task: LedgerTask,
        budget: Callable[[], PrivacyBudget | None],
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._state = state
        self._task = task
        self._budget = budget
        self._clock = clock

    def charge(self, *, rho: float, epsilon: float, delta: float) -> None:
        """Record the charge, or raise `DisclosureRefusedError` and record nothing but the
        refusal's audit entry."""
        _check_amounts(rho, epsilon, delta)
        refusal = self._charge(rho, epsilon, delta, self._budget())
        if refusal is not None:
            raise refusal

    def _charge(
        self, rho: float, epsilon: float, delta: float, budget: PrivacyBudget | None
    ) -> DisclosureRefusedError | None:
        task = self._task
        with self._state.audited() as recorder:
            session = recorder.session
            earlier = session.get(PrivacyLedgerRow, task.task_id)
            refusal: DisclosureRefusedError | None
            if earlier is not None:
                if _fits(rho, earlier.rho):
                    return None  # charged before this restart: not again
                refusal = DisclosureRefusedError(
                    BUDGET_RECHARGE_RULE,
                    "this task was already charged a smaller privacy budget (rho "
                    f"{earlier.rho:g}) and cannot be charged again",
                )
            else:
                refusal = self._refusal(session, rho, budget)
            if refusal is not None:
                recorder.append(
                    privacy_refused(
                        task.task_id,
                        rule=refusal.rule,
                        permit=task.permit,
                        researcher=task.researcher,
                        rho=rho,
                    )
                )
                return refusal
            session.add(
                PrivacyLedgerRow(
                    task_id=task.task_id,
                    permit=task.permit,
                    researcher=task.researcher,
                    study_id=task.study_id,
                    analysis=task.analysis,
                    rho=rho,
                    epsilon=epsilon,
                    delta=delta,
                    charged_at=self._clock(),
                )
            )
            recorder.append(
                privacy_charged(
                    task.task_id,
                    permit=task.permit,
                    researcher=task.researcher,
                    study=task.study_id,
                    analysis=task.analysis,
                    rho=rho,
                    epsilon=epsilon,
                    delta=delta,
                )
            )
            return None

    def _refusal(
        self, session: Session, rho: float, budget: PrivacyBudget | None
    ) -> DisclosureRefusedError | None:
        task = self._task
        if budget is None:
            return DisclosureRefusedError(
                BUDGET_UNSET_RULE,
                "this node's site policy grants no differential-privacy budget "
                "(privacy.budget), so it releases no differentially private result",
            )
        if not _fits(spent(session, task.permit) + rho, budget.permit_rho):
            return DisclosureRefusedError(
                BUDGET_PERMIT_RULE,
                f"a release of rho {rho:g} would exceed this data permit's privacy budget "
                f"(rho {budget.permit_rho:g} per permit, shared by its researchers)",
            )
        if not _fits(spent(session, task.permit, task.researcher) + rho, budget.researcher_rho):
            return DisclosureRefusedError(
                BUDGET_RESEARCHER_RULE,
                f"a release of rho {rho:g} would exceed the privacy budget of one researcher "
                f"under this data permit (rho {budget.researcher_rho:g})",
            )
        return None
