"""The coordinator's engine: studies and tasks move here, between the gRPC adapters and the
database.

Every change is a write on the database thread (`state.store`) whose `Effects` are applied here
once committed: messages pushed onto node streams, metrics, deadline timers, aggregations, Watch
notifications. Nothing is acknowledged to anyone (a ResultReceipt, a Submit response) before the
change behind it is durable, and after a restart everything resumes from the database: timers
are re-armed, tasks go out again when their nodes reconnect.

What is NOT written on every message: a node's last-seen time (heartbeats would otherwise be a
write per node every few seconds), and a task's progress (`progress.py`). They live in memory and
are flushed periodically (progress also with the task's next change) and at shutdown. Watch
streams wake at once for a change of state, at most every `PROGRESS_NOTIFY_INTERVAL_S` for
progress alone. Two exceptions: a task held at its node for release (stage AWAITING_RELEASE) is
written at once, and a node's audit chain head is recorded (an anchor in the coordinator's
chain) whenever it differs from the one recorded last.

The register of permits, the audit entries of RPCs and retention are in `governance.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any, Final

from cryptography import x509

from ehds.analyses.registry import Registry
from ehds.audit import AuditFormatError, AuditRef
from ehds.coordinator.config import CoordinatorConfig
from ehds.coordinator.effects import Effects
from ehds.coordinator.errors import NodeRevokedError, ProtocolVersionError
from ehds.coordinator.fl_host import FlHost
from ehds.coordinator.metrics import CoordinatorMetrics
from ehds.coordinator.progress import LiveProgress
from ehds.coordinator.revocation import RevocationChecker
from ehds.coordinator.state.node_changes import Report
from ehds.coordinator.state.store import ResultOutcome, Store, StudyPage
from ehds.coordinator.state.transitions import Viewer
from ehds.coordinator.state.worker import DatabaseWorker, WorkerClosedError
from ehds.coordinator.streams import CloseCode, NodeSession, NodeStreams
from ehds.coordinator.validation import validate_spec
from ehds.federation.chunks import PayloadError
from ehds.federation.model import (
    AuditRef as ModelAuditRef,
)
from ehds.federation.model import (
    Heartbeat,
    Hello,
    NodeInfo,
    NodeMessage,
    ProtocolVersion,
    ResultChunk,
    ResultReceipt,
    SoftwareInfo,
    Study,
    StudySpec,
    TaskAck,
    TaskAssignment,
    TaskOutcome,
    TaskProgress,
    TaskStage,
    Welcome,
)
from ehds.federation.serde import ProtocolViolation
from ehds.federation.version import PROTOCOL_MAJOR, PROTOCOL_MINOR
from ehds.pki.identity import Identity, Role

__all__ = ["SOFTWARE", "Dispatcher", "StudyNotifier", "negotiate"]

log = logging.getLogger(__name__)

DISTRIBUTION: Final = "ehds-federation"


def _software() -> SoftwareInfo:
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return SoftwareInfo(DISTRIBUTION, version)


SOFTWARE: Final = _software()

SHUTDOWN_DETAILS: Final = "the coordinator is shutting down; reconnect later"

PROGRESS_NOTIFY_INTERVAL_S: Final = 0.25
"""Watch streams of a study wake at most this often for progress alone (a change of state
wakes them at once)."""

MAX_BACKLOG: Final = 10_000
"""Queued database writes above which a node's stream waits for its own write to commit."""


def _now() -> datetime:
    return datetime.now(UTC)


def negotiate(node: ProtocolVersion) -> ProtocolVersion:
    """The node's major (which must be ours) and the lower of the two minors."""
    if node.major != PROTOCOL_MAJOR:
        raise ProtocolVersionError(
            f"the node speaks protocol {node}, this coordinator {PROTOCOL_MAJOR}."
            f"{PROTOCOL_MINOR}: no common major version (upgrade the node or the coordinator)"
        )
    return ProtocolVersion(node.major, min(node.minor, PROTOCOL_MINOR))


