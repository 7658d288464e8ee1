"""Governance at the coordinator, beside the study machinery of `dispatch.py`: the register of
data permits, the audit entries of RPCs, the export of the audit chain, and retention.

Everything goes through the one database thread (`state.worker`), as every change of state
does: an RPC's audit entry is queued with the next group of writes (the call does not wait for
its commit), and the retention sweep deletes in short transactions so that it never holds the
writer for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy.orm import Session

from ehds.audit import AuditRef
from ehds.coordinator.config import RetentionConfig
from ehds.coordinator.state.store import Store
from ehds.coordinator.state.transitions import Viewer
from ehds.coordinator.state.worker import DatabaseWorker, WorkerClosedError
from ehds.federation.model import PermitInfo
from ehds.pki.identity import Identity

__all__ = ["RETENTION_BATCH", "Governance"]

log = logging.getLogger(__name__)

RETENTION_BATCH: Final = 100
"""Studies purged per transaction by the retention sweep (it loops until none is left)."""


def _now() -> datetime:
    return datetime.now(UTC)


class Governance:
    """Permits, audit and retention of one coordinator; event loop only."""

    def __init__(self, *, db: DatabaseWorker, store: Store, retention: RetentionConfig) -> None:
        self._db = db
        self._store = store
        self._retention_config = retention
        self._retention: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._retention_config.days is not None:
            self._retention = asyncio.create_task(
                self._retain(self._retention_config.days), name="coordinator-retention"
            )

    async def stop(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None

    # ------------------------------------------------------------------ permits

    async def register_permit(self, registrar: Identity, document: bytes) -> PermitInfo:
        info = await self._db.write(
            lambda s: self._store.register_permit(s, _now(), registrar, document)
        )
        log.info("permit %s registered by %s", info.id, registrar)
        return info

    async def list_permits(self, viewer: Viewer) -> list[PermitInfo]:
        return await self._db.read(lambda s: self._store.list_permits(s, viewer))

    async def get_permit(self, viewer: Viewer, permit_id: str) -> PermitInfo:
        return await self._db.read(lambda s: self._store.get_permit(s, viewer, permit_id))

    # ------------------------------------------------------------------ audit

    def audit_rpc(
        self, actor: str, action: str, *, digest: str = "", detail: dict[str, Any] | None = None
    ) -> asyncio.Future[AuditRef] | None:
        """Queue an entry about an RPC (the interceptor's): it commits with the next group of
        writes, without holding up the call. None once the database is closing."""
        chain = self._store.audit_log

        def write(session: Session) -> AuditRef:
            return chain.append(session, actor=actor, action=action, detail=detail, digest=digest)

        try:
            future = self._db.enqueue(write)
        except WorkerClosedError:
            log.warning(
                "audit entry %s by %s not written: the coordinator is stopping", action, actor
            )
            return None
        future.add_done_callback(_log_audit_failure)
        return future

    async def audit_page(
        self, since: datetime | None, after_seq: int, limit: int
    ) -> tuple[list[bytes], int]:
        """Lines of the chain after ``after_seq`` (from ``since``), and the last one's seq."""
        return await self._db.read(
            lambda s: self._store.audit_lines(s, since=since, after_seq=after_seq, limit=limit)
        )

    # ------------------------------------------------------------------ retention

    async def _retain(self, days: int) -> None:
        """Every `retention.check_interval_seconds`: purge what ended more than ``days`` ago."""
        while True:
            try:
                await self.purge_expired(days)
            except WorkerClosedError:
                return
            except Exception:
                log.exception("the retention sweep failed (retried at the next round)")
            await asyncio.sleep(self._retention_config.check_interval_seconds)

    async def purge_expired(self, days: int) -> int:
        """One retention sweep: the studies that ended more than ``days`` ago lose their
        results, result document and parameters; returns how many."""
        purged = 0
        while True:
            count = await self._db.write(lambda s: self._purge_batch(s, days))
            purged += count
            if count < RETENTION_BATCH:
                if purged:
                    log.info("retention: deleted the results of %d ended studies", purged)
                return purged

    def _purge_batch(self, session: Session, days: int) -> int:
        now = _now()
        return self._store.purge_ended(session, now, now - timedelta(days=days), RETENTION_BATCH)


def _log_audit_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing an audit entry failed: %s", future.exception())
