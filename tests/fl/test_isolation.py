"""Network isolation of Flower host processes: each layer alone, then both together.

Every check runs in a fresh interpreter: a network namespace cannot be left once entered,
and an audit hook cannot be removed. A control run proves the listener is reachable
without isolation, so a refused connection means the isolation worked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehds.fl.isolation import host_environment

PROBE = textwrap.dedent(
    """
    import json, socket, sys
    from ehds.fl import isolation
    mode = sys.argv[1]
    port = int(sys.argv[2])
    unix_path = sys.argv[3]
    result = {}
    if mode == "netns":
        result["isolated"] = isolation.unshare_network()
    elif mode == "audit":
        isolation.install_network_audit_hook()
    elif mode == "both":
        result["isolation"] = isolation.isolate()

    def attempt(name, action):
        try:
            action()
            result[name] = "ok"
        except OSError as error:
            result[name] = type(error).__name__

    def connect():
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass

    def unix_pair():
        left, right = socket.socketpair()
        left.sendall(b"x")
        assert right.recv(1) == b"x"
        left.close()
        right.close()

    attempt("connect", connect)
    attempt("resolve", lambda: socket.getaddrinfo("localhost", 80))
    attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
    def unix_connect():
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(unix_path)
        finally:
            client.close()

    attempt("unix", unix_pair)
    attempt("unix-connect", unix_connect)
    print(json.dumps(result))
    """
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A TCP listener on 127.0.0.1 and a Unix one in the filesystem (like a database's)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    unix_path = str(tmp_path / "db.sock")
    unix_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_server.bind(unix_path)
    unix_server.listen(8)
    try:
        yield int(server.getsockname()[1]), unix_path
    finally:
        server.close()
        unix_server.close()


def _probe(mode: str, listener: tuple[int, str]) -> dict[str, object]:
    port, unix_path = listener
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(port), unix_path],
        capture_output=True,
        text=True,
        timeout=30,
        env=host_environment(),
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_control_without_isolation_reaches_the_listeners(listener: tuple[int, str]) -> None:
    result = _probe("none", listener)
    assert result["connect"] == "ok"
    assert result["unix-connect"] == "ok"
    assert result["unix"] == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (CI and here)")
def test_network_namespace_alone_cuts_tcp_to_localhost(listener: tuple[int, str]) -> None:
    result = _probe("netns", listener)
    assert result["isolated"] is True
    assert result["connect"] != "ok"
    assert result["unix"] == "ok"


def test_audit_hook_alone_refuses_connect_bind_and_resolve(listener: tuple[int, str]) -> None:
    result = _probe("audit", listener)
    assert result["connect"] == "NetworkRefusedError"
    assert result["resolve"] == "NetworkRefusedError"
    assert result["bind"] == "NetworkRefusedError"
    assert result["unix-connect"] == "NetworkRefusedError"
    assert result["unix"] == "ok"  # an anonymous pair is neither bound nor connected


def test_isolate_applies_both_layers(listener: tuple[int, str]) -> None:
    result = _probe("both", listener)
    expected = "netns+audit" if os.geteuid() == 0 else result["isolation"]
    assert result["isolation"] == expected
    assert result["connect"] == "NetworkRefusedError"
    assert result["unix"] == "ok"


def test_host_environment_drops_secrets_and_turns_flower_telemetry_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EHDS_DATABASE_URL", "postgresql://secret")
    env = host_environment({"EXTRA": "1"})
    assert "EHDS_DATABASE_URL" not in env
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["EXTRA"] == "1"
