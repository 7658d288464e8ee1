"""What the coordinator signs in a TaskAssignment, defined once for both ends.

Why sign assignments at all when the stream is mutual TLS: TLS proves which process sent the
bytes, not that the coordinator's state machine produced them, and it leaves no evidence. A
signed assignment is evidence the node can keep (its audit chain records the digest) and lets
it refuse an assignment altered or replayed by anything between the coordinator's database and
the node's runner: a proxy, a compromised coordinator front end, a bug.

The signed bytes are the RFC 8785 canonical JSON of every field except the signature itself;
the parameters and the permit document enter by SHA-256, so the signed object stays small and
readable in an audit. Times are UTC with microseconds, as in the audit log.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from ehds.core.signing import canonical_bytes, sha256_hex
from ehds.federation.model import AuditRef, TaskAssignment

__all__ = ["SIGNING_FORMAT", "signing_bytes", "signing_claims", "unsigned"]

SIGNING_FORMAT = "ehds-task-assignment/1"


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ref(ref: AuditRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"chain": ref.chain, "seq": ref.seq, "hash": ref.hash}


def signing_claims(assignment: TaskAssignment) -> dict[str, Any]:
    """The signed object (a dict ready for canonical JSON)."""
    return {
        "format": SIGNING_FORMAT,
        "task_id": assignment.task_id,
        "study_id": assignment.study_id,
        "analysis": {"name": assignment.analysis.name, "version": assignment.analysis.version},
        "parameters_sha256": sha256_hex(assignment.parameters),
        "deadline": _time(assignment.deadline),
        "min_cell_count": assignment.min_cell_count,
        "data_permit_id": assignment.data_permit_id,
        "requested_by": assignment.requested_by,
        "permit_sha256": sha256_hex(assignment.permit),
        "nonce": assignment.nonce,
        "expires_at": _time(assignment.expires_at),
        "coordinator_audit_ref": _ref(assignment.coordinator_audit_ref),
    }


def signing_bytes(assignment: TaskAssignment) -> bytes:
    """The bytes the coordinator signs and the node verifies."""
    return canonical_bytes(signing_claims(assignment))


def unsigned(assignment: TaskAssignment) -> TaskAssignment:
    """``assignment`` without its signature (what `signing_bytes` covers)."""
    return dataclasses.replace(assignment, signature="")
