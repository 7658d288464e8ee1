"""One audit entry: its fields, its canonical line, its hash and what is signed.

An entry is a JSON object stored and exported as its RFC 8785 canonical bytes (one JSONL
line). ``hash`` is the SHA-256 of the canonical bytes of the entry WITHOUT ``hash`` and
``sig`` (the *body*), and ``sig`` is the ECDSA-SHA256 signature of the same body bytes, so an
auditor recomputes both with any RFC 8785 library, ``sha256sum`` and ``openssl`` (see
docs/audit.md). ``prev`` is the previous entry's hash: the body of each entry commits to the
whole chain before it.

Times are UTC with microseconds and ``Z``, always in the same shape, so that their text sorts
chronologically (the table's ``time`` column and ``--since`` rely on it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ehds.audit.detail import AuditFormatError, check_detail
from ehds.core.signing import SignatureFormatError, canonical_bytes, sha256_hex

__all__ = [
    "FORMAT_VERSION",
    "GENESIS_PREV",
    "AuditEntry",
    "AuditFormatError",
    "AuditRef",
    "format_time",
    "json_digest",
    "parse_time",
    "payload_digest",
]

FORMAT_VERSION: Final = 1
GENESIS_PREV: Final = "0" * 64
"""``prev`` of entry 1: there is no previous entry."""

MAX_CHAIN: Final = 200
MAX_ACTOR: Final = 300
MAX_ACTION: Final = 100
MAX_SUBJECT: Final = 300
MAX_SIG: Final = 200

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_REQUIRED: Final = frozenset(
    {
        "v",
        "chain",
        "seq",
        "time",
        "actor",
        "action",
        "subject",
        "detail",
        "digest",
        "prev",
        "key",
        "hash",
        "sig",
    }
)
_OPTIONAL: Final = frozenset({"anchor"})


def payload_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``: how an entry refers to a payload it must not contain."""
    return "sha256:" + sha256_hex(data)


def json_digest(document: Any) -> str:
    """:func:`payload_digest` of the RFC 8785 canonical bytes of ``document``."""
    return payload_digest(canonical_bytes(document))


