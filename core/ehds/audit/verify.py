"""Verification of an exported (or stored) chain, and the anchors other chains hold about it.

What a chain proves on its own: every entry's hash matches its content (no entry modified),
each entry names the previous entry's hash and the seqs are consecutive from 1 (none deleted,
inserted or reordered), and, given the signers' public keys, every entry is signed by a known
key. What it cannot prove on its own is that its TAIL is complete: whoever controls the
database can drop the last entries and the rest still verifies. Anchors close that gap: the
coordinator records the nodes' heads in its own chain and the nodes record the coordinator's
refs in theirs, so an anchor with a seq beyond the chain's end shows a truncation, and an
anchor whose hash differs shows a rewritten chain.

Only the FIRST problem (by seq) is reported: after it, nothing later can be trusted anyway.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from ehds.audit.entry import GENESIS_PREV, AuditEntry, AuditFormatError, AuditRef
from ehds.audit.signature_batches import SignatureBatches, SignatureCheck
from ehds.core.signing import sha256_hex

__all__ = ["VerifyReport", "anchors_for", "verify_lines"]

_HASH_MARK: Final = b',"hash":"'
_SIG_MARK: Final = b',"sig":"'


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_lines`; ``problem`` names the first bad entry by seq."""

    ok: bool
    chain: str | None
    entries: int
    head: AuditRef | None
    bad_seq: int | None
    problem: str | None
    anchors_checked: int
    signatures_checked: int

    def summary(self) -> str:
        """One line for people: the ``ehds audit verify`` output."""
        chain = self.chain or "-"
        if not self.ok:
            return f"audit chain {chain}: FAILED: {self.problem}"
        head = f"{self.head.seq} {self.head.hash[:12]}" if self.head else "-"
        return (
            f"audit chain {chain}: {self.entries} entries, head {head}, "
            f"{self.anchors_checked} anchors checked: OK"
        )


class _BadEntryError(Exception):
    """Stops the scan at the first bad entry."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.line = math.inf  # the line where it was found; inf: after the last (truncation)
        self.message = message


def _split(line: bytes) -> tuple[bytes, str, str] | None:
    """(body bytes, hash, sig) cut out of a canonical line, or None if it has another shape.

    In canonical order ``hash`` comes after ``detail``/``anchor`` and is followed only by
    plain strings and integers, and likewise ``sig``; inside a JSON string every quote is
    escaped, so the last ``,"hash":"`` and ``,"sig":"`` are the top-level members. Removing
    them leaves the canonical body, without re-serialising the entry (RFC 8785 in Python
    costs ~20 µs an entry). Any doubt falls back to re-serialising (see ``_body``).
    """
    h = line.rfind(_HASH_MARK)
    s = line.rfind(_SIG_MARK)
    if h < 0 or s < h:
        return None
    h_value = h + len(_HASH_MARK)
    h_end = h_value + 64
    s_value = s + len(_SIG_MARK)
    s_end = line.find(b'"', s_value)
    if line[h_end : h_end + 1] != b'"' or s_end < 0:
        return None
    body = line[:h] + line[h_end + 1 : s] + line[s_end + 1 :]
    return (
        body,
        line[h_value:h_end].decode("ascii", "replace"),
        line[s_value:s_end].decode("ascii", "replace"),
    )


def _body(line: bytes, entry: AuditEntry) -> bytes | None:
    """The entry's body bytes if they hash to ``entry.hash``, else None (modified)."""
    split = _split(line)
    if split is not None:
        body, entry_hash, sig = split
        if entry_hash == entry.hash and sig == entry.sig and sha256_hex(body) == entry.hash:
            return body
    body = entry.body_bytes()
    return body if sha256_hex(body) == entry.hash else None


