"""Who a certificate belongs to: its name (subject CN) and its role (subject OU).

The coordinator derives a caller's identity and role from the certificate presented in the
mutual TLS handshake, never from message contents. :meth:`Identity.from_certificate` only
parses: call it on a certificate the handshake (or :func:`ehds.pki.authority.verify_issued_by`)
has already verified against the federation CA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from ehds.pki.errors import IdentityError, PkiInputError
from ehds.pki.pem import CertificateLike, as_certificate

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
"""A participant name: also a valid DNS label, so it can be a SAN of its own certificate."""


class Role(StrEnum):
    NODE = "node"
    COORDINATOR = "coordinator"
    RESEARCHER = "researcher"
    # Runs the coordinator: may call AdminApi (list and revoke nodes).
    OPERATOR = "operator"
    # Reads the coordinator's audit trail (AuditApi) and every permit and study, changes nothing.
    AUDITOR = "auditor"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(role.value for role in cls)
            raise PkiInputError(f"unknown role {text!r} (expected one of: {choices})") from None


def validate_name(name: str) -> str:
    """``name`` itself, or :class:`PkiInputError` if it is not ``[a-z0-9][a-z0-9-]{0,62}``."""
    if not NAME_PATTERN.fullmatch(name):
        raise PkiInputError(
            f"invalid name {name!r}: 1 to 63 characters from a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


def _single_attribute(subject: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    values = subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise IdentityError(
            f"certificate subject {subject.rfc4514_string()!r} has {len(values)} {label} "
            "attributes (expected exactly 1)"
        )
    value = values[0].value
    if not isinstance(value, str):
        raise IdentityError(f"certificate subject {label} is not a string")
    return value


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role

    @classmethod
    def from_certificate(cls, certificate: CertificateLike) -> Identity:
        """The identity a certificate names; :class:`IdentityError` without a valid CN and OU."""
        subject = as_certificate(certificate).subject
        name = _single_attribute(subject, NameOID.COMMON_NAME, "CN")
        role = _single_attribute(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU")
        if not NAME_PATTERN.fullmatch(name):
            raise IdentityError(f"certificate CN {name!r} is not a valid participant name")
        try:
            return cls(name, Role(role))
        except ValueError:
            raise IdentityError(f"certificate OU {role!r} is not a federation role") from None

    def __str__(self) -> str:
        return f"{self.role.value} {self.name}"
