"""``index.json``: every certificate the CA issued, and the number of the latest CRL.

The index is the source of truth for revocation: the CRL is re-signed from it.

    {"format_version": 1, "crl_number": 2, "certificates": [
      {"name": "hospital-a", "role": "node", "serial": "5f0c...",
       "not_after": "2027-01-01T00:00:00Z", "revoked": false, "revoked_at": null}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ehds.pki.directory import write_replace
from ehds.pki.errors import PkiStateError
from ehds.pki.identity import NAME_PATTERN, Role

FORMAT_VERSION = 1
_RECORD_KEYS = {"name", "role", "serial", "not_after", "revoked", "revoked_at"}
_INDEX_KEYS = {"format_version", "crl_number", "certificates"}


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class IssuedCertificate:
    name: str
    role: Role
    serial: int
    not_after: datetime
    revoked: bool = False
    revoked_at: datetime | None = None

    def is_live(self, now: datetime) -> bool:
        """Not revoked and not expired."""
        return not self.revoked and now < self.not_after

    def status(self, now: datetime) -> str:
        if self.revoked:
            return "revoked"
        return "live" if self.is_live(now) else "expired"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "serial": f"{self.serial:x}",
            "not_after": format_time(self.not_after),
            "revoked": self.revoked,
            "revoked_at": None if self.revoked_at is None else format_time(self.revoked_at),
        }


class _Reader:
    """Reads one JSON object strictly; every error names the file and the key path."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> PkiStateError:
        return PkiStateError(f"{self.source}: {where}: {message}")

    def keys(self, obj: object, where: str, expected: set[str]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(where, "expected an object")
        if set(obj) != expected:
            unknown = sorted(set(obj) - expected)
            missing = sorted(expected - set(obj))
            raise self.fail(where, f"unknown keys {unknown}, missing keys {missing}")
        return obj

    def time(self, value: object, where: str) -> datetime:
        if not isinstance(value, str):
            raise self.fail(where, "expected a UTC time string")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(where, f"not an ISO 8601 time: {value!r}") from None
        if moment.tzinfo is None:
            raise self.fail(where, "time without a time zone")
        return moment.astimezone(UTC)

    def record(self, obj: object, where: str) -> IssuedCertificate:
        fields = self.keys(obj, where, _RECORD_KEYS)
        name, role, serial = fields["name"], fields["role"], fields["serial"]
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise self.fail(f"{where}.name", f"invalid name {name!r}")
        if role not in {r.value for r in Role}:
            raise self.fail(f"{where}.role", f"unknown role {role!r}")
        try:
            serial_number = int(serial, 16) if isinstance(serial, str) else -1
        except ValueError:
            serial_number = -1
        if serial_number <= 0:
            raise self.fail(f"{where}.serial", f"expected a positive hex integer, got {serial!r}")
        if not isinstance(fields["revoked"], bool):
            raise self.fail(f"{where}.revoked", "expected true or false")
        revoked_at = fields["revoked_at"]
        if fields["revoked"] != (revoked_at is not None):
            raise self.fail(f"{where}.revoked_at", "set if and only if revoked is true")
        return IssuedCertificate(
            name=name,
            role=Role(role),
            serial=serial_number,
            not_after=self.time(fields["not_after"], f"{where}.not_after"),
            revoked=fields["revoked"],
            revoked_at=None if revoked_at is None else self.time(revoked_at, f"{where}.revoked_at"),
        )


@dataclass(frozen=True)
class CertificateIndex:
    crl_number: int = 0
    certificates: tuple[IssuedCertificate, ...] = ()

    @classmethod
    def load(cls, path: Path) -> CertificateIndex:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PkiStateError(f"{path}: no certificate index (run `ehds pki init`)") from None
        reader = _Reader(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise reader.fail(f"line {exc.lineno} column {exc.colno}", exc.msg) from None
        top = reader.keys(data, "top level", _INDEX_KEYS)
        if top["format_version"] != FORMAT_VERSION:
            raise reader.fail("format_version", f"unsupported {top['format_version']!r}")
        crl_number = top["crl_number"]
        if not isinstance(crl_number, int) or isinstance(crl_number, bool) or crl_number < 0:
            raise reader.fail("crl_number", "expected a non-negative integer")
        records = top["certificates"]
        if not isinstance(records, list):
            raise reader.fail("certificates", "expected a list")
        return cls(
            crl_number=crl_number,
            certificates=tuple(
                reader.record(record, f"certificates[{i}]") for i, record in enumerate(records)
            ),
        )

    def save(self, path: Path) -> None:
        document = {
            "format_version": FORMAT_VERSION,
            "crl_number": self.crl_number,
            "certificates": [record.to_json() for record in self.certificates],
        }
        write_replace(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))

    def live(self, name: str, now: datetime) -> IssuedCertificate | None:
        return next((c for c in self.certificates if c.name == name and c.is_live(now)), None)

    def revoked(self) -> tuple[IssuedCertificate, ...]:
        return tuple(c for c in self.certificates if c.revoked)

    def with_issued(self, record: IssuedCertificate) -> CertificateIndex:
        return replace(self, certificates=(*self.certificates, record))

    def with_revoked(self, name: str, now: datetime) -> tuple[CertificateIndex, list[int]]:
        """Revoke every not yet revoked certificate of ``name``; the new index and serials."""
        serials: list[int] = []
        records: list[IssuedCertificate] = []
        for record in self.certificates:
            if record.name == name and not record.revoked:
                serials.append(record.serial)
                records.append(replace(record, revoked=True, revoked_at=now))
            else:
                records.append(record)
        return replace(self, certificates=tuple(records)), serials