class _Scan:
    """The sequential checks, one entry at a time (signatures go to ``SignatureBatches``)."""

    def __init__(
        self,
        keys: Mapping[str, EllipticCurvePublicKey] | None,
        anchors: Iterable[AuditRef],
        chain: str | None,
        partial: bool,
    ) -> None:
        self.keys = keys
        self.chain = chain
        self.partial = partial
        self.by_chain: dict[str, dict[int, list[AuditRef]]] = defaultdict(lambda: defaultdict(list))
        for anchor in anchors:
            self.by_chain[anchor.chain][anchor.seq].append(anchor)
        self.first_seq: int | None = None
        self.head: tuple[int, str] | None = None  # (seq, hash) of the last good entry
        self.entries = 0
        self.anchors_checked = 0
        self.line: int | None = None

    def entry(self, line: bytes, number: int, signatures: SignatureBatches | None) -> bool:
        self.line = number
        expected = 1 if self.head is None else self.head[0] + 1
        try:
            entry = AuditEntry.parse(line)
        except AuditFormatError as exc:
            raise _BadEntryError(
                expected, f"entry {expected} (line {number}): malformed: {exc}"
            ) from None
        seq = entry.seq
        if self.chain is None:
            self.chain = entry.chain
        elif entry.chain != self.chain:
            raise _BadEntryError(
                seq,
                f"entry {seq} (line {number}): belongs to chain {entry.chain!r}, "
                f"not {self.chain!r} (inserted)",
            )
        self._check_seq(seq, expected)
        body = _body(line, entry)
        if body is None:
            raise _BadEntryError(seq, f"entry {seq}: hash does not match its content (modified)")
        if self.head is not None and entry.prev != self.head[1]:
            raise _BadEntryError(
                seq,
                f"entry {seq}: prev is not the hash of entry {seq - 1} "
                "(an entry was modified, deleted or inserted)",
            )
        if self.head is None and not self.partial and entry.prev != GENESIS_PREV:
            raise _BadEntryError(
                seq, f"entry {seq}: prev of the first entry is not 64 zeros (modified)"
            )
        if self.keys is not None and entry.key not in self.keys:
            raise _BadEntryError(
                seq, f"entry {seq}: signed by an unknown key {entry.key[:12]} (unknown key)"
            )
        for anchor in self.by_chain.get(entry.chain, {}).get(seq, ()):
            if anchor.hash != entry.hash:
                raise _BadEntryError(
                    seq,
                    f"entry {seq}: hash {entry.hash[:12]} differs from the hash "
                    f"{anchor.hash[:12]} another chain anchored (anchor mismatch)",
                )
            self.anchors_checked += 1
        if self.first_seq is None:
            self.first_seq = seq
        self.head = (seq, entry.hash)
        self.entries += 1
        if signatures is None:
            return True
        return signatures.add(SignatureCheck(number, seq, entry.key, body, entry.sig, entry.prev))

    def _check_seq(self, seq: int, expected: int) -> None:
        if self.head is None:
            if seq != 1 and not self.partial:
                raise _BadEntryError(
                    1, f"entry 1: missing: the chain starts at entry {seq} (deleted)"
                )
            return
        if seq == expected:
            return
        if seq > expected:
            raise _BadEntryError(
                expected,
                f"entry {expected}: missing: entry {seq} follows entry {expected - 1} "
                "(deleted or reordered)",
            )
        if seq == expected - 1:
            raise _BadEntryError(seq, f"entry {seq}: appears twice (inserted)")
        raise _BadEntryError(
            seq, f"entry {seq}: out of order after entry {expected - 1} (inserted or reordered)"
        )

    def end(self) -> None:
        """Truncation: an anchor about this chain beyond its last entry."""
        if self.chain is None:
            return
        last = 0 if self.head is None else self.head[0]
        beyond = [seq for seq in self.by_chain.get(self.chain, {}) if seq > last]
        if beyond:
            ends = f"ends at entry {last}" if last else "is empty"
            raise _BadEntryError(
                last + 1,
                f"entry {last + 1}: missing: the chain {ends} but another chain anchored "
                f"entry {max(beyond)} (truncated)",
            )


def verify_lines(
    lines: Iterable[bytes],
    *,
    keys: Mapping[str, EllipticCurvePublicKey] | None = None,
    anchors: Iterable[AuditRef] = (),
    chain: str | None = None,
    partial: bool = False,
) -> VerifyReport:
    """Check a chain given as its JSONL lines (trailing newlines and blank lines are ignored).

    ``keys`` maps key ids to the signers' public keys: with it every signature is checked and
    an entry by any other key is a problem; without it signatures are not checked. ``anchors``
    are refs other chains recorded (see :func:`anchors_for`); those about other chains are
    ignored. ``chain``: the expected chain name (an empty chain is then still checked against
    the anchors). ``partial``: the lines are a contiguous piece that need not start at entry 1
    (an export ``--since``); its first ``prev`` and anchors before it cannot be checked.
    """
    scan = _Scan(keys, anchors, chain, partial)
    problem: _BadEntryError | None = None
    with SignatureBatches(keys or {}) as signatures:
        try:
            for number, raw in enumerate(lines, start=1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if not scan.entry(line, number, signatures if keys is not None else None):
                    break
            else:
                scan.line = None
                scan.end()
        except _BadEntryError as found:
            problem = found
            if scan.line is not None:
                problem.line = scan.line
        failed = signatures.finish()
        if failed is not None and (problem is None or failed.line < problem.line):
            problem = _BadEntryError(
                failed.seq,
                f"entry {failed.seq}: signature does not verify with key {failed.key[:12]} "
                "(bad signature)",
            )
            head_seq = failed.seq - 1
            scan.head = (
                (head_seq, failed.prev)
                if scan.first_seq is not None and head_seq >= scan.first_seq
                else None
            )
            scan.entries = 0 if scan.first_seq is None else failed.seq - scan.first_seq
    return VerifyReport(
        ok=problem is None,
        chain=scan.chain,
        entries=scan.entries,
        head=None if scan.head is None else AuditRef(scan.chain or "-", *scan.head),
        bad_seq=None if problem is None else problem.seq,
        problem=None if problem is None else problem.message,
        anchors_checked=scan.anchors_checked,
        signatures_checked=signatures.checked,
    )


def anchors_for(lines: Iterable[bytes], chain: str) -> list[AuditRef]:
    """The anchors about ``chain`` that the entries of another chain recorded, in order."""
    found: list[AuditRef] = []
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        entry = AuditEntry.parse(line)
        if entry.anchor is not None and entry.anchor.chain == chain:
            found.append(entry.anchor)
    return found
