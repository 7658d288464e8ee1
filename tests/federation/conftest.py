"""An HTTP CONNECT proxy for the federation tests, able to go silent like a broken middlebox.

Hospital networks reach the internet through such proxies, and some of them (or a NAT on the
way) drop a long-lived connection without telling either end: no FIN, no RST, bytes simply stop
flowing. `freeze()` reproduces that on every tunnel open at the time; tunnels opened later work.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest


class ConnectProxy:
    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.tunnels_opened = 0
        self._lock = threading.Lock()
        self._frozen: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        """Stop forwarding on every open tunnel, keeping their sockets open (no FIN)."""
        with self._lock:
            for event in self._frozen:
                event.set()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._server.close()
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pumps blocked in recv
                sock.close()
        self._accept_thread.join(5)
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._tunnel, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _register(self, sock: socket.socket) -> bool:
        """Track a socket for close(); False (and the socket closed) once the proxy is closing."""
        with self._lock:
            if self._closed.is_set():
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _tunnel(self, client: socket.socket) -> None:
        if not self._register(client):
            return
        upstream: socket.socket | None = None
        try:
            upstream = self._open_tunnel(client)
            if upstream is None:
                return
            frozen = threading.Event()
            with self._lock:
                self._frozen.append(frozen)
                self.tunnels_opened += 1
            back = threading.Thread(target=self._pump, args=(upstream, client, frozen), daemon=True)
            self._threads.append(back)
            back.start()
            self._pump(client, upstream, frozen)
            back.join(5)
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _open_tunnel(self, client: socket.socket) -> socket.socket | None:
        request = b""
        while b"\r\n\r\n" not in request:
            try:
                data = client.recv(4096)
            except OSError:
                return None
            if not data:
                return None
            request += data
        line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return None
        host, _, port = line[1].rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return None
        if not self._register(upstream):
            return None
        upstream.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = request.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        return upstream

    def _pump(self, source: socket.socket, target: socket.socket, frozen: threading.Event) -> None:
        while not self._closed.is_set():
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            if frozen.is_set():
                continue  # swallow: the peer never hears of it, and never gets a FIN either
            try:
                target.sendall(data)
            except OSError:
                return


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    proxy = ConnectProxy()
    try:
        yield proxy
    finally:
        proxy.close()
