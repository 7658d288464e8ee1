"""verify_lines: every kind of damage is named, at the right seq; anchors expose truncation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import rfc8785
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from ehds.audit import AuditEntry, AuditLog, AuditRef, anchors_for, audit_table, verify_lines
from ehds.audit.signature_batches import BATCH_SIZE
from ehds.core.signing import Signer, sha256_hex

CHAIN = "node node-fr"
Build = Callable[..., list[bytes]]


@pytest.fixture
def memory_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://")
    metadata = sa.MetaData()
    audit_table(metadata)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def build(memory_engine: sa.Engine, signer: Signer) -> Build:
    """``build(n, chain=..., key=..., anchors={seq: ref})``: a fresh chain's lines."""

    def run(
        count: int,
        chain: str = CHAIN,
        key: Signer | None = None,
        anchors: dict[int, AuditRef] | None = None,
    ) -> list[bytes]:
        table = audit_table(sa.MetaData())
        log = AuditLog(table, key or signer, chain)
        with memory_engine.begin() as conn:
            conn.execute(table.delete())
            for seq in range(1, count + 1):
                log.append(
                    conn,
                    actor="researcher alice",
                    action="task.dispatched",
                    subject=f"task t{seq}",
                    detail={"task": f"t{seq}", "attempt": 1},
                    anchor=(anchors or {}).get(seq),
                )
        with memory_engine.connect() as conn:
            return list(log.lines(conn))

    return run


def _keys(*signers: Signer) -> dict[str, EllipticCurvePublicKey]:
    return {signer.key_id: signer.public_key for signer in signers}


def _edit(line: bytes, change: Callable[[dict[str, Any]], None], *, rehash: bool = False) -> bytes:
    document = json.loads(line)
    change(document)
    if rehash:
        body = {k: v for k, v in document.items() if k not in ("hash", "sig")}
        document["hash"] = sha256_hex(rfc8785.dumps(body))
    return rfc8785.dumps(document)


def _bad(lines: list[bytes], seq: int, kind: str, **options: Any) -> str:
    report = verify_lines(lines, **options)
    assert not report.ok
    assert report.bad_seq == seq, report.problem
    assert report.problem is not None
    assert report.problem.startswith(f"entry {seq}")
    assert report.problem.endswith(f"({kind})"), report.problem
    return report.problem


def test_an_intact_chain_verifies(build: Build, signer: Signer) -> None:
    lines = build(10)
    report = verify_lines((line + b"\n" for line in lines), keys=_keys(signer))
    assert report.ok
    assert report.problem is None
    assert report.bad_seq is None
    assert report.chain == CHAIN
    assert report.entries == 10
    assert report.signatures_checked == 10
    assert report.head == AuditEntry.parse(lines[-1]).ref
    assert report.summary() == (
        f"audit chain {CHAIN}: 10 entries, head 10 {report.head.hash[:12]}, 0 anchors checked: OK"
    )
    unsigned = verify_lines(lines)
    assert unsigned.ok
    assert unsigned.signatures_checked == 0


def test_blank_lines_crlf_and_reformatted_lines_are_read(build: Build, signer: Signer) -> None:
    lines = build(3)
    pretty = json.dumps(json.loads(lines[1]), indent=None, separators=(", ", ": ")).encode()
    report = verify_lines([lines[0] + b"\r\n", b"\n", pretty + b"\n", lines[2]], keys=_keys(signer))
    assert report.ok, report.problem
    assert report.entries == 3


def test_modified(build: Build, signer: Signer) -> None:
    lines = build(10)
    lines[3] = _edit(lines[3], lambda d: d["detail"].update(attempt=2))
    problem = _bad(lines, 4, "modified", keys=_keys(signer))
    assert problem == "entry 4: hash does not match its content (modified)"
    _bad(lines, 4, "modified")


