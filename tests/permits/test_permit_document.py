"""The signed document: what `issue_permit` writes and what `parse_permit` accepts."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.core.signing import Signer
from ehds.permits import FORMAT, HdabKeyError, Permit, PermitFormatError, issue_permit, parse_permit


def test_issued_document_is_checkable_without_our_code(
    document: bytes, fi_signer: Signer, permit: Permit
) -> None:
    data = json.loads(document)
    assert data["format"] == "ehds-data-permit/1" == FORMAT
    assert data["permit"]["id"] == "FI-2026-042"
    assert data["permit"]["issued_at"] == "2026-11-20T09:30:00Z"
    assert data["signature"]["alg"] == "ES256"
    assert data["signature"]["key"] == fi_signer.key_id
    # RFC 8785 of the permit object, ECDSA-SHA256, DER, base64: standard tools only
    signed = rfc8785.dumps(data["permit"])
    raw = base64.b64decode(data["signature"]["value"])
    fi_signer.public_key.verify(raw, signed, ec.ECDSA(hashes.SHA256()))


def test_parse_round_trip(document: bytes, fi_signer: Signer, permit: Permit) -> None:
    signed = parse_permit(document)
    assert signed.permit == permit
    assert signed.key_id == fi_signer.key_id
    assert signed.document == document
    assert signed.digest == hashlib.sha256(document).hexdigest()
    assert signed.signed_bytes == rfc8785.dumps(permit.to_json())


def test_issuing_refuses_a_key_other_than_p256(permit: Permit) -> None:
    with pytest.raises(HdabKeyError, match="P-256"):
        issue_permit(Signer(ec.generate_private_key(ec.SECP384R1())), permit)


def _edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def apply(document: bytes) -> bytes:
        data = json.loads(document)
        edit(data)
        return json.dumps(data).encode()

    return apply


def _set(path: str, value: Any) -> Callable[[bytes], bytes]:
    *parents, last = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        for name in parents:
            data = data[name]
        data[last] = value

    return _edit(edit)


def _drop(path: str) -> Callable[[bytes], bytes]:
    *parents, last = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        for name in parents:
            data = data[name]
        del data[last]

    return _edit(edit)


def _raw(text: bytes) -> Callable[[bytes], bytes]:
    return lambda _document: text


MALFORMED: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("latin-1", lambda d: d.replace(b"Incidence", b"Inc\xefdence"), "not UTF-8"),
    ("not json", _raw(b"FI-2026-042, valid until 2027"), "not valid JSON"),
    ("array", _raw(b"[]"), "must be a JSON object"),
    ("nan", lambda d: d.replace(b'"format"', b'"x": NaN, "format"'), "not valid JSON"),
    (
        "duplicate key",
        lambda d: d.replace(b'"holders": [', b'"holders": ["mallory"], "holders": ['),
        "repeats a key",
    ),
    ("too big", lambda d: d + b" " * (1024 * 1024), "larger than"),
    ("no format", _drop("format"), "format: required"),
    ("other format", _set("format", "ehds-data-permit/2"), "format: must be"),
    ("extra top-level", _set("comment", "hi"), "unknown top-level field"),
    ("no permit", _drop("permit"), "permit: required"),
    ("permit not object", _set("permit", []), "permit: must be a JSON object"),
    ("missing field", _drop("permit.purpose"), "permit.purpose: required"),
    ("unknown field", _set("permit.scope", "all"), "permit: unknown field"),
    ("id type", _set("permit.id", 42), "permit.id: must be a string"),
    ("bad id", _set("permit.id", "FI 2026/042"), "permit.id: not a permit id"),
    ("holders type", _set("permit.holders", "alice"), "permit.holders: must be a list"),
    ("holder type", _set("permit.holders", ["alice", 7]), "permit.holders[1]"),
    ("no holders", _set("permit.holders", []), "permit.holders: must name"),
    ("bad node", _set("permit.nodes", ["Node FR"]), "permit.nodes[0]"),
    ("versioned", _set("permit.analyses", ["counts 1.0.0"]), "permit.analyses[0]"),
    ("naive time", _set("permit.valid_from", "2026-11-25T00:00:00"), "permit.valid_from"),
    ("date only", _set("permit.valid_until", "2027-11-25"), "permit.valid_until"),
    ("reversed", _set("permit.valid_until", "2026-01-01T00:00:00Z"), "permit.valid_until"),
    ("control", _set("permit.purpose", "Study\x1b[2J"), "permit.purpose: contains control"),
    (
        "lone surrogate",
        lambda d: d.replace(b'"purpose": "', b'"purpose": "\\ud800'),
        "permit.purpose: not valid Unicode",
    ),
    ("no signature", _drop("signature"), "signature: required"),
    ("signature type", _set("signature", "abc"), "signature: must be a JSON object"),
    ("alg", _set("signature.alg", "RS256"), "signature.alg: must be 'ES256'"),
    ("key id", _set("signature.key", "fi-hdab"), "signature.key: not a key id"),
    ("key missing", _drop("signature.key"), "signature.key: required"),
    ("value", _set("signature.value", "not base64!"), "signature.value: not a base64"),
    ("value type", _set("signature.value", None), "signature.value: must be a string"),
    ("extra sig", _set("signature.x5c", "..."), "signature: unknown field"),
]


@pytest.mark.parametrize(
    ("mutate", "problem"), [(m, p) for _, m, p in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_documents_name_the_field_and_source(
    document: bytes, mutate: Callable[[bytes], bytes], problem: str
) -> None:
    with pytest.raises(PermitFormatError) as caught:
        parse_permit(mutate(document), source="permits/fi-042.json")
    message = str(caught.value)
    assert message.startswith("permits/fi-042.json: ")
    assert problem in message
    assert "mallory" not in message


def test_formatting_does_not_matter(document: bytes, permit: Permit) -> None:
    data = json.loads(document)
    compact = json.dumps(
        {"signature": data["signature"], "permit": data["permit"], "format": data["format"]},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    assert parse_permit(compact).permit == permit
    assert parse_permit(compact).signed_bytes == parse_permit(document).signed_bytes


def test_non_ascii_text_and_escapes(fi_signer: Signer, permit: Permit) -> None:
    accented = dataclasses.replace(permit, purpose="Étude du diabète,\n糖尿病\tincidence")
    document = issue_permit(fi_signer, accented)
    assert "Étude".encode() in document  # written as UTF-8, not escaped
    escaped = json.dumps(json.loads(document), ensure_ascii=True).encode()
    assert b"\\u00c9tude" in escaped
    assert parse_permit(escaped).signed_bytes == parse_permit(document).signed_bytes
    assert parse_permit(escaped).permit == accented
