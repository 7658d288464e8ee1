"""Who is calling, and may they: identity from the peer certificate, role per service,
revocation on every call; and the mapping of the coordinator's errors to gRPC status codes.

Identity comes ONLY from the client certificate the TLS handshake verified
(`ehds.federation.transport.peer_identity`), never from a request field. With ``--insecure``
(local development only: no TLS, nobody is authenticated) it comes from the metadata entry
``x-ehds-insecure-identity: ROLE/NAME``, which anyone can forge; that is the point of the
warning the server prints.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable
from typing import Any, Final, NoReturn, TypeVar

import grpc

from ehds.coordinator.errors import (
    InvalidPageTokenError,
    InvalidStudyError,
    NodeNotFoundError,
    NodeRevokedError,
    ProtocolVersionError,
    ResultsNotReadyError,
    StudyNotFoundError,
)
from ehds.coordinator.revocation import RevocationChecker
from ehds.coordinator.state.worker import WorkerClosedError
from ehds.core.errors import EhdsError, InputError, StateError
from ehds.federation.serde import ProtocolViolation
from ehds.federation.transport import peer_certificate_pem
from ehds.pki.errors import CertificateError, PkiInputError
from ehds.pki.identity import Identity, Role, validate_name

__all__ = ["INSECURE_IDENTITY_HEADER", "Access", "abort_for", "guarded"]

log = logging.getLogger(__name__)

INSECURE_IDENTITY_HEADER: Final = "x-ehds-insecure-identity"

T = TypeVar("T")

IDENTITY_CACHE_SIZE: Final = 4096
"""Peer certificates whose parsed identity `Access` keeps (a node or researcher calls with
the same certificate every time; parsing one costs milliseconds)."""

_CODES: Final[tuple[tuple[type[Exception], grpc.StatusCode], ...]] = (
    (InvalidStudyError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidPageTokenError, grpc.StatusCode.INVALID_ARGUMENT),
    (ProtocolViolation, grpc.StatusCode.INVALID_ARGUMENT),
    (StudyNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NodeNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ResultsNotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ProtocolVersionError, grpc.StatusCode.FAILED_PRECONDITION),
    (NodeRevokedError, grpc.StatusCode.PERMISSION_DENIED),
    (WorkerClosedError, grpc.StatusCode.UNAVAILABLE),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (StateError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code, str(error)
    log.error("unexpected error in a coordinator call", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error at the coordinator (see its log)"


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    code, details = status_of(error)
    await context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


async def guarded(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """``await call``, an `EhdsError` (or a bug) becoming the matching gRPC status."""
    try:
        return await call
    except (EhdsError, Exception) as exc:
        await abort_for(context, exc)


def _parse_identity(pem: bytes) -> Identity | None:
    try:
        return Identity.from_certificate(pem)
    except CertificateError:
        return None


class Access:
    def __init__(self, revocation: RevocationChecker, *, insecure: bool) -> None:
        self._revocation = revocation
        self._insecure = insecure
        # Per certificate (PEM bytes): the identity it names, or None. Bounded, and per Access
        # object. Revocation is NOT cached here: `RevocationChecker.is_revoked` runs on every
        # call (its own verdict cache is cleared whenever a new CRL comes into force).
        self._identity_of = functools.lru_cache(maxsize=IDENTITY_CACHE_SIZE)(_parse_identity)

    async def require(
        self, context: grpc.aio.ServicerContext[Any, Any], role: Role, service: str
    ) -> tuple[Identity, bytes | None]:
        """The caller's identity and certificate, or the call ends: UNAUTHENTICATED without a
        federation identity, PERMISSION_DENIED for a revoked certificate or another role."""
        if self._insecure:
            identity, pem = self._insecure_identity(context), None
            if identity is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"--insecure: send the metadata {INSECURE_IDENTITY_HEADER}: ROLE/NAME",
                )
        else:
            pem = peer_certificate_pem(context)
            identity = self._identity_of(pem) if pem is not None else None
            if pem is None or identity is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no client certificate naming a federation participant",
                )
            if self._revocation.is_revoked(pem):
                log.warning("refused %s: certificate revoked", identity)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate revoked")
        if identity.role is not role:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity} may not call {service}: it needs a {role.value} certificate",
            )
        return identity, pem

    @staticmethod
    def _insecure_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
        for key, value in context.invocation_metadata() or ():
            if key != INSECURE_IDENTITY_HEADER or not isinstance(value, str):
                continue
            role, _, name = value.partition("/")
            try:
                return Identity(validate_name(name), Role.parse(role))
            except PkiInputError:
                return None
        return None
