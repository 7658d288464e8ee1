"""`ehds.core.health.HealthServer` over real HTTP on 127.0.0.1.

Why: probes and Prometheus depend on exact paths, status codes and the exposition format, and a
server thread that leaks its socket would fail every test that uses it (warnings are errors).
"""

from __future__ import annotations

import http.client
import socket

import pytest
from prometheus_client import CollectorRegistry, Counter

from ehds.core.health import HealthServer, HealthServerError

TIMEOUT_S = 5.0


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def test_health_ready_and_metrics() -> None:
    registry = CollectorRegistry()
    tasks = Counter("ehds_test_tasks", "Tasks run.", registry=registry)
    tasks.inc(3)
    ready = False
    with HealthServer("127.0.0.1", 0, registry, lambda: ready) as server:
        assert server.port > 0
        assert _get(server.port, "/healthz")[::2] == (200, b"ok\n")
        assert _get(server.port, "/readyz")[0] == 503
        ready = True
        assert _get(server.port, "/readyz")[0] == 200
        status, content_type, body = _get(server.port, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain")
        assert b"ehds_test_tasks_total 3.0" in body
        assert _get(server.port, "/nothing")[0] == 404


def test_a_failing_readiness_check_means_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("database gone")

    with HealthServer("127.0.0.1", 0, CollectorRegistry(), broken) as server:
        assert _get(server.port, "/readyz")[0] == 503


def test_stop_frees_the_port_and_is_idempotent() -> None:
    server = HealthServer("127.0.0.1", 0, CollectorRegistry(), lambda: True)
    server.stop()
    server.start()
    port = server.port
    server.stop()
    server.stop()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass
    again = HealthServer("127.0.0.1", port, CollectorRegistry(), lambda: True)
    with again:
        assert _get(port, "/healthz")[0] == 200


def test_a_port_in_use_is_a_typed_error() -> None:
    with HealthServer("127.0.0.1", 0, CollectorRegistry(), lambda: True) as first:
        second = HealthServer("127.0.0.1", first.port, CollectorRegistry(), lambda: True)
        with pytest.raises(HealthServerError, match=f"127.0.0.1:{first.port}"):
            second.start()
