"""Runs tasks on worker threads: validate, compute, store the result or the outcome.

Why threads beside the event loop: an analysis is blocking code (SQL through SQLAlchemy, the
engine's own threads), and a slow or stuck one must never hold up the stream, the heartbeats or
another task. Each task runs on one of ``workers`` daemon threads with its own cancel flag;
a `CancelTask`, its deadline or the node's shutdown sets the flag and interrupts its queries.

Daemon threads rather than `ThreadPoolExecutor`: the executor's threads are joined when the
interpreter exits, so one analysis that ignores its cancel flag would keep a stopped node
alive forever. Here shutdown waits a bounded time, then leaves such a thread to die with the
process (its task runs again at the next start).

The runner reports through `TaskEvents`, called from worker threads and its scheduler thread;
the agent turns those calls into messages on the stream when it has one. Every end of a task is
written to the state database first, so that nothing is lost while the node is disconnected.

Progress is for tasks a researcher waits on: a task that ends within `PROGRESS_AFTER_S` sends
none (each message costs the coordinator a write and a snapshot to every watcher). After that,
the latest stage reported is sent, at most one message per `PROGRESS_EVERY_S`.

Deadlines and delayed progress run on one scheduler thread, not a timer thread per task.

Before anything runs, the site policy admits the task (`ehds.node.admission`: its data permit,
the researcher, the analysis), then the registry, the parameters and the deadline are checked.
Every end is audited with the state change that records it (`ehds.node.state`): a refusal
names its rule, a result is ``held`` for an operator when the policy releases its analysis
``manual``ly, else released at once ("policy auto").

The engine: every task gets its own `IbisCdm` (`ehds.node.task_engines`), opened on first use,
interrupted with the task's other queries on a cancel, its deadline or shutdown, and closed
when the task ends. A `DisclosureRefusedError` ends the task with DISCLOSURE_REFUSED and a
message naming the rule and its threshold (never the value that triggered it).

Differential privacy and workspaces: an analysis the policy lists in ``privacy.required_for``
runs only with a ``privacy`` parameter (else DISCLOSURE_REFUSED, rule ``privacy.required``,
before any data is read); every task gets the node's budget ledger
(`ehds.node.privacy_ledger`) and its study's workspace (`ehds.node.workspaces`) in its
`ComputeContext`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from ehds.analyses.base import (
    Analysis,
    AnalysisParameters,
    ComputeContext,
    DisclosureRefusedError,
    FlRuntime,
    InvalidParametersError,
    JsonObject,
    TaskCancelledError,
    canonical_json,
)
from ehds.analyses.engine import IbisCdm
from ehds.analyses.registry import (
    Registry,
    UnknownAnalysisError,
    UnsupportedAnalysisVersionError,
)
from ehds.federation.limits import MAX_PARAMETERS_BYTES
from ehds.federation.model import ErrorCode, TaskOutcome, TaskStage
from ehds.node.admission import Refusal, admit
from ehds.node.audit_trail import result_stored, task_ended, task_not_admitted
from ehds.node.cdm_access import QueryGuard, SharedCdm, TaskCdm, is_cdm_unavailable
from ehds.node.errors import OUTCOME_MESSAGES, outcome, redacted_traceback
from ehds.node.metrics import NodeMetrics
from ehds.node.policy import ReleaseMode, SitePolicy
from ehds.node.privacy_ledger import LedgerTask, TaskPrivacyLedger, privacy_required
from ehds.node.release_guard import NodeReleaseGuard
from ehds.node.state import NodeState, StoredTask
from ehds.node.task_engines import TaskEngines
from ehds.node.workspaces import StudyWorkspace
from ehds.omop.database import CdmDatabase

if TYPE_CHECKING:
    import ibis.expr.types as ir

log = logging.getLogger(__name__)

RESULT_CONTENT_TYPE: Final = "application/json"

MAX_ATTEMPTS: Final = 3
"""Starts of one task that may end with the node dying (OOM, native crash, SIGKILL) before the
task is given up as INTERNAL: a task that kills its node must not keep it in a restart loop."""


PROGRESS_AFTER_S: Final = 1.0
"""A task sends no progress before it has run this long (none at all if it ends sooner)."""

PROGRESS_EVERY_S: Final = 1.0
"""At most one progress message per task in this many seconds."""


def _now() -> datetime:
    return datetime.now(UTC)


class _Call:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Scheduler:
    """Calls at monotonic times, on one daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, _Call]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> _Call:
        call = _Call(callback, args)
        with self._lock:
            if self._stopped:
                call.cancel()
                return call
            heapq.heappush(self._heap, (when, next(self._seq), call))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="ehds-node-scheduler", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is call:
                self._lock.notify()
        return call

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._heap.clear()
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopped:
                        return
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if self._heap:
                        delay = self._heap[0][0] - time.monotonic()
                        if delay <= 0:
                            call = heapq.heappop(self._heap)[2]
                            break
                        self._lock.wait(delay)
                    else:
                        self._lock.wait()
            try:
                call.callback(*call.args)
            except Exception:
                log.exception("scheduled call failed")


