"""The node agent's handle on its ClientApp worker process (ehds.fl.client_worker).

Synchronous and thread-safe: the node's task threads hand messages to the worker one at a
time. Every wait is bounded by a deadline and blocks in poll(2) on the pipe, never in a sleep
loop, so a round costs the worker's compute and a pipe round trip, nothing more. A worker that
overruns its deadline is killed (its state is unknown); one that dies is reported as such.
Standard library only: the node agent does not import Flower.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ehds.fl.frames import decode_body, encode_frame, frame_length
from ehds.fl.isolation import host_environment

_log = logging.getLogger("ehds.fl.client_host")
_STDERR_TAIL_LINES = 200


class WorkerError(Exception):
    """A message the worker could not answer; ``code`` is a policy-style rule name.

    "fl.client_error" (the ClientApp raised or did not load), "fl.worker_died",
    "fl.timeout" (the worker was killed), "fl.bundle_unknown" (digest mismatch),
    "fl.bundle_invalid" (malformed bundle), "fl.bad_message" (not a message for this node).
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Pipe:
    """Frame reader/writer over the worker's pipes with deadlines (poll, no sleeps)."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd
        os.set_blocking(write_fd, False)
        self._buffer = bytearray()
        self._reader = select.poll()
        self._reader.register(read_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._writer = select.poll()
        self._writer.register(write_fd, select.POLLOUT | select.POLLHUP | select.POLLERR)

    @staticmethod
    def _wait_ms(deadline: float) -> int:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return max(1, math.ceil(remaining * 1000))

    def write(self, frame: Mapping[str, Any], deadline: float) -> None:
        view = memoryview(encode_frame(frame))
        while view:
            self._writer.poll(self._wait_ms(deadline))
            try:
                written = os.write(self._write_fd, view)
            except BlockingIOError:
                continue
            view = view[written:]

    def _fill(self, size: int, deadline: float) -> bool:
        while len(self._buffer) < size:
            if not self._reader.poll(self._wait_ms(deadline)):
                continue
            chunk = os.read(self._read_fd, max(1 << 16, size - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next frame; None at end of stream; TimeoutError past the deadline."""
        if not self._fill(4, deadline):
            return None
        length = frame_length(bytes(self._buffer[:4]))
        if not self._fill(4 + length, deadline):
            return None
        body = bytes(self._buffer[4 : 4 + length])
        del self._buffer[: 4 + length]
        return decode_body(body)


def _drain(stream: IO[bytes], tail: collections.deque[str]) -> None:
    """Keep the worker's log off the pipe buffer: last lines kept, each logged at DEBUG."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        _log.debug("worker: %s", line)


class ClientWorker:
    """One running ClientApp worker; see the module docstring."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        self._process = process
        self._pipe = _Pipe(process.stdin.fileno(), process.stdout.fileno())
        self._lock = threading.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._stderr_thread = threading.Thread(
            target=_drain,
            args=(process.stderr, self._stderr_tail),
            daemon=True,
            name=f"fl-worker-stderr-{process.pid}",
        )
        self._stderr_thread.start()
        self.isolation = ""
        self.pid = process.pid

    @classmethod
    def start(
        cls,
        *,
        fab_path: Path,
        sha256: str,
        app_dir: Path,
        node_id: int,
        node_config: Mapping[str, Any],
        run_config: Mapping[str, Any],
        run_id: int,
        timeout: float = 60.0,
        python: str = sys.executable,
    ) -> ClientWorker:
        """Start a worker and wait (at most ``timeout`` s) until its ClientApp is loaded."""
        deadline = time.monotonic() + timeout
        work_dir = app_dir.parent
        work_dir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [python, "-m", "ehds.fl.client_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work_dir,
            env=host_environment(),
            close_fds=True,
        )
        worker = cls(process)
        try:
            worker._pipe.write(
                {
                    "op": "start",
                    "fab_path": str(fab_path),
                    "sha256": sha256,
                    "app_dir": str(app_dir),
                    "node_id": node_id,
                    "node_config": dict(node_config),
                    "run_config": dict(run_config),
                    "run_id": run_id,
                },
                deadline,
            )
            frame = worker._pipe.read(deadline)
        except TimeoutError:
            worker.stop()
            raise WorkerError("fl.timeout") from None
        except (OSError, ValueError):
            worker.stop()
            raise WorkerError("fl.worker_died") from None
        op = frame.get("op") if frame else None
        if frame is not None and op == "ready":
            worker.isolation = str(frame.get("isolation", ""))
            return worker
        worker.stop()
        if frame is not None and op == "refused":
            raise WorkerError(str(frame.get("rule", "fl.bundle_unknown")))
        if frame is not None and op == "failed":
            raise WorkerError(str(frame.get("code", "fl.client_error")))
        raise WorkerError("fl.worker_died")

    def handle(self, message: bytes, timeout: float) -> bytes:
        """The encoded reply of the ClientApp to one encoded message."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._process.poll() is not None:
                raise WorkerError("fl.worker_died")
            try:
                self._pipe.write(
                    {"op": "message", "message": base64.b64encode(message).decode("ascii")},
                    deadline,
                )
                frame = self._pipe.read(deadline)
            except TimeoutError:
                self._kill()
                raise WorkerError("fl.timeout") from None
            except (OSError, ValueError):
                self._kill()
                raise WorkerError("fl.worker_died") from None
            if frame is None:
                self._kill()
                raise WorkerError("fl.worker_died")
            if frame.get("op") == "reply":
                try:
                    return base64.b64decode(str(frame["message"]), validate=True)
                except (KeyError, ValueError):
                    self._kill()
                    raise WorkerError("fl.worker_died") from None
            if frame.get("op") == "error":
                raise WorkerError(str(frame.get("code", "fl.client_error")))
            self._kill()
            raise WorkerError("fl.worker_died")

    def alive(self) -> bool:
        """Whether the worker process is still running."""
        return self._process.poll() is None

    def stderr_tail(self) -> list[str]:
        """The worker's last log lines (for diagnosis on the node only)."""
        return list(self._stderr_tail)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5.0)

    def stop(self) -> None:
        """End the worker: end of stdin when idle (it exits), kill when busy or slow."""
        if self._lock.acquire(timeout=0.05):
            try:
                with contextlib.suppress(OSError):
                    self._pipe.write({"op": "stop"}, time.monotonic() + 0.5)
                with contextlib.suppress(OSError):
                    assert self._process.stdin is not None
                    self._process.stdin.close()
                try:
                    self._process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self._kill()
            except TimeoutError:
                self._kill()
            finally:
                self._lock.release()
        else:
            self._kill()
        self._kill()
        self._stderr_thread.join(timeout=2.0)
        if self._lock.acquire(timeout=5.0):
            try:
                for stream in (self._process.stdout, self._process.stderr):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            finally:
                self._lock.release()
