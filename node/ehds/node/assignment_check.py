"""Whether a `TaskAssignment` comes from the federation's coordinator, unaltered and current.

The coordinator signs every assignment (`ehds.federation.assignment_signing`) with the key of
its TLS certificate and sends that certificate in `Welcome`. The node accepts the certificate
only if the federation CA (``tls.ca``) issued it and it names a coordinator, then checks each
assignment against it, in this order:

    unknown signer  no usable coordinator certificate on this stream
    bad signature   the signature does not verify over the assignment's fields
    replayed        a task id seen before with another nonce (`ehds.node.state`)
    expired         a new assignment past its ``expires_at``

A re-delivery (same task id, same nonce) is not a replay: the coordinator re-sends until it
gets an ack. Replay and expiry need the node's memory of assignments, so they are decided in
`ehds.node.state.NodeState.admit_assignment`; this module holds the codes and the signature
check.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from ehds.core.errors import EhdsError, InputError
from ehds.core.signing import key_id, load_public_key, verify_signature
from ehds.federation.assignment_signing import signing_bytes
from ehds.federation.model import TaskAssignment
from ehds.pki.authority import verify_issued_by
from ehds.pki.identity import Identity, Role
from ehds.pki.pem import as_certificate


class AssignmentRejection(enum.StrEnum):
    """Why an assignment is refused; the value is the code sent in the outcome and audited."""

    UNKNOWN_SIGNER = "assignment.unknown_signer"
    BAD_SIGNATURE = "assignment.bad_signature"
    REPLAYED = "assignment.replayed"
    EXPIRED = "assignment.expired"

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def text(self) -> str:
        """The outcome's message: ``"<code>: <sentence>"``."""
        return f"{self.value}: {self.message}"


_MESSAGES: Final[Mapping[AssignmentRejection, str]] = MappingProxyType(
    {
        AssignmentRejection.UNKNOWN_SIGNER: (
            "the assignment is not signed by a coordinator of this federation"
        ),
        AssignmentRejection.BAD_SIGNATURE: "the assignment's signature does not verify",
        AssignmentRejection.REPLAYED: "the task was assigned before with another nonce",
        AssignmentRejection.EXPIRED: "the assignment has expired",
    }
)


class AssignmentRejectedError(InputError):
    """An assignment the node must not act on; ``reason`` says which rule."""

    def __init__(self, reason: AssignmentRejection) -> None:
        self.reason = reason
        super().__init__(reason.text)


class UntrustedCoordinatorError(InputError):
    """The certificate in `Welcome` is not a coordinator certificate of this federation."""


@dataclass(frozen=True)
class AssignmentSigner:
    """The coordinator key that signs this stream's assignments, and who it is."""

    identity: str
    public_key: ec.EllipticCurvePublicKey
    key_id: str


def coordinator_signer(certificate_pem: bytes, ca: Path) -> AssignmentSigner:
    """The signer named by ``certificate_pem`` if the CA at ``ca`` issued it to a coordinator;
    `UntrustedCoordinatorError` otherwise (the message names the check, not the bytes)."""
    if not certificate_pem:
        raise UntrustedCoordinatorError("the coordinator sent no certificate (protocol < 1.3)")
    try:
        ca_pem = ca.read_bytes()
    except OSError as exc:
        raise UntrustedCoordinatorError(f"cannot read the CA {ca} ({exc.strerror})") from None
    try:
        verify_issued_by(certificate_pem, ca_pem)
        identity = Identity.from_certificate(certificate_pem)
        public_key = load_public_key(certificate_pem)
    except (EhdsError, ValueError) as exc:
        raise UntrustedCoordinatorError(f"the coordinator certificate: {exc}") from None
    if as_certificate(certificate_pem).not_valid_after_utc <= datetime.now(UTC):
        raise UntrustedCoordinatorError("the coordinator certificate has expired")
    if identity.role is not Role.COORDINATOR:
        raise UntrustedCoordinatorError(
            f"the certificate in Welcome is a {identity.role.value} certificate, not a "
            "coordinator's"
        )
    return AssignmentSigner(str(identity), public_key, key_id(public_key))


def verify_assignment(assignment: TaskAssignment, signer: AssignmentSigner | None) -> None:
    """`AssignmentRejectedError` (unknown signer, bad signature) unless ``signer`` signed it."""
    if signer is None:
        raise AssignmentRejectedError(AssignmentRejection.UNKNOWN_SIGNER)
    if not assignment.signature or not verify_signature(
        signer.public_key, signing_bytes(assignment), assignment.signature
    ):
        raise AssignmentRejectedError(AssignmentRejection.BAD_SIGNATURE)


def expires_at(assignment: TaskAssignment) -> datetime:
    """When the assignment stops being valid: ``expires_at``, else its deadline."""
    return assignment.expires_at or assignment.deadline
