"""The node's federated-learning clients: one long-lived, network-isolated worker per study.

Why a worker process per study, started by the join and kept: the ClientApp is code from a
bundle, not ours. It runs in a child process (`ehds.fl.client_worker`) that cuts its own
network before it imports anything from the bundle, reads only the study's feature extract
(never the CDM, whose location it is not told), and is fed one Flower message per task by
this module; keeping it between rounds avoids Flower's start-up cost per message (about a
second and 130 MB each, measured) and keeps the ClientApp's context across rounds.

Everything a worker sends back passes through here: unless the policy releases metrics,
only the model update and the example count the strategy weights by leave the node. A
bundle is checked against the policy (name, version, SHA-256) at the join and again whenever
a worker is started after a node restart, before any of its code runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehds.analyses.base import DisclosureRefusedError
from ehds.fl.client_host import ClientWorker, WorkerError
from ehds.fl.ids import node_id_for, run_id_for
from ehds.node.policy import FlPolicy

log = logging.getLogger(__name__)

FAB_FILE = "app.fab"
EXTRACT_FILE = "extract.parquet"
SESSION_FILE = "session.json"
START_TIMEOUT_S = 120.0
IDLE_WORKER_S = 1800.0
"""A worker without a message for this long is stopped (started again on the next one)."""


class FlWorkerError(RuntimeError):
    """The study's ClientApp worker failed (a code from `ehds.fl.client_host.WorkerError`:
    ``fl.client_error``, ``fl.worker_died``, ``fl.timeout``); never a message from its code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Session:
    worker: ClientWorker
    lock: threading.Lock
    used: float


def _study_folder_name(study_id: str) -> str:
    return hashlib.sha256(study_id.encode("utf-8")).hexdigest()[:24]


class FlSessions:
    """`ehds.analyses.base.FlRuntime` for this node (see the module docstring)."""

    def __init__(
        self,
        *,
        node_name: str,
        policy: Callable[[], FlPolicy],
        base_dir: Path,
        python: str = sys.executable,
    ) -> None:
        self._node_name = node_name
        self._policy = policy
        self._base_dir = base_dir
        self._python = python
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ FlRuntime

    @property
    def min_rows(self) -> int:
        return self._policy().min_rows

    @property
    def min_events(self) -> int:
        return self._policy().min_events

    def check_app(self, name: str, version: str, fab: bytes) -> None:
        policy = self._policy()
        if not policy.allows(name, version):
            raise DisclosureRefusedError(
                "fl.app_not_allowed",
                "fl.app_not_allowed: this node's policy does not allow this Flower app and version",
            )
        if not policy.allows_bundle(name, version, hashlib.sha256(fab).hexdigest()):
            raise DisclosureRefusedError(
                "fl.bundle_unknown",
                "fl.bundle_unknown: the bundle's SHA-256 is not on this node's allow-list",
            )

    def extract_path(self, study_id: str) -> Path:
        folder = self._folder(study_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / EXTRACT_FILE

    def start(
        self, study_id: str, *, fab: bytes, extract: Path, run_config: Mapping[str, Any]
    ) -> str:
        folder = self._folder(study_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FAB_FILE).write_bytes(fab)
        (folder / SESSION_FILE).write_text(
            json.dumps({"run_config": dict(run_config), "extract": str(extract)}),
            encoding="utf-8",
        )
        with self._lock:
            existing = self._sessions.pop(study_id, None)
        if existing is not None:
            existing.worker.stop()
        return self._start_worker(study_id).worker.isolation

    def deliver(self, study_id: str, message: bytes) -> bytes:
        session = self._session(study_id)
        policy = self._policy()
        with session.lock:
            session.used = time.monotonic()
            try:
                reply = session.worker.handle(message, timeout=policy.message_timeout_seconds)
            except WorkerError as exc:
                log.warning("study %s: the ClientApp worker failed (%s)", study_id, exc.code)
                if not session.worker.alive():
                    with self._lock:
                        if self._sessions.get(study_id) is session:
                            del self._sessions[study_id]
                raise FlWorkerError(exc.code) from None
            session.used = time.monotonic()
        if policy.release_metrics:
            return reply
        # Local import: the codec loads Flower, which an idle node never needs.
        from ehds.fl.codec import decode_message, encode_message, filter_metrics  # noqa: PLC0415

        return encode_message(filter_metrics(decode_message(reply), ()))

    # ------------------------------------------------------------------ upkeep

    def stop_idle(self, idle_seconds: float = IDLE_WORKER_S) -> int:
        """Stop the workers without a message for ``idle_seconds``; returns how many."""
        cutoff = time.monotonic() - idle_seconds
        with self._lock:
            idle = [sid for sid, s in self._sessions.items() if s.used < cutoff]
            sessions = [self._sessions.pop(sid) for sid in idle]
        for session in sessions:
            session.worker.stop()
        return len(sessions)

    def forget(self, study_id: str) -> None:
        """Stop the study's worker and delete its extract and bundle."""
        with self._lock:
            session = self._sessions.pop(study_id, None)
        if session is not None:
            session.worker.stop()
        shutil.rmtree(self._folder(study_id), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.worker.stop()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._sessions)

    # ------------------------------------------------------------------ internals

    def _folder(self, study_id: str) -> Path:
        return self._base_dir / _study_folder_name(study_id)

    def _session(self, study_id: str) -> _Session:
        with self._lock:
            session = self._sessions.get(study_id)
        if session is not None and session.worker.alive():
            return session
        # After a node restart (or an idle stop): start the worker again from what the join
        # left, once the policy in force still allows the bundle.
        folder = self._folder(study_id)
        fab_path = folder / FAB_FILE
        if not fab_path.exists() or not (folder / SESSION_FILE).exists():
            raise DisclosureRefusedError(
                "fl.not_joined", "fl.not_joined: this node has not joined this study"
            )
        return self._start_worker(study_id)

    def _start_worker(self, study_id: str) -> _Session:
        folder = self._folder(study_id)
        fab_path = folder / FAB_FILE
        saved = json.loads((folder / SESSION_FILE).read_text(encoding="utf-8"))
        digest = hashlib.sha256(fab_path.read_bytes()).hexdigest()
        if not any(app.sha256 == digest for app in self._policy().apps):
            raise DisclosureRefusedError(
                "fl.bundle_unknown",
                "fl.bundle_unknown: the bundle's SHA-256 is not on this node's allow-list",
            )
        app_dir = folder / "app"
        shutil.rmtree(app_dir, ignore_errors=True)
        try:
            worker = ClientWorker.start(
                fab_path=fab_path,
                sha256=digest,
                app_dir=app_dir,
                node_id=node_id_for(self._node_name),
                node_config={"data-path": saved["extract"], "node-name": self._node_name},
                run_config=saved["run_config"],
                run_id=run_id_for(study_id),
                timeout=START_TIMEOUT_S,
                python=self._python,
            )
        except WorkerError as exc:
            if exc.code == "fl.bundle_unknown":
                raise DisclosureRefusedError(
                    "fl.bundle_unknown",
                    "fl.bundle_unknown: the bundle's SHA-256 is not on this node's allow-list",
                ) from None
            raise FlWorkerError(exc.code) from None
        log.info(
            "study %s: ClientApp worker %d started (isolation: %s)",
            study_id,
            worker.pid,
            worker.isolation,
        )
        session = _Session(worker=worker, lock=threading.Lock(), used=time.monotonic())
        with self._lock:
            previous = self._sessions.get(study_id)
            self._sessions[study_id] = session
        if previous is not None and previous is not session:
            previous.worker.stop()
        return session
