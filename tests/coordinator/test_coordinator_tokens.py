"""OpenID Connect at the coordinator: with ``oidc`` configured, researchers, operators and
auditors may call with a bearer token on the token port (`CoordinatorClient` with a
``token_file``), and a token never opens NodeLink."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pydantic
import pytest
from coordinator_harness import (
    Caller,
    FakeNode,
    Pki,
    make_config,
    make_pki,
    profile,
    register_default_permits,
    rpc_error,
    spec,
)

from ehds.audit import AuditEntry
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import ClientConfig, ServerTls, TokenError
from ehds.coordinator.client_errors import AccessDeniedError, CoordinatorUnavailableError
from ehds.coordinator.config import CoordinatorConfig
from ehds.coordinator.server import CoordinatorServer
from ehds.core.netconfig import CoordinatorEndpoint, Listen
from ehds.federation import serde
from ehds.federation.v1 import common_pb2, node_link_pb2, node_link_pb2_grpc

# tests/ is on sys.path at run time (tests/conftest.py); mypy knows the module by its path.
if TYPE_CHECKING:
    from tests.oidc_issuer import LocalIssuer
else:
    from oidc_issuer import LocalIssuer


def _client_config(pki: Pki, port: int, token_file: Path | None = None) -> ClientConfig:
    return ClientConfig(
        coordinator=CoordinatorEndpoint(address=f"127.0.0.1:{port}"),
        tls=ServerTls(ca=pki.tls("coordinator").ca),
        token_file=token_file,
    )


def _token_channel(port: int, pki: Pki, token: str) -> grpc.aio.Channel:
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(pki.tls("coordinator").ca.read_bytes()),
        grpc.access_token_call_credentials(token),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


def _run(tmp_path: Path, body: Any) -> None:
    pki = make_pki(tmp_path)
    issuer = LocalIssuer(tmp_path)
    config = make_config(
        tmp_path, pki, oidc=issuer.config(), token_listen=Listen(host="127.0.0.1", port=0)
    )

    async def main() -> None:
        async with CoordinatorServer(config) as server:
            assert server.token_port not in (0, server.port)
            await register_default_permits(server, pki)
            await asyncio.wait_for(body(server, pki, issuer), 30)

    asyncio.run(main())


def test_coordinator_serves_researchers_and_auditors_who_call_with_a_token(
    tmp_path: Path,
) -> None:
    async def body(server: CoordinatorServer, pki: Pki, issuer: LocalIssuer) -> None:
        node = FakeNode(server.address, pki.tls("node-a"), "node-a")
        await node.open(minor=3)
        token = issuer.write_token(tmp_path / "alice.jwt", "alice", "researcher")
        document = pki.permit("by-token", holders=("alice",), nodes=("node-a",))

        def researcher() -> tuple[str, str, list[str]]:
            with CoordinatorClient(_client_config(pki, server.token_port, token)) as client:
                permit = client.register_permit(document)
                study = client.submit(spec(permit="by-token"))
                return permit.registered_by, study.submitted_by, [s.id for s in client.list()]

        registered_by, submitted_by, listed = await asyncio.to_thread(researcher)
        assert (registered_by, submitted_by) == ("researcher alice", "alice")
        assert len(listed) == 1
        assert (await node.expect("task_assignment")).task_assignment.requested_by == "alice"
        await node.close()

        # The token is re-read on every call: a refreshed one is used at once, a stale one not.
        auditor_token = issuer.write_token(tmp_path / "auditor.jwt", "audit", "auditor")

        def auditor() -> list[bytes]:
            with CoordinatorClient(_client_config(pki, server.token_port, auditor_token)) as c:
                lines = list(c.export_audit())
                issuer.write_token(auditor_token, "audit", "auditor", expires_in=-120)
                with pytest.raises(AccessDeniedError, match=r"token\.expired"):
                    list(c.export_audit())
                return lines

        entries = [AuditEntry.parse(line) for line in await asyncio.to_thread(auditor)]
        actors = {e.actor for e in entries if e.action == "rpc StudyApi/Submit"}
        assert actors == {"researcher alice"}
        registered = [e for e in entries if e.action == "permit.registered"]
        assert registered[-1].actor == "researcher alice"

    _run(tmp_path, body)


def test_coordinator_never_opens_node_link_to_a_token(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki, issuer: LocalIssuer) -> None:
        for token in (
            issuer.mint("node-a", "researcher"),
            issuer.mint("node-a", "node"),  # a token never names a node
        ):
            channel = _token_channel(server.token_port, pki, token)
            try:
                call = node_link_pb2_grpc.NodeLinkStub(channel).Connect()
                hello = node_link_pb2.NodeMessage(
                    hello=node_link_pb2.Hello(
                        protocol_version=common_pb2.ProtocolVersion(major=1, minor=3),
                        profile=serde.encode_profile(profile()),
                    )
                )

                async def connect(call: Any = call, hello: Any = hello) -> None:
                    await call.write(hello)
                    await call.read()

                error = await rpc_error(connect())
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED
                assert "tokens are not accepted" in (error.details() or "")
            finally:
                await channel.close()

        # The other services refuse a token that is not valid, naming the failed check.
        expired = _token_channel(
            server.token_port, pki, issuer.mint("alice", "researcher", expires_in=-120)
        )
        forged = _token_channel(server.token_port, pki, issuer.mint_hmac_with_public_key())
        try:
            for channel, check in ((expired, "token.expired"), (forged, "token.algorithm")):
                error = await rpc_error(Caller("", None, channel).get("x"))
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED
                assert check in (error.details() or "")
        finally:
            await expired.close()
            await forged.close()

        # A role the token does not grant: PERMISSION_DENIED, like a certificate's.
        researcher = _token_channel(server.token_port, pki, issuer.mint("alice", "researcher"))
        try:
            error = await rpc_error(Caller("", None, researcher).list_nodes())
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        finally:
            await researcher.close()

        # The certificate port takes no token (no client certificate: no handshake).
        def on_main_port() -> None:
            token = issuer.write_token(tmp_path / "t.jwt", "alice", "researcher")
            with (
                CoordinatorClient(_client_config(pki, server.port, token), timeout=3) as client,
                pytest.raises(CoordinatorUnavailableError),
            ):
                client.list()

        await asyncio.to_thread(on_main_port)

    _run(tmp_path, body)


def test_client_token_configuration(tmp_path: Path, pki_ca: Path) -> None:
    config = ClientConfig(
        coordinator=CoordinatorEndpoint(address="localhost:1"),
        tls=ServerTls(ca=pki_ca),
        token_file=tmp_path / "missing.jwt",
    )
    assert config.uses_token({})
    with pytest.raises(TokenError, match="cannot read the token file"):
        config.token({})
    assert config.token({"EHDS_TOKEN": " from-env \n"}) == "from-env"
    (tmp_path / "empty.jwt").write_text("\n")
    empty = config.model_copy(update={"token_file": tmp_path / "empty.jwt"})
    with pytest.raises(TokenError, match="is empty"):
        CoordinatorClient(empty)
    without = config.model_copy(update={"token_file": None})
    assert without.uses_token({"EHDS_TOKEN": "t"})
    assert not without.uses_token({})


@pytest.fixture
def pki_ca(tmp_path: Path) -> Path:
    return make_pki(tmp_path, nodes=()).tls("coordinator").ca


def test_coordinator_config_needs_a_token_port_with_oidc(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, nodes=())
    oidc = LocalIssuer(tmp_path).config()
    with pytest.raises(pydantic.ValidationError, match="token_listen: required"):
        CoordinatorConfig(tls=pki.tls("coordinator"), oidc=oidc)
    with pytest.raises(pydantic.ValidationError, match="token_listen: only with oidc"):
        CoordinatorConfig(tls=pki.tls("coordinator"), token_listen=Listen(port=0))
