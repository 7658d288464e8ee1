"""`ehds node privacy ledger`: the differential-privacy budget spent at this node, and what is
left, per data permit and per researcher under it.

For the node's operator and its data protection officer, who see every researcher's spending
(a researcher never does: refusals name only the rule and the budget). Read beside a running
agent, without its lock and without migrating (like `ehds node review`): the ledger rows are
written by the agent only. Remaining budgets are computed against the budget of the policy
file as it is now (``privacy.budget``); none when the policy sets none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ehds.core.errors import StateError
from ehds.node.policy import PrivacyBudget
from ehds.node.state_db import require_current_schema, sqlite_engine
from ehds.node.state_schema import PrivacyLedgerRow


class LedgerStateError(StateError):
    """The node's state database cannot be read for its ledger (missing, unreadable, old)."""


@dataclass(frozen=True)
class Charge:
    task_id: str
    permit: str
    researcher: str
    study_id: str
    analysis: str
    rho: float
    epsilon: float
    delta: float
    charged_at: datetime


@dataclass(frozen=True)
class ResearcherBalance:
    researcher: str
    spent: float
    # What this researcher may still spend under the permit (the smaller of their own and the
    # permit's remaining budget); None: the policy grants no budget.
    remaining: float | None


@dataclass(frozen=True)
class PermitBalance:
    permit: str
    spent: float
    remaining: float | None
    researchers: tuple[ResearcherBalance, ...]


@dataclass(frozen=True)
class LedgerReport:
    budget: PrivacyBudget | None
    permits: tuple[PermitBalance, ...]
    charges: tuple[Charge, ...]


def _left(limit: float, spent: float) -> float:
    return max(0.0, limit - spent)


def _balances(charges: list[Charge], budget: PrivacyBudget | None) -> tuple[PermitBalance, ...]:
    permits: dict[str, dict[str, float]] = {}
    for charge in charges:
        researchers = permits.setdefault(charge.permit, {})
        researchers[charge.researcher] = researchers.get(charge.researcher, 0.0) + charge.rho
    balances = []
    for permit in sorted(permits):
        researchers = permits[permit]
        spent = sum(researchers.values())
        remaining = None if budget is None else _left(budget.permit_rho, spent)
        balances.append(
            PermitBalance(
                permit,
                spent,
                remaining,
                tuple(
                    ResearcherBalance(
                        name,
                        used,
                        None
                        if budget is None or remaining is None
                        else min(remaining, _left(budget.researcher_rho, used)),
                    )
                    for name, used in sorted(researchers.items())
                ),
            )
        )
    return tuple(balances)


def read_ledger(
    path: Path, budget: PrivacyBudget | None, permit: str | None = None
) -> LedgerReport:
    """Every charge (of ``permit`` only, if given), oldest first, and the balances."""
    if not path.is_file():
        raise LedgerStateError(
            f"state database {path} does not exist: has this node run (`ehds node serve`)?"
        )
    engine = sqlite_engine(path)
    try:
        try:
            require_current_schema(engine, path)
        except StateError as exc:
            raise LedgerStateError(str(exc)) from None
        with Session(engine) as session:
            query = sa.select(PrivacyLedgerRow).order_by(
                PrivacyLedgerRow.charged_at, PrivacyLedgerRow.task_id
            )
            if permit is not None:
                query = query.where(PrivacyLedgerRow.permit == permit)
            charges = [
                Charge(
                    row.task_id,
                    row.permit,
                    row.researcher,
                    row.study_id,
                    row.analysis,
                    row.rho,
                    row.epsilon,
                    row.delta,
                    row.charged_at,
                )
                for row in session.scalars(query)
            ]
    finally:
        engine.dispose()
    return LedgerReport(budget, _balances(charges, budget), tuple(charges))


def _rho(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def render(report: LedgerReport) -> str:
    budget = report.budget
    if budget is None:
        lines = [
            "budget: none (privacy.budget not set: every differentially private release is refused)"
        ]
    else:
        lines = [
            f"budget (zCDP rho): {budget.permit_rho:g} per data permit, "
            f"{budget.researcher_rho:g} per researcher under a permit"
        ]
    if not report.charges:
        lines.append("no charges")
        return "\n".join(lines) + "\n"
    lines.append("")
    for permit in report.permits:
        lines.append(
            f"permit {permit.permit}: spent {_rho(permit.spent)}, "
            f"remaining {_rho(permit.remaining)}"
        )
        for researcher in permit.researchers:
            lines.append(
                f"  {researcher.researcher or '-'}: spent {_rho(researcher.spent)}, "
                f"remaining {_rho(researcher.remaining)}"
            )
    lines.append("")
    lines.append("charges:")
    for charge in report.charges:
        lines.append(
            f"  {charge.charged_at.strftime('%Y-%m-%d %H:%M:%SZ')}  {charge.task_id}  "
            f"{charge.analysis}  study {charge.study_id}  permit {charge.permit}  "
            f"for {charge.researcher or '-'}  rho {_rho(charge.rho)}  "
            f"(epsilon {charge.epsilon:.6g} at delta {charge.delta:g})"
        )
    return "\n".join(lines) + "\n"


def to_json(report: LedgerReport) -> dict[str, Any]:
    budget = report.budget
    return {
        "budget": None
        if budget is None
        else {"permit_rho": budget.permit_rho, "researcher_rho": budget.researcher_rho},
        "permits": [
            {
                "permit": p.permit,
                "spent": p.spent,
                "remaining": p.remaining,
                "researchers": [
                    {"researcher": r.researcher, "spent": r.spent, "remaining": r.remaining}
                    for r in p.researchers
                ],
            }
            for p in report.permits
        ],
        "charges": [
            {
                "task_id": c.task_id,
                "permit": c.permit,
                "researcher": c.researcher,
                "study_id": c.study_id,
                "analysis": c.analysis,
                "rho": c.rho,
                "epsilon": c.epsilon,
                "delta": c.delta,
                "charged_at": c.charged_at.isoformat(),
            }
            for c in report.charges
        ],
    }
