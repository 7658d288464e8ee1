"""`check_permit`: every refusal reason, in the contract's order, and what it reveals."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ehds.core.signing import Signer
from ehds.permits import (
    HdabKey,
    Permit,
    PermitRefusal,
    PermitRefusedError,
    check_permit,
    issue_permit,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
"""Inside the fixture permit's validity: the tests never depend on the real clock."""


def _refusal(document: bytes, trusted: list[HdabKey], **kwargs: Any) -> PermitRefusedError:
    kwargs.setdefault("now", NOW)
    with pytest.raises(PermitRefusedError) as caught:
        check_permit(document, trusted=trusted, **kwargs)
    return caught.value


def _tampered(document: bytes, **changes: Any) -> bytes:
    data = json.loads(document)
    data["permit"].update(changes)
    return json.dumps(data).encode()


def test_reason_codes_are_the_contract() -> None:
    assert [(r.name, r.value) for r in PermitRefusal] == [
        ("MISSING", "permit.missing"),
        ("MALFORMED", "permit.malformed"),
        ("UNTRUSTED_ISSUER", "permit.untrusted_issuer"),
        ("BAD_SIGNATURE", "permit.bad_signature"),
        ("NOT_YET_VALID", "permit.not_yet_valid"),
        ("EXPIRED", "permit.expired"),
        ("NODE_NOT_COVERED", "permit.node_not_covered"),
        ("ANALYSIS_NOT_COVERED", "permit.analysis_not_covered"),
        ("NOT_HOLDER", "permit.not_holder"),
    ]
    for reason in PermitRefusal:
        assert reason.message
        assert str(PermitRefusedError(reason)) == f"{reason.value}: {reason.message}"


def test_a_valid_permit(document: bytes, fi_key: HdabKey, dk_key: HdabKey, permit: Permit) -> None:
    signed = check_permit(
        document,
        trusted=[dk_key, fi_key],
        now=NOW,
        node="node-fi",
        analysis="incidence",
        holder="bob",
    )
    assert signed.permit == permit
    assert signed.key_id == fi_key.key_id
    # node, analysis and holder are only checked when given
    assert check_permit(document, trusted=[fi_key], now=NOW).permit == permit


def test_missing(fi_key: HdabKey) -> None:
    assert _refusal(b"", [fi_key]).reason is PermitRefusal.MISSING


def test_malformed_keeps_the_detail_out_of_the_message(document: bytes, fi_key: HdabKey) -> None:
    error = _refusal(_tampered(document, holders=["Mallory"]), [fi_key])
    assert error.reason is PermitRefusal.MALFORMED
    assert "permit.holders[0]" in error.detail
    assert str(error) == "permit.malformed: " + PermitRefusal.MALFORMED.message
    assert _refusal(b"{", [fi_key]).reason is PermitRefusal.MALFORMED


def test_another_hdabs_key_is_untrusted(document: bytes, dk_key: HdabKey) -> None:
    assert _refusal(document, [dk_key]).reason is PermitRefusal.UNTRUSTED_ISSUER
    assert _refusal(document, []).reason is PermitRefusal.UNTRUSTED_ISSUER


def test_a_key_trusted_under_another_name_is_untrusted(document: bytes, fi_signer: Signer) -> None:
    # dk-hdab's entry pins fi's key: fi's permits still do not count as dk's, nor the reverse
    error = _refusal(document, [HdabKey("dk-hdab", fi_signer.public_key)])
    assert error.reason is PermitRefusal.UNTRUSTED_ISSUER
    assert "another name" in error.detail


def test_a_permit_claiming_another_issuer(
    permit: Permit, dk_signer: Signer, fi_key: HdabKey, dk_key: HdabKey
) -> None:
    # signed by dk's key but claims to be fi's: not trusted, whatever else is trusted
    forged = issue_permit(dk_signer, permit)
    assert _refusal(forged, [fi_key, dk_key]).reason is PermitRefusal.UNTRUSTED_ISSUER


@pytest.mark.parametrize(
    "changes",
    [
        {"holders": ["alice", "bob", "mallory"]},
        {"nodes": ["node-fr", "node-fi", "node-dk"]},
        {"valid_until": "2037-11-25T00:00:00Z"},
        {"purpose": "Anything."},
    ],
)
def test_a_tampered_document_has_a_bad_signature(
    document: bytes, fi_key: HdabKey, changes: dict[str, Any]
) -> None:
    assert _refusal(_tampered(document, **changes), [fi_key]).reason is (
        PermitRefusal.BAD_SIGNATURE
    )


