"""AuditApi: auditors read the coordinator's audit chain, exactly as stored (the canonical
lines `ehds audit verify` checks without trusting the coordinator)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from ehds.coordinator.governance import Governance
from ehds.coordinator.service.access import Access, guarded
from ehds.federation import serde
from ehds.federation.v1 import audit_api_pb2, audit_api_pb2_grpc
from ehds.pki.identity import Role

__all__ = ["BATCH_BYTES", "BATCH_ENTRIES", "AuditApiService"]

_SERVICE: Final = "AuditApi"

BATCH_ENTRIES: Final = 500
"""Entries per message (and per database read)."""

BATCH_BYTES: Final = 2 * 1024 * 1024
"""A batch closes before it passes this size: far below gRPC's 4 MiB per message."""

Context = grpc.aio.ServicerContext[Any, Any]


class AuditApiService(audit_api_pb2_grpc.AuditApiServicer):
    def __init__(self, governance: Governance, access: Access) -> None:
        self._governance = governance
        self._access = access

    async def Export(  # noqa: N802
        self, request: audit_api_pb2.ExportAuditRequest, context: Context
    ) -> AsyncIterator[audit_api_pb2.AuditEntryBatch]:
        await self._access.require(context, Role.AUDITOR, _SERVICE)
        since = serde.decode_timestamp(request.since) if request.HasField("since") else None
        after = request.after_seq
        while True:
            lines, last = await guarded(
                context, self._governance.audit_page(since, after, BATCH_ENTRIES)
            )
            batch: list[bytes] = []
            size = 0
            for line in lines:
                if batch and size + len(line) > BATCH_BYTES:
                    yield audit_api_pb2.AuditEntryBatch(entries=batch)
                    batch, size = [], 0
                batch.append(line)
                size += len(line)
            if batch:
                yield audit_api_pb2.AuditEntryBatch(entries=batch)
            if len(lines) < BATCH_ENTRIES:
                return
            after = last
