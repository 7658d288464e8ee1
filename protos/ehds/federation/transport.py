"""gRPC plumbing shared by the coordinator, the node and the researcher client.

Why one module: every party must agree on the same transport settings or the federation breaks
in ways that only show in production. Mutual TLS is always on (identity comes from the peer
certificate, never from a message); keepalive pings on both sides get a connection through
hospital firewalls and NATs that drop idle TCP silently, and the server must accept the
client's pings or it ends the connection with GOAWAY "too_many_pings"; an HTTP CONNECT proxy is
how a node inside a hospital network reaches the coordinator. gRPC's 4 MiB message limit is
never raised here (see `ehds.federation.limits`).

Proxy: the channel argument ``grpc.http_proxy`` (a ``http://host:port`` URL) makes grpc-core
tunnel the connection through the proxy with HTTP CONNECT, loopback targets included. It takes
precedence over the ``grpc_proxy``/``https_proxy``/``http_proxy`` environment variables, which
apply when it is not given (tests/protos/test_transport.py checks both with a CONNECT proxy).
Beware: the lower-case ``no_grpc_proxy`` and ``no_proxy`` environment variables still exempt
matching targets even when the argument is given (upper-case ``NO_PROXY`` is not read).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol

import grpc

from ehds.core.errors import InputError
from ehds.core.netconfig import Keepalive, TlsFiles
from ehds.pki.errors import CertificateError
from ehds.pki.identity import Identity

__all__ = [
    "INSECURE_WARNING",
    "ChannelOption",
    "TlsFilesError",
    "channel_options",
    "client_credentials",
    "peer_certificate_pem",
    "peer_identity",
    "server_credentials",
    "server_options",
]

ChannelOption = tuple[str, str | int]

INSECURE_WARNING: Final = (
    "WARNING: --insecure: mutual TLS is OFF. Anyone who can reach this port can read and forge "
    "federation traffic and no peer is authenticated. Never use this outside a local test."
)

MIN_CLIENT_PING_INTERVAL_MS: Final = 1_000
"""The shortest interval between a client's pings that a server accepts without data on the
connection. Nodes and researchers have their own keepalive settings, so the server must not
assume theirs equal its own; one ping per second from an authenticated peer costs nothing."""

_PEM_CERT_KEY: Final = "x509_pem_cert"


class TlsFilesError(InputError):
    """A TLS file named in the configuration cannot be read."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def client_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Mutual TLS: trust only the federation CA, present this party's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "CA certificate"),
        private_key=_read(tls.key, "private key"),
        certificate_chain=_read(tls.certificate, "certificate"),
    )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS: a client without a certificate from the federation CA fails the handshake."""
    return grpc.ssl_server_credentials(
        [(_read(tls.key, "private key"), _read(tls.certificate, "certificate"))],
        root_certificates=_read(tls.ca, "CA certificate"),
        require_client_auth=True,
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _keepalive_options(keepalive: Keepalive) -> list[ChannelOption]:
    timeout_ms = _ms(keepalive.timeout_seconds)
    return [
        ("grpc.keepalive_time_ms", _ms(keepalive.time_seconds)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # grpc-core times an unanswered keepalive ping with the general ping timeout (one minute
        # by default), not with keepalive_timeout: without this a silent proxy or a dead peer is
        # noticed after a minute, whatever the configuration says.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
    ]


def channel_options(
    keepalive: Keepalive, *, server_name: str | None = None, proxy: str | None = None
) -> list[ChannelOption]:
    """Client channel options: keepalive pings even without calls in flight (a node's stream
    may be idle for hours), the expected server name, and the HTTP CONNECT proxy if any."""
    options: list[ChannelOption] = [
        *_keepalive_options(keepalive),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    if proxy is not None:
        options.append(("grpc.http_proxy", proxy))
    return options


def server_options(keepalive: Keepalive) -> list[ChannelOption]:
    """Server options: accept the clients' keepalive pings, and ping clients so that a dead
    node's stream is noticed and closed."""
    time_ms = _ms(keepalive.time_seconds)
    return [
        *_keepalive_options(keepalive),
        ("grpc.http2.max_pings_without_data", 0),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            min(time_ms, MIN_CLIENT_PING_INTERVAL_MS),
        ),
    ]


class _HasAuthContext(Protocol):
    """`grpc.ServicerContext` and `grpc.aio.ServicerContext` alike."""

    def auth_context(self) -> Mapping[str, object]: ...


def peer_certificate_pem(context: _HasAuthContext) -> bytes | None:
    """The client certificate of the call (PEM), None without TLS or a client certificate.

    grpcio returns a list of bytes per key (its type stubs say plain bytes): accept both.
    """
    value = context.auth_context().get(_PEM_CERT_KEY)
    if isinstance(value, bytes):
        return value or None
    if isinstance(value, list | tuple) and value and isinstance(value[0], bytes):
        return value[0] or None
    return None


def peer_identity(context: _HasAuthContext) -> Identity | None:
    """Who is calling, from the certificate the handshake verified; None if it names no valid
    federation identity (the caller answers UNAUTHENTICATED)."""
    pem = peer_certificate_pem(context)
    if pem is None:
        return None
    try:
        return Identity.from_certificate(pem)
    except CertificateError:
        return None