def test_modified_and_rehashed(build: Build, signer: Signer) -> None:
    lines = build(10)
    lines[3] = _edit(lines[3], lambda d: d.update(actor="researcher mallory"), rehash=True)
    # Without the signer's key, the next entry's link shows it; with it, the signature.
    problem = _bad(lines, 5, "an entry was modified, deleted or inserted")
    assert problem.startswith("entry 5: prev is not the hash of entry 4")
    _bad(lines, 4, "bad signature", keys=_keys(signer))


def test_deleted(build: Build) -> None:
    lines = build(10)
    del lines[3]
    problem = _bad(lines, 4, "deleted or reordered")
    assert problem == "entry 4: missing: entry 5 follows entry 3 (deleted or reordered)"


def test_reordered(build: Build) -> None:
    lines = build(10)
    lines[3], lines[4] = lines[4], lines[3]
    _bad(lines, 4, "deleted or reordered")


def test_inserted_twice_and_out_of_order(build: Build) -> None:
    lines = build(10)
    problem = _bad([*lines[:4], lines[3], *lines[4:]], 4, "inserted")
    assert problem == "entry 4: appears twice (inserted)"
    problem = _bad([*lines[:6], lines[1], *lines[6:]], 2, "inserted or reordered")
    assert problem == "entry 2: out of order after entry 6 (inserted or reordered)"


def test_inserted_from_another_chain(build: Build) -> None:
    other = build(4, chain="node node-fi")
    lines = build(10)
    problem = _bad([*lines[:3], other[3], *lines[4:]], 4, "inserted")
    assert "belongs to chain 'node node-fi', not 'node node-fr'" in problem
    _bad(lines, 1, "inserted", chain="node node-fi")


def test_forged_entry_with_a_recomputed_link(build: Build, signer: Signer) -> None:
    """A forger recomputes hashes but cannot sign: only the signature check catches it."""
    lines = build(3)
    last = json.loads(lines[-1])
    forged = dict(last, seq=4, prev=last["hash"], action="study.completed")
    body = {k: v for k, v in forged.items() if k not in ("hash", "sig")}
    forged["hash"] = sha256_hex(rfc8785.dumps(body))
    lines.append(rfc8785.dumps(forged))
    assert verify_lines(lines).ok
    _bad(lines, 4, "bad signature", keys=_keys(signer))


def test_cut_at_the_start(build: Build) -> None:
    lines = build(10)
    problem = _bad(lines[1:], 1, "deleted")
    assert problem == "entry 1: missing: the chain starts at entry 2 (deleted)"
    piece = verify_lines(lines[4:], partial=True)
    assert piece.ok
    assert piece.entries == 6
    lines[0] = _edit(lines[0], lambda d: d.update(prev="1" * 64), rehash=True)
    _bad(lines, 1, "modified")


def test_truncated_tail_is_found_by_an_anchor(build: Build) -> None:
    lines = build(10)
    anchor = AuditEntry.parse(lines[8]).ref
    assert verify_lines(lines, anchors=[anchor]).anchors_checked == 1
    problem = _bad(lines[:7], 8, "truncated", anchors=[anchor])
    assert problem == (
        "entry 8: missing: the chain ends at entry 7 but another chain anchored entry 9 (truncated)"
    )
    # Anchors about other chains are not this chain's business.
    other = AuditRef("node node-fi", 99, "0" * 64)
    assert verify_lines(lines[:7], anchors=[other]).ok


def test_an_emptied_chain_is_found_when_its_name_is_known(build: Build) -> None:
    anchor = AuditEntry.parse(build(2)[1]).ref
    empty = verify_lines([])
    assert empty.ok
    assert empty.summary() == "audit chain -: 0 entries, head -, 0 anchors checked: OK"
    problem = _bad([], 1, "truncated", anchors=[anchor], chain=CHAIN)
    assert "the chain is empty" in problem