class StudyNotifier:
    """Wakes Watch streams when their study changes; nothing polls the database."""

    def __init__(self, progress_interval: float = PROGRESS_NOTIFY_INTERVAL_S) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._progress_interval = progress_interval
        # Per watched study: when Watch streams last woke (loop time), and the pending wake-up
        # of progress reported since.
        self._last_wake: dict[str, float] = {}
        self._progress_due: dict[str, asyncio.TimerHandle] = {}

    def event(self, study_id: str) -> asyncio.Event:
        """An event set at the study's next change (take it BEFORE reading the study)."""
        event = self._events.get(study_id)
        if event is None:
            event = self._events[study_id] = asyncio.Event()
        return event

    def notify(self, study_ids: set[str]) -> None:
        """A change of state: wake the study's Watch streams now."""
        for study_id in study_ids:
            self._wake(study_id)

    def notify_progress(self, study_id: str) -> None:
        """Progress alone: wake the Watch streams now, or once the interval since they last
        woke has passed (one wake-up then carries every report meanwhile)."""
        if study_id not in self._events or study_id in self._progress_due:
            return  # nobody watches, or a wake-up is already due
        loop = asyncio.get_running_loop()
        last = self._last_wake.get(study_id)
        delay = 0.0 if last is None else last + self._progress_interval - loop.time()
        if delay <= 0:
            self._wake(study_id)
        else:
            self._progress_due[study_id] = loop.call_later(delay, self._wake, study_id)

    def forget(self, study_id: str) -> None:
        """The study ended: nothing more to throttle."""
        self._last_wake.pop(study_id, None)
        handle = self._progress_due.pop(study_id, None)
        if handle is not None:
            handle.cancel()

    def _wake(self, study_id: str) -> None:
        handle = self._progress_due.pop(study_id, None)
        if handle is not None:
            handle.cancel()
        event = self._events.pop(study_id, None)
        if event is not None:
            self._last_wake[study_id] = asyncio.get_running_loop().time()
            event.set()

    def wake_all(self) -> None:
        """Shutdown: every waiting Watch wakes up (and sees that the coordinator stops)."""
        self.notify(set(self._events))
        for handle in self._progress_due.values():
            handle.cancel()
        self._progress_due.clear()
        self._last_wake.clear()


