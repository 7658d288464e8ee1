"""Whether the site policy admits a task: the data permit, the researcher, the analysis.

One implementation for the runner (every task, just before it runs) and for
`ehds node policy explain` (a hypothetical task), so that what an operator is told is what the
node does. The rules, in this order, each a pure function of the policy and the request:

    permit      signed by a pinned HDAB key, valid now, covers this node, this analysis (by
                name) and names the requester as a holder
                -> PERMIT_REFUSED, ``permit.*`` (`ehds.permits.PermitRefusal`)
    researcher  on the policy's list (an empty list allows any permit holder)
                -> POLICY_REFUSED, ``policy.researcher_not_allowed``
    analysis    this name at this exact version is listed
                -> POLICY_REFUSED, ``policy.analysis_not_allowed``

A refusal carries a fixed message, ``"<code>: <sentence>"``, naming the rule and never a value
(a permit id, a name): it leaves the institution in a `TaskOutcome` and lands in audit chains.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final

from ehds.federation.model import AnalysisRef, ErrorCode
from ehds.node.policy import SitePolicy
from ehds.permits import PermitRefusedError, check_permit


class PolicyRule(enum.StrEnum):
    """Refusal codes of the site policy's own rules (the permit's are `PermitRefusal`)."""

    RESEARCHER_NOT_ALLOWED = "policy.researcher_not_allowed"
    ANALYSIS_NOT_ALLOWED = "policy.analysis_not_allowed"

    @property
    def message(self) -> str:
        return _POLICY_MESSAGES[self]


_POLICY_MESSAGES: Final[Mapping[PolicyRule, str]] = MappingProxyType(
    {
        PolicyRule.RESEARCHER_NOT_ALLOWED: "the researcher is not allowed by this site's policy",
        PolicyRule.ANALYSIS_NOT_ALLOWED: "the analysis is not allowed by this site's policy",
    }
)


@dataclass(frozen=True)
class Refusal:
    """Why a task may not run: the outcome's code, the rule's code, and the fixed message."""

    code: ErrorCode
    rule: str
    message: str

    @property
    def audit_action(self) -> str:
        return "permit.refused" if self.code is ErrorCode.PERMIT_REFUSED else "policy.refused"


def _policy_refusal(rule: PolicyRule) -> Refusal:
    return Refusal(ErrorCode.POLICY_REFUSED, rule.value, f"{rule.value}: {rule.message}")


def check_permit_rule(
    site: SitePolicy,
    permit: bytes,
    *,
    node: str,
    analysis: str | None,
    researcher: str | None,
    now: datetime,
) -> Refusal | None:
    """The permit rule; ``analysis`` (a name) and ``researcher`` are checked when given."""
    try:
        check_permit(
            permit,
            trusted=site.trusted,
            now=now,
            node=node,
            analysis=analysis,
            holder=researcher,
        )
    except PermitRefusedError as refused:
        return Refusal(ErrorCode.PERMIT_REFUSED, refused.reason.value, str(refused))
    return None


def check_researcher_rule(site: SitePolicy, researcher: str) -> Refusal | None:
    if site.policy.allows_researcher(researcher):
        return None
    return _policy_refusal(PolicyRule.RESEARCHER_NOT_ALLOWED)


def check_analysis_rule(site: SitePolicy, name: str, version: str | None) -> Refusal | None:
    """The analysis rule; with no ``version``, whether any version of ``name`` is allowed."""
    allowed = site.policy.analyses
    if version is None:
        ok = any(entry.name == name for entry in allowed)
    else:
        ok = site.policy.allows(AnalysisRef(name, version))
    return None if ok else _policy_refusal(PolicyRule.ANALYSIS_NOT_ALLOWED)


def admit(
    site: SitePolicy,
    *,
    node: str,
    analysis: AnalysisRef,
    researcher: str,
    permit: bytes,
    now: datetime,
) -> Refusal | None:
    """The first rule that refuses the task, or None: it may run (the runner then checks the
    registry, the parameters and the deadline)."""
    return (
        check_permit_rule(
            site, permit, node=node, analysis=analysis.name, researcher=researcher, now=now
        )
        or check_researcher_rule(site, researcher)
        or check_analysis_rule(site, analysis.name, analysis.version)
    )
