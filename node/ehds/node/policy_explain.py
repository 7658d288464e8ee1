"""`ehds node policy explain`: what the site policy allows, and its verdict on a task.

For a data protection officer or an operator: the pinned HDAB keys (with key ids, to compare
with what the HDAB publishes), the analyses with their versions and release modes, the
researchers, the threshold, the retention, differential privacy (which analyses need it, the
budget) and the workspace time-to-live; and, for a hypothetical task (analysis,
researcher, permit file), each rule's answer and the verdict. The rules are the runner's own
(`ehds.node.admission`: `admit` chains the same three functions in the same order), so the
verdict is what the node would do; a rule whose input is not given is reported as not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ehds.node.admission import (
    Refusal,
    check_analysis_rule,
    check_permit_rule,
    check_researcher_rule,
)
from ehds.node.policy import Policy, SitePolicy
from ehds.permits import PermitFormatError, SignedPermit, format_time, parse_permit

ALLOWED: Final = "allowed"
REFUSED: Final = "refused"
NOT_CHECKED: Final = "not checked"


@dataclass(frozen=True)
class RuleAnswer:
    rule: str  # permit, researcher, analysis
    answer: str  # allowed, refused, not checked
    refusal: Refusal | None = None
    note: str = ""


@dataclass(frozen=True)
class Explanation:
    site: SitePolicy
    node: str
    # Empty when no hypothetical task was given.
    answers: tuple[RuleAnswer, ...]
    permit: SignedPermit | None = None

    @property
    def refusal(self) -> Refusal | None:
        """The first rule that refuses (what the runner would send), if any."""
        return next((a.refusal for a in self.answers if a.refusal is not None), None)

    @property
    def verdict(self) -> str | None:
        if not self.answers:
            return None
        if self.refusal is not None:
            return REFUSED
        if any(a.answer == NOT_CHECKED for a in self.answers):
            return "allowed by the rules checked"
        return ALLOWED


def parse_analysis(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@VERSION``."""
    name, _, version = text.partition("@")
    return name, version or None


def _answer(rule: str, refusal: Refusal | None) -> RuleAnswer:
    return RuleAnswer(rule, REFUSED if refusal is not None else ALLOWED, refusal)


def explain(
    site: SitePolicy,
    *,
    node: str,
    now: datetime,
    analysis: str | None = None,
    researcher: str | None = None,
    permit: bytes | None = None,
) -> Explanation:
    """The policy, and the rules' answers for the task given (none given: no answers)."""
    name, version = parse_analysis(analysis) if analysis is not None else (None, None)
    signed: SignedPermit | None = None
    if permit:
        try:
            signed = parse_permit(permit)
        except PermitFormatError:
            signed = None
    if analysis is None and researcher is None and permit is None:
        return Explanation(site, node, ())
    answers: list[RuleAnswer] = []
    if permit is None:
        answers.append(RuleAnswer("permit", NOT_CHECKED, note="no --permit given"))
    else:
        answers.append(
            _answer(
                "permit",
                check_permit_rule(
                    site, permit, node=node, analysis=name, researcher=researcher, now=now
                ),
            )
        )
    if researcher is None:
        answers.append(RuleAnswer("researcher", NOT_CHECKED, note="no --researcher given"))
    else:
        answers.append(_answer("researcher", check_researcher_rule(site, researcher)))
    if name is None:
        answers.append(RuleAnswer("analysis", NOT_CHECKED, note="no --analysis given"))
    else:
        note = "" if version is not None else "any version (no @VERSION given)"
        if site.policy.privacy.requires(name):
            note = ", ".join(
                part
                for part in (note, "runs only with differential privacy (parameter privacy)")
                if part
            )
        answer = _answer("analysis", check_analysis_rule(site, name, version))
        answers.append(RuleAnswer(answer.rule, answer.answer, answer.refusal, note))
    return Explanation(site, node, tuple(answers), signed)