class Dispatcher:
    """The coordinator's logic between the gRPC adapters and the store: one per process, used
    from the event loop only (the store runs on the database thread)."""

    def __init__(
        self,
        *,
        config: CoordinatorConfig,
        db: DatabaseWorker,
        registry: Registry,
        metrics: CoordinatorMetrics,
        revocation: RevocationChecker,
        max_result_bytes: int,
        store: Store,
        certificate_pem: bytes = b"",
    ) -> None:
        self._config = config
        self._db = db
        self._registry = registry
        self._metrics = metrics
        self._revocation = revocation
        self._max_result_bytes = max_result_bytes
        self._certificate_pem = certificate_pem
        self.store = store
        self.streams = NodeStreams()
        self._notifier = StudyNotifier()
        self._progress = LiveProgress()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._revoked: set[str] = set()
        self._last_seen_pending: dict[str, datetime] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self._closing = False
        self._heartbeat_interval = timedelta(seconds=config.heartbeat_interval_seconds)
        self._fl = FlHost(
            db=db,
            store=store,
            apply=self._apply,
            work_dir=config.fl.work_directory(),
            python=config.fl.python or sys.executable,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._revoked = await self._db.read(self.store.revoked_nodes)
        self._apply(await self._db.read(self.store.resume))
        self._housekeeping = asyncio.create_task(self._housekeep(), name="coordinator-housekeeping")

    def begin_shutdown(self) -> None:
        """Stop timers and end every node stream (the nodes reconnect to the next
        coordinator process; nothing in flight is lost, it is all in the database)."""
        self._closing = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for session in self.streams:
            session.close(CloseCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        self._notifier.wake_all()

    async def stop(self) -> None:
        """After the gRPC server stopped: finish background work, flush last-seen times."""
        await self._fl.close()
        self.begin_shutdown()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for session in self.streams:
            self.close_session(session)
        await self._flush_last_seen()
        await self._flush_progress()

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ effects

    def _apply(self, effects: Effects) -> None:
        for node, message in effects.messages:
            if isinstance(message, TaskAssignment):
                self._progress.assigned(message.task_id, node, message.study_id)
                self.streams.send(node, self._for_node(node, message))
            else:
                self.streams.send(node, message)
        self._metrics.record(effects)
        for study_id in effects.ended_studies:
            self._fl.forget(study_id)
            handle = self._timers.pop(study_id, None)
            if handle is not None:
                handle.cancel()
            self._progress.forget_study(study_id)
            self._notifier.forget(study_id)
        for study_id, deadline in effects.deadlines.items():
            if study_id not in effects.ended_studies:
                self._arm(study_id, deadline)
        for study_id in effects.aggregate:
            self._spawn(self._aggregate(study_id), f"aggregate-{study_id}")
        for study_id in effects.rounds:
            if not self._closing:
                self._spawn(self._dispatch_round(study_id), f"round-{study_id}")
        for study_id in effects.fl_rounds:
            if not self._closing and study_id not in effects.ended_studies:
                self._fl.round_ended(study_id)
        self._notifier.notify(effects.changed_studies)

    def _for_node(self, node: str, message: TaskAssignment) -> TaskAssignment:
        """The assignment as the node's stream version defines it: a 1.1 node gets no
        ``requested_by`` (since 1.2), so the researcher's name goes only where it is used."""
        session = self.streams.get(node)
        if session is not None and session.version.minor < 2 and message.requested_by:
            return replace(message, requested_by="")
        return message

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def _arm(self, study_id: str, deadline: datetime) -> None:
        if self._closing:
            return
        previous = self._timers.pop(study_id, None)
        if previous is not None:
            previous.cancel()
        delay = max(0.0, (deadline - _now()).total_seconds())
        self._timers[study_id] = asyncio.get_running_loop().call_later(
            delay, self._deadline_passed, study_id
        )

    def _deadline_passed(self, study_id: str) -> None:
        self._timers.pop(study_id, None)
        if not self._closing:
            self._spawn(self._expire(study_id), f"expire-{study_id}")

    async def _expire(self, study_id: str) -> None:
        connected = self.streams.names()
        await self._db.write(
            lambda s: self.store.expire(s, _now(), study_id, connected), self._apply
        )

    async def _aggregate(self, study_id: str) -> None:
        await self._db.write(lambda s: self.store.aggregate(s, _now(), study_id), self._apply)

    async def _dispatch_round(self, study_id: str) -> None:
        connected = self.streams.profiles()
        await self._db.write(
            lambda s: self.store.dispatch_round(s, _now(), study_id, connected), self._apply
        )

    # ------------------------------------------------------------------ node streams

    async def open_session(
        self, name: str, certificate_pem: bytes | None, hello: Hello
    ) -> NodeSession:
        """Welcome a node: the session is live (and Welcome queued first) when this returns.

        `NodeRevokedError`, `ProtocolVersionError` refuse the stream.
        """
        if name in self._revoked:
            raise NodeRevokedError(name)
        version = negotiate(hello.protocol_version)
        session = NodeSession(name, hello.profile, version, certificate_pem)
        session.send(
            Welcome(
                node_name=name,
                protocol_version=version,
                heartbeat_interval=self._heartbeat_interval,
                coordinator_software=SOFTWARE,
                # Since 1.1; a 1.0 node would not expect it.
                coordinator_time=_now() if version.minor >= 1 else None,
                # Since 1.3: the certificate whose key signs every TaskAssignment. Sent to every
                # node (an older one ignores it): a node that verifies assignments does so
                # whatever minor version it negotiated.
                coordinator_certificate=self._certificate_pem,
            )
        )
        previous = self.streams.register(session)
        if previous is not None:
            previous.close(CloseCode.ABORTED, "replaced by a newer stream of the same node")
        self._metrics.connected_nodes.set(len(self.streams))
        serial = (
            x509.load_pem_x509_certificate(certificate_pem).serial_number
            if certificate_pem is not None
            else None
        )
        try:
            outcome = await self._db.write(
                lambda s: self.store.node_connected(
                    s, _now(), name, version, hello.profile, certificate_serial=serial
                ),
                lambda o: self._apply(o.effects),
            )
        except BaseException:
            self.close_session(session)
            raise
        if outcome.revoked:
            self._revoked.add(name)
            self.close_session(session)
            raise NodeRevokedError(name)
        session.audit_head = outcome.audit_head
        self._metrics.stream_connects.inc()
        log.info("node %s connected (protocol %s)", name, version)
        return session

    def close_session(self, session: NodeSession) -> None:
        """The stream ended (any reason): forget it unless a newer one replaced it."""
        if session.dirty:
            self._last_seen_pending[session.name] = session.last_seen
            session.dirty = False
        if self.streams.unregister(session):
            self._metrics.connected_nodes.set(len(self.streams))
            log.info("node %s disconnected", session.name)
        session.assemblers.clear()

    async def on_node_message(self, session: NodeSession, message: NodeMessage) -> None:
        """One message from a welcomed node, handled in arrival order.

        The writes are queued, not awaited: they commit in arrival order anyway (the worker is
        FIFO), their effects (a ResultReceipt...) apply at commit, and a node's acknowledgement
        and result then share one transaction instead of waiting for one commit each. Only a
        long backlog makes the stream wait (back-pressure on a flooding node).

        Raises `PayloadError` (bad chunks) and `ProtocolViolation`: the caller ends the stream.
        """
        session.seen()
        name = session.name
        future: asyncio.Future[Any] | None = None
        if isinstance(message, Heartbeat | TaskOutcome | ResultChunk):
            # Before the message itself: the head the node recorded its change under.
            self._record_audit_head(session, message.audit_head)
        match message:
            case Heartbeat():
                if not session.reconciled:
                    session.reconciled = True
                    in_flight = frozenset(message.in_flight_task_ids)
                    future = self._db.enqueue(
                        lambda s: self.store.reconcile(s, _now(), name, in_flight), self._apply
                    )
            case TaskAck():
                task_id = message.task_id
                future = self._db.enqueue(
                    lambda s: self.store.task_ack(s, _now(), name, task_id), self._apply
                )
            case TaskProgress():
                self._on_progress(name, message)
            case TaskOutcome():
                outcome = message
                self._persist_running(name, outcome.task_id)
                future = self._db.enqueue(
                    lambda s: self.store.task_outcome(
                        s,
                        _now(),
                        name,
                        outcome.task_id,
                        code=outcome.error_code,
                        message=outcome.message,
                    ),
                    self._apply,
                )
            case ResultChunk():
                future = self._on_chunk(session, message)
            case Hello():
                raise ProtocolViolation("Hello", "was sent twice on one stream")
        if future is None:
            return
        future.add_done_callback(lambda f: self._node_write_done(session, f))
        if self._db.backlog > MAX_BACKLOG:
            await asyncio.shield(future)

    @staticmethod
    def _node_write_done(session: NodeSession, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            # Nothing was acknowledged for it: the node sends it again after reconnecting.
            log.error("storing a message of node %s failed: %s", session.name, error)
            session.close(CloseCode.UNAVAILABLE, "the coordinator could not store a message")

    def _on_chunk(
        self, session: NodeSession, message: ResultChunk
    ) -> asyncio.Future[ResultOutcome] | None:
        task_id = message.task_id
        assembler = session.assembler(task_id, self._max_result_bytes)
        if assembler is None:
            raise PayloadError(f"more than {len(session.assemblers)} results in progress at once")
        try:
            payload = assembler.add(message.chunk)
        except PayloadError as exc:
            session.assemblers.pop(task_id, None)
            # Same class (a bad digest stays a PayloadDigestError), with the task named.
            raise type(exc)(f"result of task {task_id}: {exc}") from exc
        if payload is None:
            return None
        session.assemblers.pop(task_id, None)
        name = session.name
        self._persist_running(name, task_id)

        def committed(outcome: ResultOutcome) -> None:
            if outcome.receipt is not None:
                # To the node's live stream, which may be a newer one than this.
                self.streams.send(name, ResultReceipt(task_id, outcome.receipt))
            self._apply(outcome.effects)

        return self._db.enqueue(
            lambda s: self.store.task_result(s, _now(), name, task_id, payload), committed
        )

    def _record_audit_head(self, session: NodeSession, head: ModelAuditRef | None) -> None:
        """Queue an anchor of the node's audit chain head unless it is the one recorded last.
        A head that is not of the node's own chain is ignored (and logged): a node speaks for
        its own chain only."""
        if head is None or (head.seq, head.hash) == session.audit_head:
            return
        name = session.name
        try:
            if head.chain != str(Identity(name, Role.NODE)):
                raise AuditFormatError("chain: not the node's own chain")
            anchor = AuditRef(head.chain, head.seq, head.hash)
        except AuditFormatError as exc:
            log.warning("ignored an audit head from node %s: %s", name, exc)
            return
        session.audit_head = (head.seq, head.hash)
        self._db.enqueue(lambda s: self.store.node_audit_head(s, name, anchor))

    def _on_progress(self, name: str, message: TaskProgress) -> None:
        """In memory (see `progress.py`): no database write, except when a task enters or
        leaves AWAITING_RELEASE (held at its node for release: a state, and audited)."""
        previous = self._stage_of(message.task_id)
        entry = self._progress.report(
            name, message.task_id, message.stage, message.fraction, _now()
        )
        if entry is not None:
            self._reported(name, message, previous)
        elif self._progress.known(message.task_id):
            log.warning(
                "ignored TaskProgress from node %s for task %r: not its task",
                name,
                message.task_id,
            )
        else:
            # Sent before this process started (or unknown): ask the database whose it is.
            self._spawn(self._check_progress(name, message), f"progress-{message.task_id}")

    async def _check_progress(self, name: str, message: TaskProgress) -> None:
        holder = await self._db.read(lambda s: self.store.task_holder(s, message.task_id))
        if holder is None or holder[0] != name:
            log.warning(
                "ignored TaskProgress from node %s for task %r: not its task",
                name,
                message.task_id,
            )
            return
        if not holder[2]:
            return  # the task ended meanwhile: progress no longer matters
        if not self._progress.known(message.task_id):
            self._progress.assigned(message.task_id, name, holder[1])
        previous = self._stage_of(message.task_id)
        if self._progress.report(name, message.task_id, message.stage, message.fraction, _now()):
            self._reported(name, message, previous)

    def _stage_of(self, task_id: str) -> TaskStage | None:
        entry = self._progress.entry(task_id)
        return entry.stage if entry is not None else None

    def _reported(self, name: str, message: TaskProgress, previous: TaskStage | None) -> None:
        """After a report was recorded in memory: write a move into or out of
        AWAITING_RELEASE at once (the others lazily), and wake the study's watchers."""
        entry = self._progress.entry(message.task_id)
        assert entry is not None  # just recorded
        held = TaskStage.AWAITING_RELEASE
        if message.stage is held or (previous is held and message.stage is not held):
            entry.persisted = False
            self._persist_running(name, message.task_id)
        self._notifier.notify_progress(entry.study_id)

    def _persist_running(self, name: str, task_id: str) -> None:
        """Before a task's next change is queued: write its RUNNING (or AWAITING_RELEASE) state
        and audit entry if only memory holds it, in the same group of writes."""
        entry = self._progress.entry(task_id)
        if entry is None or entry.node != name or entry.persisted or entry.updated_at is None:
            return
        report: Report = (name, task_id, entry.stage, entry.fraction, entry.updated_at)
        entry.dirty = False
        entry.persisted = True
        self._db.enqueue(lambda s: self.store.flush_progress(s, _now(), [report]), self._apply)

    async def _flush_progress(self) -> None:
        entries = self._progress.dirty()
        if not entries:
            return
        reports: list[Report] = []
        for entry in entries:
            assert entry.updated_at is not None  # dirty: reported
            reports.append(
                (entry.node, entry.task_id, entry.stage, entry.fraction, entry.updated_at)
            )
            entry.dirty = False
            entry.persisted = True
        try:
            await self._db.write(lambda s: self.store.flush_progress(s, _now(), reports))
        except BaseException:
            for entry in entries:
                entry.dirty = True
            raise

    def close_revoked_certificates(self) -> None:
        """A new CRL is in force: end the streams of nodes whose certificate it revokes."""
        for session in self.streams:
            pem = session.certificate_pem
            if pem is not None and self._revocation.is_revoked(pem):
                log.warning("node %s: certificate revoked, closing its stream", session.name)
                session.close(CloseCode.PERMISSION_DENIED, "certificate revoked")

    async def _housekeep(self) -> None:
        """Periodically: end streams of nodes that stopped sending, flush last-seen times."""
        interval = self._config.heartbeat_interval_seconds
        silent_limit = interval * (self._config.missed_heartbeats + 1)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for session in self.streams:
                # loop.time() is time.monotonic() on every supported platform.
                if now - session.last_seen_monotonic > silent_limit:
                    log.warning("node %s: no message for %.1f s", session.name, silent_limit)
                    session.close(
                        CloseCode.UNAVAILABLE, f"no heartbeat for {silent_limit:g} seconds"
                    )
            try:
                await self._flush_last_seen()
            except Exception:
                log.exception("writing last-seen times failed (retried at the next round)")
            try:
                await self._flush_progress()
            except Exception:
                log.exception("writing task progress failed (retried at the next round)")

    async def _flush_last_seen(self) -> None:
        pending = self._last_seen_pending
        self._last_seen_pending = {}
        for session in self.streams:
            if session.dirty:
                pending[session.name] = session.last_seen
                session.dirty = False
        if pending:
            try:
                await self._db.write(lambda s: self.store.flush_last_seen(s, pending))
            except BaseException:
                for name, seen in pending.items():
                    self._last_seen_pending.setdefault(name, seen)
                raise

    # ------------------------------------------------------------------ studies

    async def submit(self, submitter: str, spec: StudySpec, request_id: str) -> Study:
        validated = validate_spec(spec, self._registry, self._config.studies, request_id)
        connected = self.streams.profiles()
        revoked_serials = self._revocation.revoked_serials
        study, _ = await self._db.write(
            lambda s: self.store.submit(
                s,
                _now(),
                submitter,
                validated,
                request_id=request_id,
                connected=connected,
                revoked_serials=revoked_serials,
            ),
            lambda result: self._apply(result[1]),
        )
        log.info("study %s submitted by %s (%s)", study.id, submitter, spec.analysis)
        return study

    async def get(self, viewer: Viewer, study_id: str) -> Study:
        study = await self._db.read(
            lambda s: self.store.get_study(s, viewer, study_id, with_parameters=True)
        )
        return self._progress.overlay(study)

    async def list_studies(self, viewer: Viewer, page_size: int, after: int | None) -> StudyPage:
        page = await self._db.read(lambda s: self.store.list_studies(s, viewer, page_size, after))
        return replace(page, studies=[self._progress.overlay(study) for study in page.studies])

    async def cancel(self, submitter: str, study_id: str, reason: str) -> Study:
        """Cancel a study the researcher may see (theirs, or one under a permit they hold)."""
        connected = self.streams.names()
        study, _ = await self._db.write(
            lambda s: self.store.cancel(
                s, _now(), submitter, study_id, reason=reason, connected=connected
            ),
            lambda result: self._apply(result[1]),
        )
        return self._progress.overlay(study)

    async def watch(self, viewer: Viewer, study_id: str) -> AsyncIterator[Study]:
        """The study now, then after each change until it is final."""
        event = self._notifier.event(study_id)
        study = self._progress.overlay(
            await self._db.read(
                lambda s: self.store.get_study(s, viewer, study_id, with_parameters=False)
            )
        )
        yield study
        while not study.state.is_final:
            await event.wait()
            if self._closing:
                raise WorkerClosedError(SHUTDOWN_DETAILS)
            event = self._notifier.event(study_id)
            latest = self._progress.overlay(
                await self._db.read(
                    lambda s: self.store.get_study(s, viewer, study_id, with_parameters=False)
                )
            )
            if latest != study:
                study = latest
                yield study

    async def results(self, viewer: Viewer, study_id: str) -> bytes:
        return await self._db.read(lambda s: self.store.result_document(s, viewer, study_id))

    # ------------------------------------------------------------------ nodes (admin)

    async def list_nodes(self) -> list[NodeInfo]:
        nodes = await self._db.read(self.store.list_nodes)
        listed = []
        for stored in nodes:
            session = self.streams.get(stored.name)
            node = stored
            if session is not None:
                node = replace(
                    stored,
                    connected=True,
                    last_seen=session.last_seen,
                    protocol_version=session.version,
                    profile=session.profile,
                )
            listed.append(node)
        return listed

    async def revoke_node(self, operator: str, name: str, reason: str) -> NodeInfo:
        def committed(result: tuple[NodeInfo, Effects]) -> None:
            self._revoked.add(name)
            session = self.streams.get(name)
            if session is not None:
                session.close(
                    CloseCode.PERMISSION_DENIED, "node revoked by the federation's operators"
                )
            self._apply(result[1])

        info, _ = await self._db.write(
            lambda s: self.store.revoke_node(s, _now(), operator, name, reason), committed
        )
        log.warning("node %s revoked by operator %s", name, operator)
        return replace(info, connected=False)
