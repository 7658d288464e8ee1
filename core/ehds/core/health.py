"""The plain-HTTP health and metrics port of every long-running process.

Why a separate port in plain HTTP: Kubernetes probes, load balancers and Prometheus cannot
present a federation client certificate, and must not need one to learn whether a process is
alive. The port shows no data, only liveness (``/healthz``), readiness (``/readyz``: e.g. the
node is connected to the coordinator) and metrics (``/metrics``), so it binds to 127.0.0.1 unless
configured otherwise. It runs in a daemon thread so that it answers even while the process's
event loop is busy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ehds.core.errors import StateError

__all__ = ["HealthServer", "HealthServerError"]

_TEXT: Final = "text/plain; charset=utf-8"
_STOP_TIMEOUT_S: Final = 5.0


class HealthServerError(StateError):
    """The health port cannot be bound (in use, or not allowed)."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(HTTPStatus.OK, _TEXT, b"ok\n")
        elif path == "/readyz":
            if self._ready():
                self._reply(HTTPStatus.OK, _TEXT, b"ready\n")
            else:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"not ready\n")
        elif path == "/metrics":
            self._reply(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        else:
            self._reply(HTTPStatus.NOT_FOUND, _TEXT, b"not found\n")

    def _ready(self) -> bool:
        try:
            return bool(self.server.ready())
        except Exception:
            # A failing readiness check means not ready; the process's own log has the cause.
            return False

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Probes arrive every few seconds: not worth a line each on stderr."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, ready: Callable[[], bool]
    ) -> None:
        self.registry = registry
        self.ready = ready
        super().__init__(address, _Handler)


class HealthServer:
    """``GET /healthz`` (200 while the process runs), ``GET /readyz`` (200 when ``ready()``,
    else 503) and ``GET /metrics`` (``registry`` in Prometheus' text format).

    Port 0 picks a free port; `port` is the bound one after `start()`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port = port
        self._registry = registry
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        if self._server is not None:
            raise HealthServerError("the health server is already started")
        try:
            server = _Server((self.host, self._requested_port), self._registry, self._ready)
        except OSError as exc:
            raise HealthServerError(
                f"cannot listen on {self.host}:{self._requested_port} for health and metrics: "
                f"{exc.strerror}"
            ) from None
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"health-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and closes the socket; safe to call twice or before `start()`."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(_STOP_TIMEOUT_S)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