class TaskEvents(Protocol):
    """What the runner tells the agent; called from worker and timer threads."""

    def progress(self, task_id: str, stage: TaskStage, fraction: float) -> None: ...

    def result_ready(self, task_id: str, payload: bytes, content_type: str) -> None:
        """The result is released in the outbox (state database); ``payload`` is that result."""

    def result_held(self, task_id: str) -> None:
        """The result is stored and waits for an operator's release (``release: manual``)."""

    def ended(self, task_outcome: TaskOutcome) -> None:
        """The task ended without a result; the outcome is already stored."""


class _Refusal(Exception):  # noqa: N818 (control flow inside the runner, never raised out)
    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


def disclosure_message(refusal: DisclosureRefusedError) -> str:
    """What leaves the node when it refuses a release: the rule and what it requires."""
    return f"refused by disclosure rule {refusal.rule}: {refusal.message}"


class _AccountedGuard:
    """The node's release guard, counting the aggregate rows it reads from the engine apart
    from the analysis' own (the guard reads two counts per check, never person ids)."""

    def __init__(self, guard: NodeReleaseGuard) -> None:
        self._guard = guard
        self.rows_collected = 0

    def check_population(self, engine: IbisCdm, persons: ir.Table, *, fingerprint: str) -> None:
        before = engine.rows_collected
        try:
            self._guard.check_population(engine, persons, fingerprint=fingerprint)
        finally:
            self.rows_collected += engine.rows_collected - before


def released_rows(released: JsonObject) -> int:
    """How many rows (summarised result) or cells (``person_count``) a result holds."""
    for key in ("rows", "cells"):
        value = released.get(key)
        if isinstance(value, list):
            return len(value)
    return 0


def suppressed_cells(released: JsonObject) -> int:
    """Rows of a summarised result released as suppressed (for the node's metrics)."""
    rows = released.get("rows")
    if not isinstance(rows, list):
        return 0
    return sum(1 for row in rows if isinstance(row, dict) and row.get("suppressed") is True)


@dataclass
class _Handle:
    task: StoredTask
    cancelled: threading.Event = field(default_factory=threading.Event)
    guard: QueryGuard = field(default_factory=QueryGuard)
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: IbisCdm | None = None
    # Why the cancel flag is set: CANCELLED or DEADLINE_EXCEEDED; None with `shutdown`.
    reason: ErrorCode | None = None
    shutdown: bool = False
    started: bool = False
    done: bool = False
    started_at: float = field(default_factory=time.monotonic)
    timer: _Call | None = None
    # Progress: the latest report not sent yet, when the last one was sent, a flush scheduled.
    pending: tuple[TaskStage, float] | None = None
    progress_sent_at: float | None = None
    flush: _Call | None = None

    def stop(self, reason: ErrorCode | None) -> bool:
        """Set the cancel flag (first reason wins); True if the task had not started yet."""
        with self.lock:
            if self.done:
                return False
            if reason is None:
                self.shutdown = True
            elif self.reason is None and not self.shutdown:
                self.reason = reason
            not_started = not self.started
            engine = self.engine
        self.cancelled.set()
        self.guard.interrupt()
        if engine is not None:
            engine.interrupt()
        return not_started


