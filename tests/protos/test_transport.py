"""`ehds.federation.transport` against a real grpc.aio server on 127.0.0.1.

Why real servers: the settings in `transport` only matter if grpc-core honours them (mutual TLS,
the identity in `auth_context()`, the HTTP CONNECT proxy), and a mistake in an option's name is
silently ignored by gRPC. grpc.aio runs under `asyncio.run` inside plain tests (no
pytest-asyncio in this project).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest

from ehds.core.netconfig import Keepalive, TlsFiles
from ehds.federation.transport import (
    INSECURE_WARNING,
    TlsFilesError,
    channel_options,
    client_credentials,
    peer_certificate_pem,
    peer_identity,
    server_credentials,
    server_options,
)
from ehds.pki import Role, init_authority, issue_certificate

SERVICE = "ehds.test.Whoami"
METHOD = f"/{SERVICE}/Get"
TIMEOUT_S = 10.0
KEEPALIVE = Keepalive(time_seconds=30, timeout_seconds=10)

# Proxy settings from the environment would change where the channels below connect.
_PROXY_ENVIRONMENT = (
    "grpc_proxy",
    "https_proxy",
    "http_proxy",
    "no_grpc_proxy",
    "no_proxy",
    "GRPC_PROXY",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def _tls(folder: Path, name: str) -> TlsFiles:
    issued = folder / "issued"
    return TlsFiles(
        certificate=issued / f"{name}.pem", key=issued / f"{name}.key", ca=issued / "ca.pem"
    )


@dataclass(frozen=True)
class Pki:
    coordinator: TlsFiles
    node: TlsFiles
    researcher: TlsFiles
    rogue_node: TlsFiles


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    real = tmp_path / "pki"
    init_authority(real, "eu-cancer")
    issue_certificate(real, Role.COORDINATOR, "central")
    issue_certificate(real, Role.NODE, "hospital-a")
    issue_certificate(real, Role.RESEARCHER, "alice")
    rogue = tmp_path / "rogue"
    init_authority(rogue, "eu-cancer")
    issue_certificate(rogue, Role.NODE, "hospital-a")
    # The rogue node trusts the real CA, so it does reach the real coordinator.
    rogue_tls = _tls(rogue, "hospital-a").model_copy(update={"ca": real / "issued" / "ca.pem"})
    return Pki(
        coordinator=_tls(real, "central"),
        node=_tls(real, "hospital-a"),
        researcher=_tls(real, "alice"),
        rogue_node=rogue_tls,
    )


def _raw(message: bytes) -> bytes:
    return message


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    identity = peer_identity(context)
    pem = peer_certificate_pem(context)
    assert pem is not None
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert identity is not None
    return f"{identity.name}/{identity.role.value}".encode()


@contextlib.asynccontextmanager
async def _server(tls: TlsFiles) -> AsyncIterator[int]:
    server = grpc.aio.server(options=server_options(KEEPALIVE))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Get": grpc.unary_unary_rpc_method_handler(
                        _whoami, request_deserializer=_raw, response_serializer=_raw
                    )
                },
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    assert port > 0
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _call(
    target: str, tls: TlsFiles, *, server_name: str | None = None, proxy: str | None = None
) -> bytes:
    options = channel_options(KEEPALIVE, server_name=server_name, proxy=proxy)
    async with grpc.aio.secure_channel(target, client_credentials(tls), options=options) as ch:
        call = ch.unary_unary(METHOD, request_serializer=_raw, response_deserializer=_raw)
        reply = await call(b"", timeout=TIMEOUT_S)
        assert isinstance(reply, bytes)
        return reply


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 3 * TIMEOUT_S)

    asyncio.run(bounded())


# --------------------------------------------------------------------------- mutual TLS


def test_peer_identity_names_the_client_from_its_certificate(pki: Pki) -> None:
    async def scenario() -> None:
        async with _server(pki.coordinator) as port:
            assert await _call(f"127.0.0.1:{port}", pki.node) == b"hospital-a/node"
            assert await _call(f"127.0.0.1:{port}", pki.researcher) == b"alice/researcher"

    _run(scenario)


def test_server_name_overrides_the_name_checked_in_the_server_certificate(pki: Pki) -> None:
    # The coordinator's certificate names localhost and 127.0.0.1, not 127.0.0.2.
    async def scenario() -> None:
        async with _server(pki.coordinator) as port:
            with pytest.raises(grpc.RpcError) as failure:
                await _call(f"127.0.0.1:{port}", pki.node, server_name="elsewhere.example")
            assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
            reply = await _call(f"127.0.0.1:{port}", pki.node, server_name="localhost")
            assert reply == b"hospital-a/node"

    _run(scenario)


def test_a_client_certificate_from_another_ca_is_refused_at_the_handshake(pki: Pki) -> None:
    async def scenario() -> None:
        async with _server(pki.coordinator) as port:
            with pytest.raises(grpc.RpcError) as failure:
                await _call(f"127.0.0.1:{port}", pki.rogue_node)
            assert failure.value.code() is grpc.StatusCode.UNAVAILABLE

    _run(scenario)


def test_an_unreadable_tls_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsFilesError, match=r"missing\.pem"):
        client_credentials(pki.node.model_copy(update={"certificate": missing}))
    with pytest.raises(TlsFilesError, match=r"missing\.pem"):
        server_credentials(pki.coordinator.model_copy(update={"ca": missing}))


def test_a_context_without_a_client_certificate_has_no_identity() -> None:
    class Context:
        def __init__(self, auth: dict[str, object]) -> None:
            self._auth = auth

        def auth_context(self) -> dict[str, object]:
            return self._auth

    assert peer_identity(Context({})) is None
    assert peer_certificate_pem(Context({"x509_pem_cert": []})) is None
    assert peer_identity(Context({"x509_pem_cert": [b"not a certificate"]})) is None


# --------------------------------------------------------------------------- options


def test_options_set_keepalive_and_never_raise_message_limits() -> None:
    keepalive = Keepalive(time_seconds=20, timeout_seconds=5)
    client = dict(channel_options(keepalive, server_name=None, proxy=None))
    assert client == {
        "grpc.keepalive_time_ms": 20_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.ping_timeout_ms": 5_000,
        "grpc.http2.max_pings_without_data": 0,
    }
    client = dict(channel_options(keepalive, server_name="coord", proxy="http://proxy:3128"))
    assert client["grpc.ssl_target_name_override"] == "coord"
    assert client["grpc.http_proxy"] == "http://proxy:3128"
    server = dict(server_options(keepalive))
    assert server["grpc.keepalive_time_ms"] == 20_000
    assert server["grpc.keepalive_timeout_ms"] == 5_000
    assert server["grpc.http2.ping_timeout_ms"] == 5_000
    assert server["grpc.keepalive_permit_without_calls"] == 1
    min_interval = server["grpc.http2.min_ping_interval_without_data_ms"]
    assert isinstance(min_interval, int)
    assert min_interval <= 20_000
    for name in (*client, *server):
        assert "message_length" not in name
        assert "message_size" not in name
    assert "--insecure" in INSECURE_WARNING


# --------------------------------------------------------------------------- HTTP CONNECT proxy


@dataclass
class ConnectProxy:
    """A minimal HTTP CONNECT proxy that records the tunnels it opened."""

    tunnels: list[str] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        self._writers.append(upstream_writer)
        self.tunnels.append(target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        self._tasks.append(asyncio.create_task(self._pipe(reader, upstream_writer)))
        self._tasks.append(asyncio.create_task(self._pipe(upstream_reader, writer)))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def _connect_proxy() -> AsyncIterator[tuple[str, ConnectProxy]]:
    proxy = ConnectProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        server.close()
        await proxy.close()
        await server.wait_closed()


def test_the_proxy_option_tunnels_through_http_connect_even_to_loopback(pki: Pki) -> None:
    async def scenario() -> None:
        async with _server(pki.coordinator) as port, _connect_proxy() as (url, proxy):
            target = f"127.0.0.1:{port}"
            assert await _call(target, pki.node, proxy=url) == b"hospital-a/node"
            assert proxy.tunnels == [target]
            # Without the option the channel connects directly.
            assert await _call(target, pki.node) == b"hospital-a/node"
            assert proxy.tunnels == [target]

    _run(scenario)


def test_the_proxy_option_overrides_the_environment(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with (
            _server(pki.coordinator) as port,
            _connect_proxy() as (url, proxy),
            _connect_proxy() as (environment_url, environment_proxy),
        ):
            monkeypatch.setenv("https_proxy", environment_url)
            target = f"127.0.0.1:{port}"
            assert await _call(target, pki.node, proxy=url) == b"hospital-a/node"
            assert proxy.tunnels == [target]
            assert environment_proxy.tunnels == []
            # Without the option, https_proxy applies as usual.
            assert await _call(target, pki.node) == b"hospital-a/node"
            assert environment_proxy.tunnels == [target]

    _run(scenario)


def test_every_option_name_is_one_grpc_core_knows() -> None:
    """grpc ignores an option it does not know, silently: a misspelt keepalive setting would
    leave the 5-minute default in force and cut nodes off with "too many pings"."""
    import pathlib

    import grpc

    library = next(pathlib.Path(grpc.__file__).parent.rglob("cygrpc*.so")).read_bytes()
    keepalive = Keepalive(time_seconds=20, timeout_seconds=5)
    names = {
        *dict(channel_options(keepalive, server_name="coord", proxy="http://proxy:3128")),
        *dict(server_options(keepalive)),
    }
    unknown = sorted(name for name in names if name.encode() not in library)
    assert unknown == []
