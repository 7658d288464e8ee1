"""Tamper-evident audit chains: one hash-chained, signed log per process.

Every process (the coordinator, each node) appends the entries of its own chain to its own
state database, in the same transaction as the change each records (:class:`AuditLog`).
Entries are RFC 8785 canonical JSON lines, each hashing the previous one and signed with the
process's key, so that a chain exported as JSONL is checked by anyone with standard tools
(docs/audit.md) or :func:`verify_lines` (``ehds audit verify``). Chains anchor each other's
heads, which exposes a truncated tail.

    entry.py             AuditEntry, AuditRef, digests, the time format
    detail.py            what ``detail`` may hold (no blobs), AuditFormatError
    table.py             the ``audit_log`` table, reading the head and the lines
    log.py               AuditLog: appending in the caller's transaction
    verify.py            verify_lines, anchors_for, VerifyReport
    signature_batches.py parallel signature checks for long chains
    state_source.py      a process's state database from its config, opened read-only
"""

from ehds.audit.detail import AuditFormatError
from ehds.audit.entry import (
    GENESIS_PREV,
    AuditEntry,
    AuditRef,
    format_time,
    json_digest,
    parse_time,
    payload_digest,
)
from ehds.audit.log import AuditLog
from ehds.audit.table import audit_table
from ehds.audit.verify import VerifyReport, anchors_for, verify_lines

__all__ = [
    "GENESIS_PREV",
    "AuditEntry",
    "AuditFormatError",
    "AuditLog",
    "AuditRef",
    "VerifyReport",
    "anchors_for",
    "audit_table",
    "format_time",
    "json_digest",
    "parse_time",
    "payload_digest",
    "verify_lines",
]
