"""The entry format: fields, canonical bytes, parsing errors that name the field, detail limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import rfc8785

from ehds.audit import (
    GENESIS_PREV,
    AuditEntry,
    AuditFormatError,
    AuditRef,
    format_time,
    json_digest,
    parse_time,
    payload_digest,
)
from ehds.audit.verify import _split
from ehds.core.errors import InputError
from ehds.core.signing import Signer, sha256_hex

HASH = "ab" * 32


def _entry(**changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "chain": "node node-fr",
        "seq": 3,
        "time": datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC),
        "actor": "researcher alice",
        "action": "study.submitted",
        "subject": "study 01J",
        "detail": {"study": "01J", "n": 2},
        "digest": "sha256:" + HASH,
        "prev": HASH,
        "key": HASH,
        "hash": HASH,
        "sig": "MEUCIQ==",
    }
    fields.update(changes)
    return AuditEntry(**fields)


def _signed(signer: Signer, **changes: Any) -> AuditEntry:
    draft = _entry(key=signer.key_id, **changes)
    body = draft.body_bytes()
    return _entry(key=signer.key_id, hash=sha256_hex(body), sig=signer.sign(body), **changes)


def test_body_is_the_canonical_entry_without_hash_and_sig() -> None:
    entry = _entry(anchor=AuditRef("coordinator coordinator", 12, HASH))
    full = json.loads(entry.canonical())
    assert full["hash"] == HASH
    assert full["sig"] == "MEUCIQ=="
    del full["hash"], full["sig"]
    assert entry.body_bytes() == rfc8785.dumps(full)
    assert full["time"] == "2026-11-25T10:00:00.123456Z"
    assert full["anchor"] == {"chain": "coordinator coordinator", "seq": 12, "hash": HASH}
    assert b"anchor" not in _entry().canonical()
    assert AuditEntry.parse(entry.canonical() + b"\n") == entry


def test_ref_round_trip_and_checks() -> None:
    ref = AuditRef("node node-fr", 7, HASH)
    assert AuditRef.from_json(ref.to_json()) == ref
    assert str(ref) == f"node node-fr#7 {HASH[:12]}"
    with pytest.raises(AuditFormatError, match=r"^anchor\.seq: must be an integer"):
        AuditRef.from_json({"chain": "c", "seq": "7", "hash": HASH}, "anchor")
    with pytest.raises(AuditFormatError, match="missing hash"):
        AuditRef.from_json({"chain": "c", "seq": 7})
    with pytest.raises(AuditFormatError, match="unknown 'x'"):
        AuditRef.from_json({"chain": "c", "seq": 7, "hash": HASH, "x": 1})
    with pytest.raises(AuditFormatError, match="hash: must be 64 lowercase hex"):
        AuditRef("c", 1, HASH.upper())
    with pytest.raises(AuditFormatError, match="seq: must be at least 1"):
        AuditRef("c", 0, HASH)
    assert issubclass(AuditFormatError, InputError)


def test_digests() -> None:
    assert payload_digest(b"abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert json_digest({"b": 1, "a": [1.0, "é"]}) == payload_digest('{"a":[1,"é"],"b":1}'.encode())


def test_times_are_utc_with_microseconds() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 11, 25, 11, 0, tzinfo=paris)) == (
        "2026-11-25T10:00:00.000000Z"
    )
    assert parse_time("2026-11-25T10:00:00.000001Z") == datetime(
        2026, 11, 25, 10, 0, 0, 1, tzinfo=UTC
    )
    with pytest.raises(AuditFormatError, match="naive"):
        format_time(datetime(2026, 11, 25))
    for text in (
        "2026-11-25T10:00:00Z",
        "2026-11-25T10:00:00.000000+00:00",
        "2026-13-25T10:00:00.000000Z",
    ):
        with pytest.raises(AuditFormatError, match=r"^time: "):
            parse_time(text)
    entry = _entry(time=datetime(2026, 11, 25, 11, 0, tzinfo=paris))
    assert entry.time == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert entry.time.tzinfo is UTC


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("prev"), r"^prev: missing$"),
        (lambda d: d.update(extra=1), r"^extra: unknown field$"),
        (lambda d: d.update(seq="3"), r"^seq: must be an integer$"),
        (lambda d: d.update(seq=True), r"^seq: must be an integer$"),
        (lambda d: d.update(v=2), r"^v: unsupported format version 2"),
        (lambda d: d.update(time="2026-11-25 10:00:00"), r"^time: "),
        (lambda d: d.update(actor=""), r"^actor: must not be empty$"),
        (lambda d: d.update(action="a" * 101), r"^action: longer than 100"),
        (lambda d: d.update(subject="x\ny"), r"^subject: contains a control character$"),
        (lambda d: d.update(digest="sha256:XYZ"), r"^digest: "),
        (lambda d: d.update(anchor=None), r"^anchor: must be left out"),
        (lambda d: d.update(anchor={"chain": "c", "seq": 0, "hash": HASH}), r"^anchor\.seq: "),
        (lambda d: d.update(key="k"), r"^key: must be 64 lowercase hex digits$"),
        (lambda d: d.update(sig="not base64!"), r"^sig: must be base64"),
        (lambda d: d.update(detail=[1]), r"^detail: must be a JSON object"),
    ],
)
def test_parse_names_the_bad_field(change: Any, message: str) -> None:
    document = json.loads(_entry().canonical())
    change(document)
    with pytest.raises(AuditFormatError, match=message):
        AuditEntry.parse(json.dumps(document).encode())


def test_parse_rejects_non_json() -> None:
    with pytest.raises(AuditFormatError, match=r"^not JSON"):
        AuditEntry.parse(b"{")
    with pytest.raises(AuditFormatError, match=r"^not UTF-8"):
        AuditEntry.parse(b'{"a":"\xff"}')
    with pytest.raises(AuditFormatError, match="NaN is not a JSON number"):
        AuditEntry.parse(b'{"a":NaN}')
    with pytest.raises(AuditFormatError, match="must be a JSON object"):
        AuditEntry.parse(b"[1]")


@pytest.mark.parametrize(
    ("detail", "message"),
    [
        ({"blob": b"bytes"}, r"^detail\.blob: bytes is not allowed"),
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, r"^detail\.when: datetime is not allowed"),
        ({"text": "x" * 1001}, r"^detail\.text: string longer than 1000"),
        ({"x" * 1001: 1}, r"^detail: a key is longer than 1000"),
        ({1: "a"}, r"^detail: keys must be strings"),
        ({"n": 2**53}, r"^detail\.n: integer outside"),
        ({"f": float("nan")}, r"^detail\.f: not a finite number"),
        (
            {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}},
            r"^detail\.a\.b\.c\.d\.e: nested deeper than 4",
        ),
        ({"ids": list(range(1001))}, r"^detail\.ids\[999\]: detail holds more than 1000"),
        ({"s": "\ud800"}, r"non-UTF-8|not canonicalisable"),
    ],
)
def test_detail_limits(detail: dict[str, Any], message: str) -> None:
    with pytest.raises(AuditFormatError, match=message):
        _entry(detail=detail).body_bytes()


def test_detail_accepts_small_json() -> None:
    detail = {
        "ids": ["a", "b"],
        "state": None,
        "ok": True,
        "share": 0.25,
        "n": -(2**53 - 1),
        "nested": {"a": {"b": {"c": [1]}}},
        "versions": ("1.0.0",),
    }
    entry = _entry(detail=detail)
    assert entry.detail["versions"] == ["1.0.0"]
    assert AuditEntry.parse(entry.canonical()) == entry


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"anchor": AuditRef("coordinator coordinator", 1, HASH)},
        {"subject": 'a,"hash":"' + HASH + '",\\'},
        {"detail": {"hash": HASH, "sig": "AA==", "x": ',"sig":"AA=="'}},
        {"subject": "Hôpital ✓", "detail": {"é": 1e21, "z": 0.1, "\u2028": "\u007f"}},
        {"prev": GENESIS_PREV, "seq": 1},
    ],
)
def test_fast_split_gives_the_canonical_body(changes: dict[str, Any]) -> None:
    signer = Signer.from_pem(_TEST_KEY)
    entry = _signed(signer, **changes)
    split = _split(entry.canonical())
    assert split == (entry.body_bytes(), entry.hash, entry.sig)


_TEST_KEY = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgyfFXE0ciFpF0Whfu
PMwMQ5QsoHM9YcPyaWFKLoxTP+ehRANCAARGDr/oDUMuXhd47a4+XrIdx0buZZjf
F7XTaFYTDgPZJ1hjFsaEaZJKqVbuuaxv0XYmATP00PBqOwA5+miWgkYP
-----END PRIVATE KEY-----
"""
