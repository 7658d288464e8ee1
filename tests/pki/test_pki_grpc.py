"""End to end: real grpcio mutual TLS on 127.0.0.1 with certificates from ``ehds.pki``.

The server stands in for the coordinator: it requires a client certificate signed by the
federation CA, derives the caller's identity from the certificate in ``auth_context()``, and
checks revocation itself on the call, since gRPC does not check CRLs in the handshake.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ehds.pki.authority import init_authority
from ehds.pki.identity import Identity, Role
from ehds.pki.issue import Credentials, issue_certificate, load_credentials
from ehds.pki.revocation import RevocationList, revoke_certificate

SERVICE = "ehds.test.Whoami"
METHOD = f"/{SERVICE}/Get"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Federation:
    pki: Path
    port: int
    revocations: RevocationList

    def credentials(self, name: str) -> Credentials:
        return load_credentials(self.pki / "issued", name)


def _raw(message: bytes) -> bytes:
    return message


def _first(auth: Mapping[str, object], key: str) -> bytes:
    """The first value of an auth property: grpcio gives a list of bytes per key (the
    stubs say plain bytes)."""
    values = auth[key]
    assert isinstance(values, list | tuple)
    value = values[0]
    assert isinstance(value, bytes)
    return value


def _whoami(revocations: RevocationList) -> grpc.RpcMethodHandler[bytes, bytes]:
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        common_name = _first(auth, "x509_common_name").decode("utf-8")
        peer_pem = _first(auth, "x509_pem_cert")
        if revocations.is_revoked(peer_pem):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "certificate revoked")
        identity = Identity.from_certificate(peer_pem)
        assert identity.name == common_name
        return f"{identity.name}/{identity.role.value}".encode()

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=_raw, response_serializer=_raw
    )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    pki = tmp_path / "pki"
    init_authority(pki, "eu-cancer")
    issue_certificate(pki, Role.COORDINATOR, "central")
    for name in ("hospital-a", "hospital-b"):
        issue_certificate(pki, Role.NODE, name)
    revocations = RevocationList.load(pki, (pki / "ca.pem").read_bytes())
    server_key, server_cert, ca = load_credentials(pki / "issued", "central")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    try:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Get": _whoami(revocations)}),)
        )
        port = server.add_secure_port(
            "127.0.0.1:0",
            grpc.ssl_server_credentials(
                [(server_key, server_cert)], root_certificates=ca, require_client_auth=True
            ),
        )
        assert port > 0
        server.start()
        yield Federation(pki, port, revocations)
    finally:
        server.stop(grace=None).wait(TIMEOUT_S)


def _call(port: int, credentials: grpc.ChannelCredentials) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_raw, response_deserializer=_raw)
        return call(b"", timeout=TIMEOUT_S)


def _client(credentials: Credentials, root: bytes | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=root or credentials.root_certificates,
        private_key=credentials.private_key,
        certificate_chain=credentials.certificate_chain,
    )


def test_a_node_with_a_federation_certificate_is_identified_by_it(
    federation: Federation,
) -> None:
    reply = _call(federation.port, _client(federation.credentials("hospital-a")))
    assert reply == b"hospital-a/node"
    reply = _call(federation.port, _client(federation.credentials("hospital-b")))
    assert reply == b"hospital-b/node"


def test_a_certificate_from_a_second_ca_fails_the_handshake(
    federation: Federation, tmp_path: Path
) -> None:
    # Same federation name and participant name: only the CA's signature differs.
    rogue = tmp_path / "rogue-pki"
    init_authority(rogue, "eu-cancer")
    issue_certificate(rogue, Role.NODE, "hospital-a")
    rogue_credentials = load_credentials(rogue / "issued", "hospital-a")
    # The client trusts the real CA, so it does reach the real coordinator.
    trusted_root = federation.credentials("hospital-a").root_certificates
    with pytest.raises(grpc.RpcError) as failure:
        _call(federation.port, _client(rogue_credentials, root=trusted_root))
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_node_that_trusts_another_ca_refuses_the_coordinator(
    federation: Federation, tmp_path: Path
) -> None:
    other = tmp_path / "other-pki"
    init_authority(other, "eu-cancer")
    credentials = federation.credentials("hospital-a")
    with pytest.raises(grpc.RpcError) as failure:
        _call(federation.port, _client(credentials, root=(other / "ca.pem").read_bytes()))
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_client_without_a_certificate_fails_the_handshake(federation: Federation) -> None:
    root = federation.credentials("hospital-a").root_certificates
    with pytest.raises(grpc.RpcError) as failure:
        _call(federation.port, grpc.ssl_channel_credentials(root_certificates=root))
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_revoked_certificate_passes_tls_but_is_refused_on_the_call(
    federation: Federation,
) -> None:
    credentials = federation.credentials("hospital-b")
    revoke_certificate(federation.pki, "hospital-b")
    federation.revocations.reload()
    with pytest.raises(grpc.RpcError) as failure:
        _call(federation.port, _client(credentials))
    assert failure.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _call(federation.port, _client(federation.credentials("hospital-a"))) == (
        b"hospital-a/node"
    )
