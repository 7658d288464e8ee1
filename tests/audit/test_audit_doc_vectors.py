"""docs/audit.md publishes the format's test vectors: they must hold for the library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ehds.audit import GENESIS_PREV, AuditEntry, verify_lines
from ehds.core.signing import Signer, key_id, load_public_key, sha256_hex, verify_signature

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
VECTOR = re.compile(r"<!-- vector: ([a-z0-9-]+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def vectors() -> dict[str, str]:
    found = dict(VECTOR.findall(DOC.read_text(encoding="utf-8")))
    expected = {"private-key", "public-key", "key-id"} | {
        f"{kind}-{n}" for kind in ("line", "body", "hash") for n in (1, 2, 3)
    }
    assert set(found) == expected
    return found


def test_the_key(vectors: dict[str, str]) -> None:
    signer = Signer.from_pem(vectors["private-key"].encode())
    public = load_public_key(vectors["public-key"].encode())
    assert signer.key_id == key_id(public) == vectors["key-id"]
    assert (
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == (vectors["public-key"] + "\n").encode()
    )


def test_the_entries(vectors: dict[str, str]) -> None:
    public = load_public_key(vectors["public-key"].encode())
    lines = [vectors[f"line-{n}"].encode() for n in (1, 2, 3)]
    entries = [AuditEntry.parse(line) for line in lines]
    for n, (line, entry) in enumerate(zip(lines, entries, strict=True), start=1):
        body = vectors[f"body-{n}"].encode()
        assert entry.canonical() == line  # each line is canonical
        assert entry.body_bytes() == body
        assert sha256_hex(body) == vectors[f"hash-{n}"] == entry.hash
        assert verify_signature(public, body, entry.sig)
        assert entry.key == vectors["key-id"]
        assert entry.seq == n
    assert entries[0].prev == GENESIS_PREV
    assert entries[1].anchor is not None
    assert entries[2].prev == entries[1].hash
    assert "é" in lines[2].decode("utf-8")  # UTF-8 as such, not escaped
    report = verify_lines(lines, keys={vectors["key-id"]: public})
    assert report.ok, report.problem
    assert report.signatures_checked == 3


def test_the_actions_table_lists_the_vectors_actions(vectors: dict[str, str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    for n in (1, 2, 3):
        action = AuditEntry.parse(vectors[f"line-{n}"].encode()).action
        assert f"`{action}`" in text.split("## Actions", 1)[1]
