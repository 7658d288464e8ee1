"""What the node writes to its audit chain, and the chain's writer.

The node's chain is named after its certificate (``node NAME``) and signed with its TLS key;
it lives in the node's state database (``audit_log``) and each entry is appended in the same
transaction as the state change it records (`ehds.node.state`). The agent process is the only
writer: `ehds node review` records decisions in a table, and the agent audits them when it
applies them.

Actions (docs/audit.md lists them for both ends):

    policy.loaded / policy.changed   the policy in force at start / after a change
    assignment.received              a task accepted (anchor: the coordinator's entry)
    assignment.repeated              a re-delivery of a task already accepted
    assignment.rejected              bad signature, unknown signer, replayed, expired
    permit.refused / policy.refused  the task's permit or the site policy refused it
    task.started                     a worker started it (each attempt)
    task.refused                     disclosure control refused to release its result
    task.failed                      ended without a result for any other reason (code)
    result.held                      computed; waits for an operator (release: manual)
    result.released                  released by "operator NAME" or "policy auto"
    result.rejected                  an operator rejected it (RELEASE_REJECTED)
    result.sent                      handed to the stream to the coordinator
    result.receipted                 the coordinator's receipt
    retention.deleted                an ended task and its result deleted
    privacy.charged                  a task spent differential-privacy budget (rho)
    privacy.refused                  a charge refused (budget unset or exhausted: its rule)
    workspace.created                a study's workspace table name handed out
    workspace.dropped                an idle workspace table dropped

Entries hold identifiers, codes, versions and digests only, never parameters or results.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from ehds.audit import AuditFormatError, AuditLog, AuditRef, payload_digest
from ehds.core.errors import EhdsError
from ehds.core.signing import Signer
from ehds.federation import model
from ehds.federation.model import ErrorCode, TaskAssignment
from ehds.node.config import NodeConfig
from ehds.node.errors import NodeStartError
from ehds.node.state_schema import audit_log
from ehds.pki.identity import Identity

AUTO_RELEASE_ACTOR: Final = "policy auto"
MAX_FIELD: Final = 200
"""Characters kept of a text received from the wire (ids, names) in an entry."""

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def bounded(text: str, limit: int = MAX_FIELD) -> str:
    """``text`` as an entry may hold it: no control characters, at most ``limit`` characters.

    Why: an assignment's fields are recorded even when it is refused (forged, replayed); a
    forged field must not be able to make the refusal unrecordable."""
    return _CONTROL.sub("?", text[:limit])


@dataclass(frozen=True)
class AuditNote:
    """An entry to append, without its chain fields (seq, time, prev, hash, signature).

    ``actor`` None: the node itself (its chain name)."""

    action: str
    subject: str
    actor: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    digest: str = ""
    anchor: AuditRef | None = None


def node_audit_log(config: NodeConfig) -> AuditLog:
    """The writer of this node's chain: named by its certificate, signed by its TLS key."""
    try:
        identity = Identity.from_certificate(config.tls.certificate.read_bytes())
        signer = Signer.from_file(config.tls.key)
    except (OSError, EhdsError, ValueError) as exc:
        raise NodeStartError(
            f"audit chain: cannot use the node's TLS key and certificate: {exc}"
        ) from None
    return AuditLog(audit_log, signer, str(identity))


def to_model_ref(ref: AuditRef | None) -> model.AuditRef | None:
    return None if ref is None else model.AuditRef(ref.chain, ref.seq, ref.hash)


def from_model_ref(ref: model.AuditRef | None) -> AuditRef | None:
    """The coordinator's ref as an anchor; None when absent or not a valid ref."""
    if ref is None:
        return None
    try:
        return AuditRef(ref.chain, ref.seq, ref.hash)
    except AuditFormatError:
        return None


def task_subject(task_id: str) -> str:
    return f"task {bounded(task_id)}"


def assignment_detail(assignment: TaskAssignment) -> dict[str, Any]:
    return {
        "study": bounded(assignment.study_id),
        "analysis": {
            "name": bounded(assignment.analysis.name),
            "version": bounded(assignment.analysis.version),
        },
        "permit": bounded(assignment.data_permit_id),
        "permit_digest": payload_digest(assignment.permit) if assignment.permit else "",
        "requested_by": bounded(assignment.requested_by),
        "nonce": bounded(assignment.nonce),
    }


def assignment_received(assignment: TaskAssignment, signer: str) -> AuditNote:
    return AuditNote(
        action="assignment.received",
        subject=task_subject(assignment.task_id),
        actor=signer,
        detail=assignment_detail(assignment),
        digest=payload_digest(assignment.parameters),
        anchor=from_model_ref(assignment.coordinator_audit_ref),
    )


def assignment_repeated(assignment: TaskAssignment, signer: str, status: str) -> AuditNote:
    return AuditNote(
        action="assignment.repeated",
        subject=task_subject(assignment.task_id),
        actor=signer,
        detail={"nonce": bounded(assignment.nonce), "status": status},
    )


