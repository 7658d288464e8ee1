"""The register of data permits: registration (checked against the trusted HDAB keys) and the
reads behind PermitApi.

Why a register at all, when every node checks the permit again: a study must name a permit
that exists and allows it before anything is dispatched, so a researcher learns at once that
a permit expired or does not cover a node, and the coordinator never sends a node work it
would have to refuse. The node's own check stays the authority over its data.

A permit id names one document for good: registering the same permit again (the same signed
content, whatever its formatting) is a no-op, and another document under a registered id is
refused (`PermitConflictError`), so a study's permit cannot change under it.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ehds.audit import payload_digest
from ehds.coordinator.errors import PermitConflictError, PermitNotFoundError, PermitRejectedError
from ehds.coordinator.state.models import PermitHolderRow, PermitRow
from ehds.coordinator.state.transitions import Transitions, Viewer
from ehds.federation.model import PermitInfo
from ehds.permits import (
    PermitFormatError,
    PermitRefusedError,
    SignedPermit,
    check_permit,
    parse_permit,
)
from ehds.pki.identity import Identity, Role

__all__ = ["PermitChanges", "permit_info"]


def permit_subject(permit_id: str) -> str:
    return f"permit {permit_id}"


def permit_info(row: PermitRow) -> PermitInfo:
    return PermitInfo(
        id=row.id,
        issuer=row.issuer,
        holders=tuple(json.loads(row.holders)),
        purpose=row.purpose,
        nodes=tuple(json.loads(row.nodes)),
        analyses=tuple(json.loads(row.analyses)),
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        issued_at=row.issued_at,
        registered_by=row.registered_by,
        registered_at=row.registered_at,
        document=row.document,
    )


def _same_permit(stored: bytes, signed: SignedPermit) -> bool:
    """The same signed permit (content, key, signature), however the file is formatted."""
    if stored == signed.document:
        return True
    try:
        old = parse_permit(stored)
    except PermitFormatError:
        return False
    return (old.signed_bytes, old.key_id, old.signature) == (
        signed.signed_bytes,
        signed.key_id,
        signed.signature,
    )


class PermitChanges(Transitions):
    def register_permit(
        self, session: Session, now: datetime, registrar: Identity, document: bytes
    ) -> PermitInfo:
        """Register ``document`` (by a researcher who holds it, or an operator): checked with
        `check_permit` against the trusted HDAB keys; `PermitRejectedError` with the refusal
        code, `PermitConflictError` for another document under a registered id."""
        holder = registrar.name if registrar.role is Role.RESEARCHER else None
        try:
            signed = check_permit(document, trusted=self._trusted, now=now, holder=holder)
        except PermitRefusedError as exc:
            raise PermitRejectedError(exc.reason) from None
        permit = signed.permit
        existing = session.get(PermitRow, permit.id)
        if existing is not None:
            if not _same_permit(existing.document, signed):
                raise PermitConflictError(permit.id)
            return permit_info(existing)
        row = PermitRow(
            id=permit.id,
            issuer=permit.issuer,
            document=signed.document,
            digest=signed.digest,
            holders=json.dumps(list(permit.holders)),
            nodes=json.dumps(list(permit.nodes)),
            analyses=json.dumps(list(permit.analyses)),
            purpose=permit.purpose,
            valid_from=permit.valid_from,
            valid_until=permit.valid_until,
            issued_at=permit.issued_at,
            registered_by=str(registrar),
            registered_at=now,
        )
        session.add(row)
        session.flush()  # the permit before its holders (foreign key)
        session.add_all(PermitHolderRow(permit_id=permit.id, holder=h) for h in permit.holders)
        self._audit(
            session,
            str(registrar),
            "permit.registered",
            subject=permit_subject(permit.id),
            digest=payload_digest(signed.document),
            issuer=permit.issuer,
            key=signed.key_id,
            holders=list(permit.holders),
            nodes=list(permit.nodes) if len(permit.nodes) <= 200 else None,
            node_count=len(permit.nodes),
            analyses=list(permit.analyses),
            valid_from=permit.valid_from.isoformat(),
            valid_until=permit.valid_until.isoformat(),
        )
        return permit_info(row)

    def list_permits(self, session: Session, viewer: Viewer) -> list[PermitInfo]:
        """Every permit ``viewer`` holds (None: every permit), by id."""
        query = select(PermitRow).order_by(PermitRow.id)
        if viewer is not None:
            query = query.where(
                PermitRow.id.in_(
                    select(PermitHolderRow.permit_id).where(PermitHolderRow.holder == viewer)
                )
            )
        return [permit_info(row) for row in session.scalars(query)]

    def get_permit(self, session: Session, viewer: Viewer, permit_id: str) -> PermitInfo:
        row = session.get(PermitRow, permit_id)
        if row is None or (
            viewer is not None and session.get(PermitHolderRow, (permit_id, viewer)) is None
        ):
            raise PermitNotFoundError(permit_id)
        return permit_info(row)