def test_anchor_mismatch(build: Build) -> None:
    lines = build(10)
    seen = AuditEntry.parse(lines[4]).ref
    rewritten = AuditRef(seen.chain, seen.seq, "f" * 64)
    problem = _bad(lines, 5, "anchor mismatch", anchors=[rewritten])
    assert problem.startswith(f"entry 5: hash {seen.hash[:12]} differs from the hash ffffffffffff")


def test_unknown_key(build: Build, signer: Signer, other_signer: Signer) -> None:
    lines = build(3)
    problem = _bad(lines, 1, "unknown key", keys=_keys(other_signer))
    assert problem == f"entry 1: signed by an unknown key {signer.key_id[:12]} (unknown key)"
    assert verify_lines(lines, keys=_keys(other_signer, signer)).ok


def test_renewed_key_mid_chain(signer: Signer, other_signer: Signer) -> None:
    table = audit_table(sa.MetaData())
    engine = sa.create_engine("sqlite://")
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        AuditLog(table, signer, CHAIN).append(conn, actor="a", action="x")
        AuditLog(table, other_signer, CHAIN).append(conn, actor="a", action="y")
    with engine.connect() as conn:
        mixed = list(AuditLog(table, signer, CHAIN).lines(conn))
    engine.dispose()
    assert verify_lines(mixed, keys=_keys(signer, other_signer)).ok
    _bad(mixed, 2, "unknown key", keys=_keys(signer))


def test_bad_signature(build: Build, signer: Signer) -> None:
    lines = build(10)
    sig_of_7 = json.loads(lines[6])["sig"]
    lines[5] = _edit(lines[5], lambda d: d.update(sig=sig_of_7))
    problem = _bad(lines, 6, "bad signature", keys=_keys(signer))
    assert problem == (
        f"entry 6: signature does not verify with key {signer.key_id[:12]} (bad signature)"
    )
    report = verify_lines(lines, keys=_keys(signer))
    assert report.head == AuditEntry.parse(lines[4]).ref
    assert report.entries == 5
    assert verify_lines(lines).ok  # the content itself is intact


def test_the_first_problem_wins_over_a_long_chain(build: Build, signer: Signer) -> None:
    count = 3 * BATCH_SIZE + 10
    lines = build(count)
    bad_sig = BATCH_SIZE + 7
    lines[bad_sig - 1] = _edit(
        lines[bad_sig - 1], lambda d: d.update(sig=json.loads(lines[0])["sig"])
    )
    lines[count - 5] = _edit(lines[count - 5], lambda d: d.update(subject="x"))
    _bad(lines, bad_sig, "bad signature", keys=_keys(signer))
    _bad(lines, count - 4, "modified")
    # A structural problem before a signature problem is the one reported.
    lines[10] = _edit(lines[10], lambda d: d.update(subject="x"))
    _bad(lines, 11, "modified", keys=_keys(signer))


def test_malformed_line(build: Build) -> None:
    lines = build(5)
    lines[2] = b'{"not": "an entry"'
    problem = verify_lines(lines).problem
    assert problem is not None
    assert problem.startswith("entry 3 (line 3): malformed: not JSON")
    lines[2] = _edit(build(5)[2], lambda d: d.pop("key"))
    assert verify_lines(lines).problem == "entry 3 (line 3): malformed: key: missing"


def test_anchors_for(build: Build, signer: Signer) -> None:
    node_lines = build(6)
    heads = [AuditEntry.parse(node_lines[i]).ref for i in (1, 5)]
    coordinator = build(
        4,
        chain="coordinator coordinator",
        anchors={2: heads[0], 4: heads[1]},
    )
    assert anchors_for(coordinator, CHAIN) == heads
    assert anchors_for(coordinator, "node node-fi") == []
    report = verify_lines(node_lines, anchors=anchors_for(coordinator, CHAIN))
    assert report.ok
    assert report.anchors_checked == 2
    _bad(node_lines[:4], 5, "truncated", anchors=anchors_for(coordinator, CHAIN))