def test_signatures_that_do_not_verify(document: bytes, fi_key: HdabKey, dk_signer: Signer) -> None:
    data = json.loads(document)
    data["signature"]["value"] = dk_signer.sign(b"anything")  # well-formed, wrong key
    assert _refusal(json.dumps(data).encode(), [fi_key]).reason is PermitRefusal.BAD_SIGNATURE
    data["signature"]["value"] = base64.b64encode(b"\x30\x03garbage").decode()
    assert _refusal(json.dumps(data).encode(), [fi_key]).reason is PermitRefusal.BAD_SIGNATURE


def test_validity_period(document: bytes, fi_key: HdabKey, permit: Permit) -> None:
    before = permit.valid_from - timedelta(seconds=1)
    assert _refusal(document, [fi_key], now=before).reason is PermitRefusal.NOT_YET_VALID
    assert check_permit(document, trusted=[fi_key], now=permit.valid_from)
    last = permit.valid_until - timedelta(microseconds=1)
    assert check_permit(document, trusted=[fi_key], now=last)
    at_end = permit.valid_until
    assert _refusal(document, [fi_key], now=at_end).reason is PermitRefusal.EXPIRED


def test_coverage(document: bytes, fi_key: HdabKey) -> None:
    assert _refusal(document, [fi_key], node="node-dk").reason is PermitRefusal.NODE_NOT_COVERED
    assert _refusal(document, [fi_key], analysis="prevalence").reason is (
        PermitRefusal.ANALYSIS_NOT_COVERED
    )
    assert _refusal(document, [fi_key], holder="carol").reason is PermitRefusal.NOT_HOLDER


def test_the_first_failing_rule_wins(
    document: bytes, fi_key: HdabKey, dk_key: HdabKey, fi_signer: Signer, permit: Permit
) -> None:
    everything = {"node": "node-dk", "analysis": "prevalence", "holder": "carol"}
    expired = permit.valid_until + timedelta(days=1)
    early = permit.valid_from - timedelta(days=1)
    tampered = _tampered(document, holders=["carol"])
    cases: list[tuple[bytes, list[HdabKey], datetime, PermitRefusal]] = [
        (b"", [], expired, PermitRefusal.MISSING),
        (b"[]", [], expired, PermitRefusal.MALFORMED),
        (tampered, [dk_key], expired, PermitRefusal.UNTRUSTED_ISSUER),
        (tampered, [fi_key], expired, PermitRefusal.BAD_SIGNATURE),
        (document, [fi_key], early, PermitRefusal.NOT_YET_VALID),
        (document, [fi_key], expired, PermitRefusal.EXPIRED),
        (document, [fi_key], NOW, PermitRefusal.NODE_NOT_COVERED),
    ]
    for doc, trusted, now, reason in cases:
        assert _refusal(doc, trusted, now=now, **everything).reason is reason
    rest = {"node": "node-fi", "analysis": "prevalence", "holder": "carol"}
    assert _refusal(document, [fi_key], **rest).reason is PermitRefusal.ANALYSIS_NOT_COVERED
    rest["analysis"] = "counts"
    assert _refusal(document, [fi_key], **rest).reason is PermitRefusal.NOT_HOLDER
    # a permit whose content is otherwise fine but whose times are reversed is malformed
    assert _refusal(_tampered(document, valid_until="2020-01-01T00:00:00Z"), [fi_key]).reason is (
        PermitRefusal.MALFORMED
    )


def test_now_must_be_aware(document: bytes, fi_key: HdabKey) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check_permit(document, trusted=[fi_key], now=datetime(2026, 12, 1))


def test_now_in_any_zone(document: bytes, fi_key: HdabKey, permit: Permit) -> None:
    tokyo = timezone(timedelta(hours=9))
    start_in_tokyo = permit.valid_from.astimezone(tokyo)
    assert check_permit(document, trusted=[fi_key], now=start_in_tokyo)
    before = (permit.valid_from - timedelta(seconds=1)).astimezone(tokyo)
    assert _refusal(document, [fi_key], now=before).reason is PermitRefusal.NOT_YET_VALID
