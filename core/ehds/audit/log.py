"""The writer of one process's chain: appends signed entries in the caller's transaction.

An entry is written in the same transaction as the change it records, so the two commit or
roll back together: the log never claims a change that did not happen, and no change goes
unrecorded. The writer keeps no state between calls (the head is read from the table every
time), so several writers in one process, or a restarted process, continue the same chain;
two writers racing for the same seq are stopped by the primary key
(:class:`sqlalchemy.exc.IntegrityError` in the loser's transaction), never by a fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ehds.audit.entry import GENESIS_PREV, AuditEntry, AuditRef, format_time
from ehds.audit.table import Executor, read_head, read_lines
from ehds.core.signing import Signer, canonical_bytes, sha256_hex

__all__ = ["AuditLog"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Appends to, and reads, the chain ``chain`` kept in ``table``, signed by ``signer``."""

    def __init__(
        self,
        table: sa.Table,
        signer: Signer,
        chain: str,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        # Validates the chain name once, here, rather than failing at the first append.
        AuditRef(chain, 1, GENESIS_PREV)
        self.table = table
        self.signer = signer
        self.chain = chain
        self._clock = clock
        self._head = sa.select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)
        self._insert = table.insert()

    def append(
        self,
        conn: Executor,
        *,
        actor: str,
        action: str,
        subject: str = "",
        detail: Mapping[str, Any] | None = None,
        digest: str = "",
        anchor: AuditRef | None = None,
    ) -> AuditRef:
        """Add one entry inside the caller's transaction (never commits); its ref.

        Raises :class:`~ehds.audit.detail.AuditFormatError` for a field that breaks the format
        (``detail`` with a blob, a bytes value, a too-long subject, ...) before writing.
        """
        row = conn.execute(self._head).first()
        seq, prev = (1, GENESIS_PREV) if row is None else (int(row[0]) + 1, str(row[1]))
        unsigned = AuditEntry(
            chain=self.chain,
            seq=seq,
            time=self._clock(),
            actor=actor,
            action=action,
            subject=subject,
            detail=dict(detail) if detail is not None else {},
            digest=digest,
            anchor=anchor,
            prev=prev,
            key=self.signer.key_id,
            hash=GENESIS_PREV,  # placeholders: neither is part of the body
            sig="AA==",
        )
        body_json = unsigned.body_json()
        body = unsigned.body_bytes()
        entry_hash = sha256_hex(body)
        sig = self.signer.sign(body)
        line = canonical_bytes({**body_json, "hash": entry_hash, "sig": sig})
        conn.execute(
            self._insert,
            {
                "seq": seq,
                "time": format_time(unsigned.time),
                "action": unsigned.action,
                "subject": unsigned.subject,
                "hash": entry_hash,
                "entry": line.decode("utf-8"),
            },
        )
        return AuditRef(self.chain, seq, entry_hash)

    def head(self, conn: Executor) -> AuditRef | None:
        """The last entry's ref, or None while the chain is empty."""
        head = read_head(conn, self.table)
        return None if head is None else AuditRef(self.chain, head[0], head[1])

    def lines(
        self, conn: Executor, *, since: datetime | None = None, after_seq: int = 0
    ) -> Iterator[bytes]:
        """Canonical lines in order (see :func:`ehds.audit.table.read_lines` for ``since``)."""
        return read_lines(
            conn,
            self.table,
            since=None if since is None else format_time(since),
            after_seq=after_seq,
        )