def format_time(value: datetime) -> str:
    """``2026-11-25T10:00:00.123456Z``: UTC, always six fractional digits."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise AuditFormatError("time: a naive datetime (audit times are aware, in UTC)")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_time(text: str, field: str = "time") -> datetime:
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise AuditFormatError(f"{field}: not a UTC time like 2026-11-25T10:00:00.123456Z")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise AuditFormatError(f"{field}: not a valid date and time") from None


def _text(value: Any, field: str, *, max_length: int, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise AuditFormatError(f"{field}: must be a string, not {type(value).__name__}")
    if not value and not empty:
        raise AuditFormatError(f"{field}: must not be empty")
    if len(value) > max_length:
        raise AuditFormatError(f"{field}: longer than {max_length} characters")
    if _CONTROL.search(value):
        raise AuditFormatError(f"{field}: contains a control character")
    return value


def _hex64(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise AuditFormatError(f"{field}: must be 64 lowercase hex digits")
    return value


def _seq(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AuditFormatError(f"{field}: must be an integer")
    if not 1 <= value <= 2**53 - 1:
        raise AuditFormatError(f"{field}: must be at least 1")
    return value


@dataclass(frozen=True)
class AuditRef:
    """A position in a chain: the entry ``seq`` of ``chain``, whose hash is ``hash``.

    Another chain records refs as anchors; a ref is also what the node and the coordinator
    exchange as an audit head.
    """

    chain: str
    seq: int
    hash: str

    def __post_init__(self) -> None:
        _text(self.chain, "chain", max_length=MAX_CHAIN)
        _seq(self.seq, "seq")
        _hex64(self.hash, "hash")

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "hash": self.hash}

    @classmethod
    def from_json(cls, document: Any, field: str = "ref") -> AuditRef:
        if not isinstance(document, dict):
            raise AuditFormatError(f"{field}: must be a JSON object")
        keys = set(document)
        if keys != {"chain", "seq", "hash"}:
            missing = sorted({"chain", "seq", "hash"} - keys)
            unknown = sorted(keys - {"chain", "seq", "hash"})
            problem = f"missing {', '.join(missing)}" if missing else f"unknown {unknown[0]!r}"
            raise AuditFormatError(f"{field}: {problem}")
        try:
            return cls(document["chain"], document["seq"], document["hash"])
        except AuditFormatError as exc:
            raise AuditFormatError(f"{field}.{exc}") from None

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.hash[:12]}"


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """One entry of a chain; construction validates every field (see :meth:`parse`)."""

    v: int = FORMAT_VERSION
    chain: str
    seq: int
    time: datetime
    actor: str
    action: str
    subject: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    anchor: AuditRef | None = None
    prev: str
    key: str
    hash: str
    sig: str

    def __post_init__(self) -> None:
        if self.v != FORMAT_VERSION or isinstance(self.v, bool):
            raise AuditFormatError(f"v: unsupported format version {self.v!r} (expected 1)")
        _text(self.chain, "chain", max_length=MAX_CHAIN)
        _seq(self.seq, "seq")
        if not isinstance(self.time, datetime):
            raise AuditFormatError("time: must be a datetime")
        if self.time.tzinfo is not UTC:
            format_time(self.time)  # refuses a naive time
            object.__setattr__(self, "time", self.time.astimezone(UTC))
        _text(self.actor, "actor", max_length=MAX_ACTOR)
        _text(self.action, "action", max_length=MAX_ACTION)
        _text(self.subject, "subject", max_length=MAX_SUBJECT, empty=True)
        object.__setattr__(self, "detail", check_detail(self.detail))
        if not isinstance(self.digest, str) or (self.digest and not _DIGEST.fullmatch(self.digest)):
            raise AuditFormatError('digest: must be "" or "sha256:" and 64 lowercase hex digits')
        if self.anchor is not None and not isinstance(self.anchor, AuditRef):
            raise AuditFormatError("anchor: must be an AuditRef")
        _hex64(self.prev, "prev")
        _hex64(self.key, "key")
        _hex64(self.hash, "hash")
        if (
            not isinstance(self.sig, str)
            or len(self.sig) > MAX_SIG
            or not _BASE64.fullmatch(self.sig)
        ):
            raise AuditFormatError(f"sig: must be base64, at most {MAX_SIG} characters")

    # ------------------------------------------------------------------ bytes

    def body_json(self) -> dict[str, Any]:
        """The entry without ``hash`` and ``sig``: what is hashed and signed."""
        body: dict[str, Any] = {
            "v": self.v,
            "chain": self.chain,
            "seq": self.seq,
            "time": format_time(self.time),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "detail": self.detail,
            "digest": self.digest,
            "prev": self.prev,
            "key": self.key,
        }
        if self.anchor is not None:
            body["anchor"] = self.anchor.to_json()
        return body

    def to_json(self) -> dict[str, Any]:
        return {**self.body_json(), "hash": self.hash, "sig": self.sig}

    def body_bytes(self) -> bytes:
        """RFC 8785 canonical bytes of :meth:`body_json`: ``hash`` is their SHA-256."""
        return _canonical(self.body_json())

    def canonical(self) -> bytes:
        """The full entry as one canonical JSONL line (without the newline)."""
        return _canonical(self.to_json())

    @property
    def ref(self) -> AuditRef:
        return AuditRef(self.chain, self.seq, self.hash)

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, line: bytes) -> AuditEntry:
        """An entry from its JSONL line (a trailing newline is allowed)."""
        try:
            document = _DECODER.decode(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise AuditFormatError("not UTF-8 text") from None
        except ValueError as exc:
            raise AuditFormatError(f"not JSON: {exc}") from None
        return cls.from_json(document)

    @classmethod
    def from_json(cls, document: Any) -> AuditEntry:
        if not isinstance(document, dict):
            raise AuditFormatError("an entry must be a JSON object")
        keys = document.keys()
        if not keys >= _REQUIRED or not keys <= _REQUIRED | _OPTIONAL:
            missing = sorted(_REQUIRED - keys)
            if missing:
                raise AuditFormatError(f"{missing[0]}: missing")
            unknown = sorted(keys - _REQUIRED - _OPTIONAL)
            raise AuditFormatError(f"{unknown[0]}: unknown field")
        anchor = document.get("anchor")
        if "anchor" in document and anchor is None:
            raise AuditFormatError("anchor: must be left out, not null, when there is none")
        return cls(
            v=document["v"],
            chain=document["chain"],
            seq=document["seq"],
            time=parse_time(document["time"]),
            actor=document["actor"],
            action=document["action"],
            subject=document["subject"],
            detail=document["detail"],
            digest=document["digest"],
            anchor=None if anchor is None else AuditRef.from_json(anchor, "anchor"),
            prev=document["prev"],
            key=document["key"],
            hash=document["hash"],
            sig=document["sig"],
        )


def _reject_constant(name: str) -> Any:
    raise AuditFormatError(f"{name} is not a JSON number")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _canonical(document: dict[str, Any]) -> bytes:
    try:
        return canonical_bytes(document)
    except SignatureFormatError as exc:
        raise AuditFormatError(str(exc)) from None