def assignment_rejected(assignment: TaskAssignment, code: str, signer: str | None) -> AuditNote:
    """A refused assignment; its fields are recorded as received (they may be forged)."""
    return AuditNote(
        action="assignment.rejected",
        subject=task_subject(assignment.task_id),
        actor=signer or "unverified coordinator",
        detail={"code": code, **assignment_detail(assignment)},
        digest=payload_digest(assignment.parameters),
    )


def sha256_digest(sha256: bytes) -> str:
    """How an entry names a payload known by its SHA-256: ``sha256:<hex>``."""
    return "sha256:" + sha256.hex()


def policy_recorded(version: str, digest: str, previous: tuple[str, str] | None) -> AuditNote:
    """``policy.loaded`` (first, or the same digest as ``previous`` = (version, digest)) or
    ``policy.changed`` (another digest)."""
    if previous is None or previous[1] == digest:
        return AuditNote("policy.loaded", "policy", detail={"version": version}, digest=digest)
    return AuditNote(
        "policy.changed",
        "policy",
        detail={"old_version": previous[0], "old_digest": previous[1], "version": version},
        digest=digest,
    )


def task_started(task_id: str, attempt: int, policy_version: str) -> AuditNote:
    return AuditNote(
        "task.started",
        task_subject(task_id),
        detail={"attempt": attempt, "policy_version": policy_version},
    )


def task_not_admitted(task_id: str, action: str, rule: str) -> AuditNote:
    """``permit.refused`` or ``policy.refused``, with the rule's code."""
    return AuditNote(action, task_subject(task_id), detail={"code": rule})


def task_ended(task_id: str, code: ErrorCode, rule: str | None = None) -> AuditNote:
    """A task that ended without a result: ``task.refused`` (disclosure control, its rule)
    or ``task.failed`` (the outcome's code)."""
    if code is ErrorCode.DISCLOSURE_REFUSED:
        return AuditNote("task.refused", task_subject(task_id), detail={"rule": rule or ""})
    return AuditNote("task.failed", task_subject(task_id), detail={"code": code.name})


def result_stored(task_id: str, payload: bytes, *, held: bool) -> AuditNote:
    """``result.held`` (an operator decides) or ``result.released`` by the policy."""
    detail = {"size": len(payload)}
    digest = payload_digest(payload)
    if held:
        return AuditNote("result.held", task_subject(task_id), detail=detail, digest=digest)
    return AuditNote("result.released", task_subject(task_id), AUTO_RELEASE_ACTOR, detail, digest)


def result_decided(task_id: str, *, released: bool, actor: str, sha256: bytes) -> AuditNote:
    """An operator's decision applied: ``result.released`` or ``result.rejected``."""
    action = "result.released" if released else "result.rejected"
    return AuditNote(action, task_subject(task_id), actor, digest=sha256_digest(sha256))


def result_sent(task_id: str, size: int, sha256: bytes) -> AuditNote:
    return AuditNote(
        "result.sent", task_subject(task_id), detail={"size": size}, digest=sha256_digest(sha256)
    )


def result_receipted(task_id: str, sha256: bytes) -> AuditNote:
    return AuditNote("result.receipted", task_subject(task_id), digest=sha256_digest(sha256))


def retention_deleted(
    task_id: str, *, study: str, status: str, ended_at: datetime | None, days: int
) -> AuditNote:
    return AuditNote(
        "retention.deleted",
        task_subject(task_id),
        detail={
            "study": study,
            "status": status,
            "ended_at": "" if ended_at is None else ended_at.isoformat(),
            "retention_days": days,
        },
    )


def privacy_charged(
    task_id: str,
    *,
    permit: str,
    researcher: str,
    study: str,
    analysis: str,
    rho: float,
    epsilon: float,
    delta: float,
) -> AuditNote:
    return AuditNote(
        "privacy.charged",
        task_subject(task_id),
        detail={
            "permit": bounded(permit),
            "researcher": bounded(researcher),
            "study": bounded(study),
            "analysis": bounded(analysis),
            "rho": rho,
            "epsilon": epsilon,
            "delta": delta,
        },
    )


def privacy_refused(
    task_id: str, *, rule: str, permit: str, researcher: str, rho: float
) -> AuditNote:
    return AuditNote(
        "privacy.refused",
        task_subject(task_id),
        detail={
            "rule": rule,
            "permit": bounded(permit),
            "researcher": bounded(researcher),
            "rho": rho,
        },
    )


def workspace_created(name: str, *, study: str, purpose: str) -> AuditNote:
    return AuditNote(
        "workspace.created",
        f"workspace {name}",
        detail={"study": bounded(study), "purpose": purpose},
    )


def workspace_dropped(
    name: str, *, study: str, last_used_at: datetime, ttl_hours: float
) -> AuditNote:
    return AuditNote(
        "workspace.dropped",
        f"workspace {name}",
        detail={
            "study": bounded(study),
            "last_used_at": last_used_at.isoformat(),
            "ttl_hours": ttl_hours,
        },
    )
