"""Whether a permit document allows a request: one function, the same at every checkpoint.

The coordinator checks a permit when it is registered and when a study is submitted under it;
each node checks it again, against its *own* pinned HDAB keys, before it runs a task. They all
call `check_permit`, so they refuse for the same reasons, reported by the same codes, and
always the first failing rule in this fixed order:

    missing → malformed → untrusted issuer → bad signature → not yet valid → expired
            → node not covered → analysis not covered → not a holder

The order puts what the document *is* before what it *allows*: a request is never told
whether a forged or expired permit would have covered it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ehds.core.signing import verify_signature
from ehds.permits.document import SignedPermit, parse_permit
from ehds.permits.errors import PermitFormatError, PermitRefusal, PermitRefusedError
from ehds.permits.keys import HdabKey


def check_permit(
    document: bytes,
    *,
    trusted: Sequence[HdabKey],
    now: datetime,
    node: str | None = None,
    analysis: str | None = None,
    holder: str | None = None,
) -> SignedPermit:
    """The parsed permit if it is valid at ``now`` and covers what is given, else
    `PermitRefusedError` for the first failing rule. ``node``, ``analysis`` and ``holder``
    are checked only when given; ``now`` must be timezone-aware."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if not document:
        raise PermitRefusedError(PermitRefusal.MISSING)
    try:
        signed = parse_permit(document)
    except PermitFormatError as exc:
        raise PermitRefusedError(PermitRefusal.MALFORMED, str(exc)) from None
    permit = signed.permit
    key = next((k for k in trusted if k.key_id == signed.key_id and k.name == permit.issuer), None)
    if key is None:
        pinned = any(k.key_id == signed.key_id for k in trusted)
        detail = (
            "the signing key is trusted under another name than permit.issuer"
            if pinned
            else "the signing key is not one of the trusted HDAB keys"
        )
        raise PermitRefusedError(PermitRefusal.UNTRUSTED_ISSUER, detail)
    if not verify_signature(key.public_key, signed.signed_bytes, signed.signature):
        raise PermitRefusedError(PermitRefusal.BAD_SIGNATURE)
    at = now.astimezone(UTC)
    if at < permit.valid_from:
        raise PermitRefusedError(PermitRefusal.NOT_YET_VALID)
    if at >= permit.valid_until:
        raise PermitRefusedError(PermitRefusal.EXPIRED)
    if node is not None and not permit.covers_node(node):
        raise PermitRefusedError(PermitRefusal.NODE_NOT_COVERED)
    if analysis is not None and not permit.covers_analysis(analysis):
        raise PermitRefusedError(PermitRefusal.ANALYSIS_NOT_COVERED)
    if holder is not None and not permit.held_by(holder):
        raise PermitRefusedError(PermitRefusal.NOT_HOLDER)
    return signed