class TaskRunner:
    def __init__(
        self,
        *,
        state: NodeState,
        cdm: CdmDatabase | None,
        engines: TaskEngines,
        registry: Registry,
        policy: Callable[[], SitePolicy],
        node_name: str,
        events: TaskEvents,
        metrics: NodeMetrics,
        workers: int,
        clock: Callable[[], datetime] = _now,
        fl: FlRuntime | None = None,
    ) -> None:
        self._state = state
        self._fl = fl
        self._cdm = cdm
        self._engines = engines
        self._registry = registry
        self._policy = policy
        self._node_name = node_name
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._worker_count = workers
        self._queue: queue.SimpleQueue[_Handle | None] = queue.SimpleQueue()
        self._handles: dict[str, _Handle] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._scheduler = _Scheduler()
        self._shared_cdm = SharedCdm(cdm) if cdm is not None else None

    def start(self) -> None:
        for number in range(self._worker_count):
            thread = threading.Thread(
                target=self._work, name=f"ehds-node-task-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def active(self) -> set[str]:
        """Tasks submitted and not yet ended."""
        with self._lock:
            return set(self._handles)

    def submit(self, task: StoredTask) -> bool:
        """Queue a stored task; False if it is already queued or running, or during shutdown."""
        with self._lock:
            if self._stopping or task.task_id in self._handles:
                return False
            handle = _Handle(task)
            self._handles[task.task_id] = handle
        remaining = (task.deadline - self._clock()).total_seconds()
        handle.timer = self._scheduler.at(
            time.monotonic() + max(0.0, remaining), self._expire, handle
        )
        self._queue.put(handle)
        return True

    def cancel(self, task_id: str) -> bool:
        """Stop a queued or running task with ERROR_CODE_CANCELLED; False if it is not active."""
        with self._lock:
            handle = self._handles.get(task_id)
        if handle is None:
            return False
        if handle.stop(ErrorCode.CANCELLED):
            # Not started: end it now rather than when a worker frees up.
            self._finish(handle, ErrorCode.CANCELLED)
        return True

    def _expire(self, handle: _Handle) -> None:
        if handle.stop(ErrorCode.DEADLINE_EXCEEDED):
            self._finish(handle, ErrorCode.DEADLINE_EXCEEDED)

    def shutdown(self, timeout: float) -> bool:
        """Stop every task without recording an end (they run again at the next start) and wait
        up to ``timeout`` seconds for the workers; False if one did not stop in time."""
        with self._lock:
            self._stopping = True
            handles = list(self._handles.values())
        self._scheduler.stop()
        for handle in handles:
            handle.stop(None)
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            log.warning(
                "%d task worker(s) did not stop within %.0f s; their tasks run again at the "
                "next start",
                len(stuck),
                timeout,
            )
        else:
            if self._shared_cdm is not None:
                self._shared_cdm.close()
            self._engines.close()
        return not stuck

    # ----------------------------------------------------------------------- worker side

    def _work(self) -> None:
        while (handle := self._queue.get()) is not None:
            try:
                self._run(handle)
            except Exception:
                # _run handles everything; this is a last guard that keeps the worker alive.
                log.exception("task %s: unexpected failure in the runner", handle.task.task_id)

    def _run(self, handle: _Handle) -> None:
        task = handle.task
        with handle.lock:
            if handle.done or handle.shutdown:
                return
            handle.started = True
            handle.started_at = time.monotonic()
        site = self._policy()
        denied = admit(
            site,
            node=self._node_name,
            analysis=task.analysis,
            researcher=task.requested_by,
            permit=task.permit_document or b"",
            now=self._clock(),
        )
        if denied is not None:
            log.info(
                "task %s: %s refused by site policy %s: %s",
                task.task_id,
                task.analysis,
                site.version,
                denied.rule,
            )
            self._finish(handle, denied.code, message=denied.message, refusal=denied)
            return
        attempt = self._state.start_attempt(task.task_id, site.version)
        if attempt > MAX_ATTEMPTS:
            log.error(
                "task %s (%s) was started %d times without ending (the node died while "
                "running it?); giving it up",
                task.task_id,
                task.analysis,
                attempt - 1,
            )
            self._finish(handle, ErrorCode.INTERNAL)
            return
        log.info("task %s: running %s (attempt %d)", task.task_id, task.analysis, attempt)
        self._progress(handle, TaskStage.VALIDATING, 0.0)
        engine: IbisCdm | None = None
        try:
            analysis, params, min_cell_count = self._validate(task, site)
            if (
                site.policy.privacy.requires(task.analysis.name)
                and getattr(params, "privacy", None) is None
            ):
                raise privacy_required()
            engine = self._engine_for(handle)
            guard = _AccountedGuard(
                NodeReleaseGuard(task.permit, task.requested_by, min_cell_count)
            )
            context = ComputeContext(
                cdm=(
                    TaskCdm.of(self._cdm, handle.guard, self._shared_cdm)
                    if self._cdm is not None
                    else None
                ),
                min_cell_count=min_cell_count,
                cancelled=handle.cancelled,
                report=lambda stage, fraction: self._progress(handle, stage, fraction),
                engine=engine,
                release_guard=guard,
                workspace=StudyWorkspace(self._state, task.study_id, clock=self._clock),
                privacy=TaskPrivacyLedger(
                    self._state,
                    LedgerTask(
                        task_id=task.task_id,
                        permit=task.permit,
                        researcher=task.requested_by,
                        study_id=task.study_id,
                        analysis=str(task.analysis),
                    ),
                    lambda: self._policy().policy.privacy.budget,
                    clock=self._clock,
                ),
                study_id=task.study_id,
                fl=self._fl,
            )
            released = analysis.compute(params, context)
            with handle.lock:
                if handle.reason is not None:
                    raise TaskCancelledError
            payload = canonical_json(released)
        except _Refusal as refusal:
            self._finish(handle, refusal.code)
        except DisclosureRefusedError as refusal:
            self._refused(handle, refusal)
        except Exception as exc:
            self._failed(handle, exc)
        else:
            self._count_suppressed(task, released)
            if engine is not None and engine.is_open:
                # Rows the analysis brought out of the engine, beside the rows it released: the
                # first never exceeds the second (tests read this line; it holds no data).
                log.info(
                    "task %s: rows collected from the engine: %d by the analysis, %d by the "
                    "release guard; %d released",
                    task.task_id,
                    engine.rows_collected - guard.rows_collected,
                    guard.rows_collected,
                    released_rows(released),
                )
            self._finish(handle, None, payload)
        finally:
            if engine is not None:
                self._close_engine(task, engine)

    def _engine_for(self, handle: _Handle) -> IbisCdm:
        """The task's engine (opened on first use), known to ``handle`` for interrupts."""
        engine = self._engines.task_engine()
        with handle.lock:
            handle.engine = engine
            stopped = handle.cancelled.is_set()
        if stopped:  # stopped before the engine existed: it never opens
            engine.interrupt()
        return engine

    def _close_engine(self, task: StoredTask, engine: IbisCdm) -> None:
        try:
            engine.close()
        except Exception as exc:
            log.warning("task %s: closing its engine failed (%s)", task.task_id, type(exc).__name__)

    def _count_suppressed(self, task: StoredTask, released: JsonObject) -> None:
        self._metrics.cells_suppressed(task.analysis, suppressed_cells(released))

    def _refused(self, handle: _Handle, refusal: DisclosureRefusedError) -> None:
        """The analysis refused to release: the rule and its threshold leave, nothing else."""
        task = handle.task
        with handle.lock:
            reason = handle.reason
        if reason is not None:  # cancelled meanwhile: that is how it ended
            self._finish(handle, reason)
            return
        log.info(
            "task %s: %s refused by disclosure rule %s", task.task_id, task.analysis, refusal.rule
        )
        self._metrics.disclosure_refused(task.analysis, refusal.rule)
        self._finish(
            handle,
            ErrorCode.DISCLOSURE_REFUSED,
            message=disclosure_message(refusal),
            rule=refusal.rule,
        )

    def _progress(self, handle: _Handle, stage: TaskStage, fraction: float) -> None:
        """Send ``stage`` now if the task has run long enough and the last message is old
        enough; otherwise keep it (the latest wins) for a flush at the time it may go."""
        now = time.monotonic()
        with handle.lock:
            if handle.done:
                return
            sent = handle.progress_sent_at
            allowed = handle.started_at + PROGRESS_AFTER_S
            if sent is not None:
                allowed = max(allowed, sent + PROGRESS_EVERY_S)
            if now < allowed:
                handle.pending = (stage, fraction)
                if handle.flush is None:
                    handle.flush = self._scheduler.at(allowed, self._flush_progress, handle)
                return
            handle.pending = None
            handle.progress_sent_at = now
        self._events.progress(handle.task.task_id, stage, fraction)

    def _flush_progress(self, handle: _Handle) -> None:
        with handle.lock:
            handle.flush = None
            pending, handle.pending = handle.pending, None
            if handle.done or pending is None:
                return
            handle.progress_sent_at = time.monotonic()
        self._events.progress(handle.task.task_id, *pending)

    def _validate(
        self, task: StoredTask, site: SitePolicy
    ) -> tuple[Analysis[Any], AnalysisParameters, int]:
        """After admission (so a node tells nothing about analyses its policy does not
        allow): the registry, the parameters, the deadline."""
        try:
            analysis = self._registry.get(task.analysis)
        except UnknownAnalysisError:
            raise _Refusal(ErrorCode.ANALYSIS_UNKNOWN) from None
        except UnsupportedAnalysisVersionError:
            raise _Refusal(ErrorCode.ANALYSIS_VERSION_UNSUPPORTED) from None
        if len(task.parameters) > MAX_PARAMETERS_BYTES:
            raise _Refusal(ErrorCode.INVALID_PARAMETERS)
        try:
            params = analysis.parse_parameters(task.parameters)
        except InvalidParametersError as exc:
            # The message names fields and what was expected, never a value: safe to log.
            log.info("task %s: %s", task.task_id, exc)
            raise _Refusal(ErrorCode.INVALID_PARAMETERS) from None
        if self._clock() >= task.deadline:
            raise _Refusal(ErrorCode.DEADLINE_EXCEEDED)
        return analysis, params, max(site.policy.min_cell_count, task.min_cell_count)

    def _failed(self, handle: _Handle, exc: Exception) -> None:
        task = handle.task
        with handle.lock:
            reason, shutdown = handle.reason, handle.shutdown
        if shutdown:
            log.info("task %s: stopped by shutdown; it runs again at the next start", task.task_id)
            try:
                self._state.requeue(task.task_id)
            except Exception:
                log.warning("task %s: could not requeue it", task.task_id, exc_info=True)
            return
        if reason is not None:
            self._finish(handle, reason)
        elif isinstance(exc, TaskCancelledError):
            self._finish(handle, ErrorCode.CANCELLED)
        elif is_cdm_unavailable(exc):
            log.warning(
                "task %s: the CDM is unavailable\n%s", task.task_id, redacted_traceback(exc)
            )
            self._finish(handle, ErrorCode.CDM_UNAVAILABLE)
        else:
            # The traceback stays in this node's log; only the code and its fixed text leave.
            log.error(
                "task %s: %s failed\n%s", task.task_id, task.analysis, redacted_traceback(exc)
            )
            self._finish(handle, ErrorCode.INTERNAL)

    def _finish(
        self,
        handle: _Handle,
        code: ErrorCode | None,
        payload: bytes = b"",
        *,
        message: str | None = None,
        refusal: Refusal | None = None,
        rule: str | None = None,
    ) -> None:
        """Record (and audit) the end of a task exactly once, then tell the agent.
        ``message`` replaces the code's fixed text (an admission or disclosure refusal names
        its rule); ``refusal`` is the admission's, ``rule`` the disclosure rule."""
        task = handle.task
        with handle.lock:
            if handle.done:
                return
            handle.done = True
            started = handle.started_at
            # An orderly end of a task that ran long enough says "uploading" before the result.
            uploading = handle.progress_sent_at is not None or (
                time.monotonic() - started >= PROGRESS_AFTER_S
            )
            if handle.flush is not None:
                handle.flush.cancel()
        if handle.timer is not None:
            handle.timer.cancel()
        held = False
        try:
            if code is None:
                digest = hashlib.sha256(payload).digest()
                held = self._policy().policy.release_mode(task.analysis) is ReleaseMode.MANUAL
                self._state.end_with_result(
                    task.task_id,
                    payload,
                    digest,
                    RESULT_CONTENT_TYPE,
                    held=held,
                    note=result_stored(task.task_id, payload, held=held),
                )
                log.info(
                    "task %s: done, result of %d bytes (sha256 %s)%s",
                    task.task_id,
                    len(payload),
                    digest.hex(),
                    ", held for an operator's release" if held else "",
                )
            else:
                if refusal is not None:
                    note = task_not_admitted(task.task_id, refusal.audit_action, refusal.rule)
                else:
                    note = task_ended(task.task_id, code, rule)
                self._state.end_with_outcome(
                    task.task_id, code, message or OUTCOME_MESSAGES[code], note
                )
                log.info("task %s: ended with %s", task.task_id, code.name)
        except Exception:
            # Not recorded: the task stays queued/running and runs again at the next start.
            log.exception("task %s: cannot record its end in the state database", task.task_id)
            return
        finally:
            with self._lock:
                self._handles.pop(task.task_id, None)
        self._metrics.task_ended(task.analysis, code, time.monotonic() - started)
        if code is None and held:
            self._events.result_held(task.task_id)
        elif code is None:
            if uploading:
                self._events.progress(task.task_id, TaskStage.UPLOADING, 1.0)
            self._events.result_ready(task.task_id, payload, RESULT_CONTENT_TYPE)
        else:
            ended = outcome(task.task_id, code)
            if message is not None:
                ended = TaskOutcome(task_id=task.task_id, error_code=code, message=message)
            self._events.ended(ended)
