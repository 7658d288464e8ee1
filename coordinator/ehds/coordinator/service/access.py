"""Who is calling, and may they: identity from the peer certificate (or an OIDC token), the
roles each call admits, revocation on every call; and the mapping of the coordinator's errors
to gRPC status codes.

Identity comes from the client certificate the TLS handshake verified
(`ehds.federation.transport.peer_identity`), never from a request field. When the coordinator
is configured with ``oidc``, a call without a certificate (on the token port) may carry
``authorization: Bearer <JWT>`` instead, verified by `OidcVerifier`: a token names a
researcher, an operator or an auditor, never a node, and NodeLink never accepts one. With
``--insecure`` (local development only: no TLS, nobody is authenticated) identity comes from the
metadata entry ``x-ehds-insecure-identity: ROLE/NAME``, which anyone can forge; that is the
point of the warning the server prints.

Roles per service: NodeLink node; StudyApi researcher (Get, List and Watch also operator and
auditor, read-only); AdminApi operator; PermitApi Register researcher (a holder) or operator,
List and Get also auditor; AuditApi auditor.
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
    PermitConflictError,
    PermitNotFoundError,
    PermitRejectedError,
    ProtocolVersionError,
    ResultsNotReadyError,
    ResultsPurgedError,
    StudyNotFoundError,
    StudyPermitError,
)
from ehds.coordinator.revocation import RevocationChecker
from ehds.coordinator.service.oidc import (
    TOKEN_ROLES,
    OidcVerifier,
    TokenRejectedError,
    bearer_token,
)
from ehds.coordinator.state.worker import WorkerClosedError
from ehds.core.errors import EhdsError, InputError, StateError
from ehds.federation.serde import ProtocolViolation
from ehds.federation.transport import peer_certificate_pem
from ehds.permits import PermitRefusal
from ehds.pki.errors import CertificateError, PkiInputError
from ehds.pki.identity import Identity, Role, validate_name

__all__ = ["AUTHORIZATION_HEADER", "INSECURE_IDENTITY_HEADER", "Access", "abort_for", "guarded"]

log = logging.getLogger(__name__)

INSECURE_IDENTITY_HEADER: Final = "x-ehds-insecure-identity"
AUTHORIZATION_HEADER: Final = "authorization"
NODE_LINK: Final = "NodeLink"

T = TypeVar("T")

IDENTITY_CACHE_SIZE: Final = 4096
"""Peer certificates whose parsed identity `Access` keeps (a node or researcher calls with
the same certificate every time; parsing one costs milliseconds)."""

_CODES: Final[tuple[tuple[type[Exception], grpc.StatusCode], ...]] = (
    (InvalidStudyError, grpc.StatusCode.INVALID_ARGUMENT),
    (PermitConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (PermitNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ResultsPurgedError, grpc.StatusCode.FAILED_PRECONDITION),
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
    if isinstance(error, StudyPermitError | PermitRejectedError):
        # Not holding the permit is a matter of who asks, not of what was sent.
        denied = error.reason is PermitRefusal.NOT_HOLDER
        return (
            grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.INVALID_ARGUMENT,
            str(error),
        )
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


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


class Access:
    """``oidc``: the verifier of bearer tokens, None when the coordinator accepts
    certificates only."""

    def __init__(
        self,
        revocation: RevocationChecker,
        *,
        insecure: bool,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self._revocation = revocation
        self._insecure = insecure
        self._oidc = oidc
        # Per certificate (PEM bytes): the identity it names, or None. Bounded, and per Access
        # object. Revocation is NOT cached here: `RevocationChecker.is_revoked` runs on every
        # call (its own verdict cache is cleared whenever a new CRL comes into force).
        self._identity_of = functools.lru_cache(maxsize=IDENTITY_CACHE_SIZE)(_parse_identity)

    def actor(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Who the call says it is, for the audit entry of the call ("ROLE NAME", or
        "unauthenticated"); checks nothing beyond parsing (`require` does the checking)."""
        identity: Identity | None = None
        if self._insecure:
            identity = self._insecure_identity(context)
        else:
            pem = peer_certificate_pem(context)
            if pem is not None:
                identity = self._identity_of(pem)
            elif self._oidc is not None:
                authorization = _metadata(context, AUTHORIZATION_HEADER)
                if authorization is not None:
                    try:
                        identity = self._oidc.identity(bearer_token(authorization))
                    except TokenRejectedError:
                        identity = None
        return str(identity) if identity is not None else "unauthenticated"

    async def require(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        roles: Role | tuple[Role, ...],
        service: str,
    ) -> tuple[Identity, bytes | None]:
        """The caller's identity and certificate (None for a token), or the call ends:
        UNAUTHENTICATED without a federation identity, PERMISSION_DENIED for a revoked
        certificate or a role not in ``roles``."""
        allowed = (roles,) if isinstance(roles, Role) else roles
        pem: bytes | None = None
        if self._insecure:
            identity = self._insecure_identity(context)
            if identity is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"--insecure: send the metadata {INSECURE_IDENTITY_HEADER}: ROLE/NAME",
                )
        else:
            pem = peer_certificate_pem(context)
            if pem is None:
                identity = await self._token_identity(context, allowed, service)
            else:
                identity = self._identity_of(pem)
                if identity is None:
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "no client certificate naming a federation participant",
                    )
                if self._revocation.is_revoked(pem):
                    log.warning("refused %s: certificate revoked", identity)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate revoked")
        if identity.role not in allowed:
            needed = " or ".join(role.value for role in allowed)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity} may not call {service}: it needs a {needed} identity",
            )
        return identity, pem

    async def _token_identity(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        allowed: tuple[Role, ...],
        service: str,
    ) -> Identity:
        """The identity of a bearer token; the call ends UNAUTHENTICATED without one, or for a
        service that takes certificates only (NodeLink: a node is never a token)."""
        authorization = _metadata(context, AUTHORIZATION_HEADER)
        if self._oidc is None or authorization is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate naming a federation participant",
            )
        if service == NODE_LINK or not any(role in TOKEN_ROLES for role in allowed):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{service} needs a client certificate: tokens are not accepted",
            )
        wanted = next(role for role in allowed if role in TOKEN_ROLES)
        try:
            return self._oidc.identity(bearer_token(authorization), wanted)
        except TokenRejectedError as exc:
            log.warning("refused a bearer token on %s: %s", service, exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"bearer token refused: {exc}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    @staticmethod
    def _insecure_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
        value = _metadata(context, INSECURE_IDENTITY_HEADER)
        if value is None:
            return None
        role, _, name = value.partition("/")
        try:
            return Identity(validate_name(name), Role.parse(role))
        except PkiInputError:
            return None