def render(explanation: Explanation) -> str:
    """The explanation as text."""
    site = explanation.site
    policy = site.policy
    lines = [
        f"node {explanation.node}: site policy {policy.version} ({site.digest})",
        f"  file: {site.path}",
        f"  min_cell_count: {policy.min_cell_count}",
        "  retention: "
        + (
            "keep ended tasks and results (retention_days not set)"
            if policy.retention_days is None
            else f"delete ended tasks and results {policy.retention_days} day(s) after they end"
        ),
        "  HDAB keys (a permit must be signed by one of these, under its name):",
    ]
    for pinned, key in zip(policy.hdab_keys, site.trusted, strict=True):
        lines.append(f"    {key.name}  key id {key.key_id}  ({pinned.public_key})")
    lines.append(
        "  researchers: "
        + (", ".join(policy.researchers) if policy.researchers else "any holder of a valid permit")
    )
    if policy.analyses:
        lines.append("  analyses (exact versions):")
        for allowed in policy.analyses:
            lines.append(f"    {allowed.name} {allowed.version}  release {allowed.release.value}")
    else:
        lines.append("  analyses: none (this node runs nothing)")
    lines.extend(_privacy_lines(policy))
    if explanation.answers:
        lines.append("")
        if explanation.permit is not None:
            permit = explanation.permit.permit
            lines.append(
                f"permit {permit.id} from {permit.issuer}: holders {', '.join(permit.holders)}; "
                f"nodes {', '.join(permit.nodes)}; analyses {', '.join(permit.analyses)}; "
                f"valid {format_time(permit.valid_from)} to {format_time(permit.valid_until)}"
            )
        lines.append("rules, in the order the node applies them:")
        for answer in explanation.answers:
            text = answer.answer
            if answer.refusal is not None:
                text = f"refused: {answer.refusal.message}"
            if answer.note:
                text += f" ({answer.note})"
            lines.append(f"  {answer.rule:<11} {text}")
        refusal = explanation.refusal
        if refusal is not None:
            # The message starts with the rule's code: "permit.expired: the data permit ...".
            lines.append(f"verdict: refused ({refusal.code.name}) by rule {refusal.message}")
        else:
            lines.append(f"verdict: {explanation.verdict}")
    return "\n".join(lines) + "\n"


def _privacy_lines(policy: Policy) -> list[str]:
    privacy = policy.privacy
    budget = privacy.budget
    required = ", ".join(privacy.required_for) or "none"
    return [
        f"  differential privacy required for: {required}",
        "  privacy budget (zCDP rho): "
        + (
            "none (every differentially private release is refused)"
            if budget is None
            else f"{budget.permit_rho:g} per data permit, {budget.researcher_rho:g} per "
            "researcher under a permit (`ehds node privacy ledger` shows what is spent)"
        ),
        f"  workspaces: a study's working tables are dropped after "
        f"{policy.workspace_ttl_hours:g} hour(s) unused",
    ]


def to_json(explanation: Explanation) -> dict[str, Any]:
    site = explanation.site
    policy = site.policy
    document: dict[str, Any] = {
        "node": explanation.node,
        "policy": {
            "version": policy.version,
            "digest": site.digest,
            "path": str(site.path),
            "min_cell_count": policy.min_cell_count,
            "retention_days": policy.retention_days,
            "hdab_keys": [{"name": key.name, "key_id": key.key_id} for key in site.trusted],
            "researchers": list(policy.researchers),
            "analyses": [
                {"name": a.name, "version": a.version, "release": a.release.value}
                for a in policy.analyses
            ],
            "privacy": policy.privacy.model_dump(mode="json"),
            "workspace_ttl_hours": policy.workspace_ttl_hours,
        },
    }
    if explanation.answers:
        refusal = explanation.refusal
        document["rules"] = [
            {
                "rule": a.rule,
                "answer": a.answer,
                "code": a.refusal.rule if a.refusal is not None else None,
                "note": a.note,
            }
            for a in explanation.answers
        ]
        document["verdict"] = explanation.verdict
        document["refused_by"] = (
            None
            if refusal is None
            else {"code": refusal.rule, "error_code": refusal.code.name, "message": refusal.message}
        )
    return document
