"""The node's own name: the CN of its certificate, the name the coordinator knows it by."""

from __future__ import annotations

from pathlib import Path

from ehds.node.errors import NodeStartError
from ehds.pki.errors import CertificateError
from ehds.pki.identity import Identity, Role


def certificate_name(certificate: Path) -> str:
    """CN of the node certificate at ``certificate``; `NodeStartError` if it is unreadable or
    not a node certificate (the coordinator would refuse it anyway, later and less clearly)."""
    try:
        pem = certificate.read_bytes()
    except OSError as exc:
        raise NodeStartError(
            f"tls.certificate {certificate}: cannot read ({exc.strerror})"
        ) from None
    try:
        identity = Identity.from_certificate(pem)
    except (CertificateError, ValueError) as exc:
        raise NodeStartError(f"tls.certificate {certificate}: {exc}") from None
    if identity.role is not Role.NODE:
        raise NodeStartError(
            f"tls.certificate {certificate} is a {identity.role.value} certificate; a node needs "
            "one issued with `ehds pki issue node NAME`"
        )
    return identity.name
