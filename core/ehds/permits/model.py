"""The data permit itself: who may run which analyses on which nodes, for what, and when.

A permit is granted by a health data access body (HDAB) outside this software; what reaches
us is the signed document (`ehds.permits.document`). This module holds the permit's content
and the rules that make it well-formed, shared by the parser and by the issuer so that nothing
can be issued that would not parse:

* ``id``: ``[A-Za-z0-9][A-Za-z0-9._-]{0,99}`` (HDABs number permits their own way);
* ``issuer``, ``holders``, ``nodes``: participant names (the names in federation
  certificates, `ehds.pki.identity.NAME_PATTERN`); the issuer is the HDAB key's name;
* ``analyses``: analysis names without versions (each node's policy pins the versions it runs);
* times: aware datetimes, held in UTC; ``valid_from < valid_until``, the end excluded.

Lists are non-empty and without repeats: a permit that covers nothing is a mistake, and a
repeated name is most likely a typo of another one. Errors name the field
(``permit.holders[1]``) and the rule, never the offending value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ehds.permits.errors import PermitFormatError
from ehds.pki.identity import NAME_PATTERN

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ANALYSIS_PATTERN: Final = re.compile(r"[a-z][a-z0-9._-]{0,99}")
MAX_PURPOSE_LENGTH: Final = 4000
MAX_NAMES: Final = 10_000
"""Per list: a permit may cover every node of a large federation, but not unboundedly many."""

_TIME_PATTERN: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})"
)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters other than tab and newline: a purpose is printed on terminals."""
FIELDS: Final = (
    "id",
    "issuer",
    "holders",
    "purpose",
    "nodes",
    "analyses",
    "valid_from",
    "valid_until",
    "issued_at",
)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; fractions of a second only when there are some."""
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, field: str) -> datetime:
    """An RFC 3339 date-time with an explicit offset (``Z`` or ``+hh:mm``), as UTC."""
    if not _TIME_PATTERN.fullmatch(text):
        raise PermitFormatError(
            f"{field}: not an RFC 3339 date-time with a time zone (e.g. 2026-11-25T00:00:00Z)"
        )
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PermitFormatError(f"{field}: not a valid date-time") from None
    return value.astimezone(UTC)


def _check_time(value: Any, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise PermitFormatError(f"{field}: must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PermitFormatError(f"{field}: must be timezone-aware")
    return value.astimezone(UTC)


def _check_names(values: Any, field: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, tuple | list):
        raise PermitFormatError(f"{field}: must be a list of {what}s")
    if not values:
        raise PermitFormatError(f"{field}: must name at least one {what}")
    if len(values) > MAX_NAMES:
        raise PermitFormatError(f"{field}: more than {MAX_NAMES} entries")
    seen: set[str] = set()
    for index, value in enumerate(values):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise PermitFormatError(f"{field}[{index}]: not a {what} ({pattern.pattern})")
        if value in seen:
            raise PermitFormatError(f"{field}[{index}]: repeats an earlier entry")
        seen.add(value)
    return tuple(values)


@dataclass(frozen=True)
class Permit:
    """The content of a data permit; construction validates it (`PermitFormatError`)."""

    id: str
    issuer: str
    holders: tuple[str, ...]
    purpose: str
    nodes: tuple[str, ...]
    analyses: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ID_PATTERN.fullmatch(self.id):
            raise PermitFormatError(f"permit.id: not a permit id ({ID_PATTERN.pattern})")
        if not isinstance(self.issuer, str) or not NAME_PATTERN.fullmatch(self.issuer):
            raise PermitFormatError(f"permit.issuer: not an HDAB name ({NAME_PATTERN.pattern})")
        if not isinstance(self.purpose, str) or not self.purpose.strip():
            raise PermitFormatError("permit.purpose: must be a non-empty text")
        if len(self.purpose) > MAX_PURPOSE_LENGTH:
            raise PermitFormatError(f"permit.purpose: longer than {MAX_PURPOSE_LENGTH} characters")
        if _CONTROL.search(self.purpose):
            raise PermitFormatError("permit.purpose: contains control characters")
        try:
            self.purpose.encode("utf-8")
        except UnicodeEncodeError:
            raise PermitFormatError("permit.purpose: not valid Unicode text") from None
        checked: dict[str, object] = {
            "holders": _check_names(
                self.holders, "permit.holders", NAME_PATTERN, "participant name"
            ),
            "nodes": _check_names(self.nodes, "permit.nodes", NAME_PATTERN, "participant name"),
            "analyses": _check_names(
                self.analyses, "permit.analyses", ANALYSIS_PATTERN, "analysis name"
            ),
            "valid_from": _check_time(self.valid_from, "permit.valid_from"),
            "valid_until": _check_time(self.valid_until, "permit.valid_until"),
            "issued_at": _check_time(self.issued_at, "permit.issued_at"),
        }
        for name, value in checked.items():  # lists as tuples, times in UTC
            object.__setattr__(self, name, value)
        if not self.valid_from < self.valid_until:
            raise PermitFormatError("permit.valid_until: must be after permit.valid_from")

    def held_by(self, name: str) -> bool:
        return name in self.holders

    def covers_node(self, name: str) -> bool:
        return name in self.nodes

    def covers_analysis(self, name: str) -> bool:
        return name in self.analyses

    def valid_at(self, now: datetime) -> bool:
        """Whether ``now`` (timezone-aware) is in ``[valid_from, valid_until)``."""
        return self.valid_from <= _aware(now) < self.valid_until

    def to_json(self) -> dict[str, Any]:
        """The ``permit`` object of the document (its canonical bytes are what is signed)."""
        return {
            "id": self.id,
            "issuer": self.issuer,
            "holders": list(self.holders),
            "purpose": self.purpose,
            "nodes": list(self.nodes),
            "analyses": list(self.analyses),
            "valid_from": format_time(self.valid_from),
            "valid_until": format_time(self.valid_until),
            "issued_at": format_time(self.issued_at),
        }

    @classmethod
    def from_json(cls, data: Any) -> Permit:
        """The permit of a parsed ``permit`` object: exactly `FIELDS`, with JSON types."""
        if not isinstance(data, Mapping):
            raise PermitFormatError("permit: must be a JSON object")
        missing = [name for name in FIELDS if name not in data]
        if missing:
            raise PermitFormatError(f"permit.{missing[0]}: required field is missing")
        unknown = sorted(str(name) for name in data if name not in FIELDS)
        if unknown:
            raise PermitFormatError(f"permit: unknown field {unknown[0][:40]!r}")
        for name in ("id", "issuer", "purpose", "valid_from", "valid_until", "issued_at"):
            if not isinstance(data[name], str):
                raise PermitFormatError(f"permit.{name}: must be a string")
        for name in ("holders", "nodes", "analyses"):
            if not isinstance(data[name], list):
                raise PermitFormatError(f"permit.{name}: must be a list of strings")
        return cls(
            id=data["id"],
            issuer=data["issuer"],
            holders=tuple(data["holders"]),
            purpose=data["purpose"],
            nodes=tuple(data["nodes"]),
            analyses=tuple(data["analyses"]),
            valid_from=parse_time(data["valid_from"], "permit.valid_from"),
            valid_until=parse_time(data["valid_until"], "permit.valid_until"),
            issued_at=parse_time(data["issued_at"], "permit.issued_at"),
        )


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)
