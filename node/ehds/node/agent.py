"""The node agent's long-running loop: dial out, hold the stream, hand tasks to the runner.

    run()
      ├─ resume: tasks stored but not ended (the node stopped or died) go back to the runner
      └─ until stopped:
           session: open a link ─ Hello ─ Welcome ─ Heartbeat(seq 0) ─ re-send what the
                    coordinator has not receipted ─ then react to every CoordinatorMessage
           wait a jittered backoff delay (reset after each Welcome) and dial again

Delivery rules (node_link.proto): a `TaskAck` is sent only once the task is committed to the
state database, so an acked task survives a restart. A task already known is acked again, and
its end is sent again (`TaskOutcome`, or the result while it waits for a `ResultReceipt`).
After every reconnect the node re-sends each result not yet receipted, and each outcome that
ended while no stream was up.

Nothing here waits on a task: tasks run on the runner's threads, which report through
`TaskEvents`; those calls hop onto the event loop and become messages on the current stream
(progress is dropped while disconnected; ends are stored, so they are sent later). A result just
computed is split on the worker's thread and sent as is, without reading it back from the outbox.

Governance (protocol 1.3): every assignment must be signed by the coordinator certificate the
Welcome carried, issued by the federation CA (`ehds.node.assignment_check`); a tampered,
replayed or expired one is refused with ASSIGNMENT_REJECTED and never stored. The agent writes
the node's audit chain (through `NodeState`) and puts its head on every Heartbeat, TaskOutcome
and ResultChunk. A result held for an operator (``release: manual``) is announced with
TaskProgress(AWAITING_RELEASE), on every reconnect too, and stays in flight; the agent polls the
decisions `ehds node review` records, applies and audits them, then sends the result or
RELEASE_REJECTED. With ``retention_days`` in the policy, ended tasks are swept periodically;
study workspace tables unused for ``workspace_ttl_hours`` are dropped (`ehds.node.workspaces`).
If the deadline passes while a result is held, the coordinator times the task out; the node
keeps the result held (an operator may still reject it, or release it: the coordinator then
ignores or stores it as it sees fit).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from ehds.analyses.registry import Registry, default_registry
from ehds.audit import payload_digest
from ehds.core.config import ConfigError
from ehds.core.errors import EhdsError
from ehds.federation.chunks import split_payload
from ehds.federation.model import (
    AuditRef,
    CancelTask,
    CoordinatorMessage,
    ErrorCode,
    Heartbeat,
    Hello,
    PayloadChunk,
    ProtocolVersion,
    ResultChunk,
    ResultReceipt,
    TaskAck,
    TaskAssignment,
    TaskOutcome,
    TaskProgress,
    TaskStage,
    Welcome,
)
from ehds.federation.version import PROTOCOL_VERSION
from ehds.node.assignment_check import (
    AssignmentRejectedError,
    AssignmentRejection,
    AssignmentSigner,
    UntrustedCoordinatorError,
    coordinator_signer,
    verify_assignment,
)
from ehds.node.audit_trail import node_audit_log, to_model_ref
from ehds.node.backoff import Backoff
from ehds.node.config import NodeConfig
from ehds.node.errors import NodeStartError, outcome
from ehds.node.fl_sessions import FlSessions
from ehds.node.identity import certificate_name
from ehds.node.link import CoordinatorLink, LinkError, LinkSettings, open_link
from ehds.node.metrics import NodeMetrics
from ehds.node.policy import Policy, SitePolicy, load_site_policy, trusted_keys
from ehds.node.profile import CdmVersions, make_profile
from ehds.node.runner import TaskRunner
from ehds.node.state import Admission, AppliedDecision, NodeState, StoredTask
from ehds.node.state_schema import Decision, TaskStatus
from ehds.node.task_engines import node_engines
from ehds.node.upkeep import (
    RETENTION_SWEEP_S,
    WORKSPACE_SWEEP_S,
    apply_decisions,
    stop_idle_fl_workers,
    sweep_retention,
    sweep_workspaces,
)
from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import SchemaNames

log = logging.getLogger(__name__)

T = TypeVar("T")

FL_FOLDER: Final = "fl"
"""Beside the state database: each FL study's bundle and feature extract (row-level: the
node's own disk, never sent anywhere)."""
CLOCK_SKEW_WARNING: Final = timedelta(seconds=5)
DEFAULT_HEARTBEAT: Final = timedelta(seconds=15)
MIN_HEARTBEAT: Final = timedelta(milliseconds=50)


def _now() -> datetime:
    return datetime.now(UTC)


def open_cdm(config: NodeConfig) -> CdmDatabase | Path:
    """The node's CDM as configured: a database, or the root of a Parquet layout (Spark);
    `NodeStartError` naming the key when it is malformed."""
    schemas = config.cdm.schemas
    if config.cdm.spark is not None:
        return config.cdm.spark.parquet
    assert config.cdm.url is not None
    try:
        return CdmDatabase.parse(
            config.cdm.url,
            SchemaNames(cdm=schemas.cdm, vocab=schemas.vocab, results=schemas.results),
        )
    except (EhdsError, ValueError) as exc:
        raise NodeStartError(f"cdm: {exc}") from None


def _site_policy(config: NodeConfig, policy: Policy | SitePolicy) -> SitePolicy:
    """The policy in force with its keys and digest; a bare `Policy` (embedding, tests) is
    completed from ``config.policy``, the file it was loaded from."""
    if isinstance(policy, SitePolicy):
        return policy
    try:
        data = config.policy.read_bytes()
        return SitePolicy(
            policy, trusted_keys(policy, config.policy), payload_digest(data), config.policy
        )
    except (OSError, ConfigError) as exc:
        raise NodeStartError(f"site policy {config.policy}: {exc}") from None


def _awaiting_release(task_id: str) -> TaskProgress:
    return TaskProgress(task_id, 1.0, TaskStage.AWAITING_RELEASE)


def _stored_outcome(task: StoredTask, code: ErrorCode) -> TaskOutcome:
    """An outcome sent again: its stored text (a disclosure refusal names its rule), else the
    code's fixed text."""
    if task.message:
        return TaskOutcome(task_id=task.task_id, error_code=code, message=task.message)
    return outcome(task.task_id, code)


class _Stopped(Exception):  # noqa: N818 (control flow: the agent was asked to stop)
    pass


class NodeAgent:
    """One node: ``await agent.run()`` until `stop()`.

    The caller owns ``state`` (open it with `NodeState.open`, close it after `run` returns) and
    has loaded ``policy`` (`load_site_policy`, or a bare `Policy` loaded from
    ``config.policy``); the agent re-reads ``config.policy`` only on `reload_policy`.
    """

    def __init__(
        self,
        config: NodeConfig,
        policy: Policy | SitePolicy,
        state: NodeState,
        *,
        registry: Registry | None = None,
        metrics: NodeMetrics | None = None,
        protocol_version: ProtocolVersion | None = None,
        insecure: bool = False,
        rng: random.Random | None = None,
        shutdown_grace_seconds: float = 10.0,
        retention_sweep_seconds: float = RETENTION_SWEEP_S,
        workspace_sweep_seconds: float = WORKSPACE_SWEEP_S,
    ) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics()
        self.node_name = certificate_name(config.tls.certificate)
        self.protocol_version = protocol_version or ProtocolVersion(*PROTOCOL_VERSION)
        self._policy = _site_policy(config, policy)
        self._state = state
        state.attach_audit(node_audit_log(config))
        self.metrics.follow_audit_chain(lambda: state.audit_head)
        # The key that signs this stream's assignments (from its Welcome); None: refuse all.
        self._signer: AssignmentSigner | None = None
        self._retention_sweep = retention_sweep_seconds
        self._workspace_sweep = workspace_sweep_seconds
        self._registry = registry or default_registry()
        self._cdm = open_cdm(config)
        self._cdm_versions = CdmVersions(self._cdm)
        self._engine_name = config.cdm.engine.value
        self._link_settings = LinkSettings.for_node(
            config, node_name=self.node_name, insecure=insecure
        )
        self._backoff = Backoff(config.reconnect.initial_seconds, config.reconnect.max_seconds, rng)
        self._shutdown_grace = shutdown_grace_seconds
        self._engines = node_engines(config)
        self._fl = FlSessions(
            node_name=self.node_name,
            policy=lambda: self._policy.policy.fl,
            base_dir=config.state.parent / FL_FOLDER,
        )
        self._runner = TaskRunner(
            state=state,
            cdm=self._cdm if isinstance(self._cdm, CdmDatabase) else None,
            engines=self._engines,
            registry=self._registry,
            policy=lambda: self._policy,
            node_name=self.node_name,
            events=_LoopEvents(self),
            metrics=self.metrics,
            workers=config.max_concurrent_tasks,
            fl=self._fl,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._reconnect: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._link: CoordinatorLink | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._running = False

    # ----------------------------------------------------------------------- public

    @property
    def policy(self) -> Policy:
        return self._policy.policy

    @property
    def site_policy(self) -> SitePolicy:
        return self._policy

    @property
    def connected(self) -> bool:
        return self._link is not None

    def ready(self) -> bool:
        """Configuration and policy loaded, state database open. Deliberately NOT whether the
        coordinator is reachable: a probe must not restart a node for a network outage."""
        return self._state.is_open and not self._stop_requested.is_set()

    def stop(self) -> None:
        """Ask `run` to return; safe from any thread and from signal handlers."""
        self._stop_requested.set()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._set_stop()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._set_stop)

    def reload_policy(self) -> bool:
        """Read ``config.policy`` again (SIGHUP). A bad file (or pinned key) keeps the policy
        in force; a changed one is audited (``policy.changed``), takes effect for the next
        task and is announced with a new Hello (the stream is re-opened at once). A change
        that cannot be audited does not take effect. Call on the event loop's thread."""
        path = self.config.policy
        try:
            site = load_site_policy(path)
        except ConfigError as exc:
            log.error("policy reload failed, keeping version %s: %s", self._policy.version, exc)
            return False
        if site.digest == self._policy.digest:
            log.info("policy %s re-read: unchanged", path)
            return True
        try:
            self._state.record_policy(site.version, site.digest)
        except Exception:
            log.exception("policy reload: cannot audit the change; keeping the policy in force")
            return False
        log.warning(
            "policy %s reloaded: version %s -> %s", path, self._policy.version, site.version
        )
        self._policy = site
        if self._reconnect is not None:
            self._reconnect.set()
        return True

    async def run(self) -> None:
        """Resume stored tasks, then hold a stream to the coordinator until `stop()`."""
        if self._running:
            raise RuntimeError("NodeAgent.run is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._reconnect = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop.set()
        try:
            action = await asyncio.to_thread(
                self._state.record_policy, self._policy.version, self._policy.digest
            )
            log.info("policy %s in force (%s)", self._policy.version, action)
            self._runner.start()
            for task in await asyncio.to_thread(self._state.unfinished):
                log.info("task %s: resuming after a restart", task.task_id)
                self._runner.submit(task)
            self._spawn(apply_decisions(self._state, self._deliver_decision))
            self._spawn(
                sweep_retention(
                    self._state, lambda: self._policy.policy.retention_days, self._retention_sweep
                )
            )
            self._spawn(
                sweep_workspaces(
                    self._state,
                    self._engines.task_engine,
                    lambda: self._policy.policy.workspace_ttl_hours,
                    self._workspace_sweep,
                )
            )
            self._spawn(stop_idle_fl_workers(self._fl))
            await self._connect_loop()
        finally:
            await self._shutdown()

    # ----------------------------------------------------------------------- connection

    def _set_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _connect_loop(self) -> None:
        assert self._stop is not None
        first = True
        while not self._stop.is_set():
            if not first:
                self.metrics.reconnects.inc()
            first = False
            try:
                await self._session()
            except _Stopped:
                pass
            except LinkError as exc:
                level = logging.WARNING if exc.status == "UNAVAILABLE" else logging.ERROR
                log.log(level, "coordinator %s: %s", self._link_settings.address, exc)
            except Exception:
                # Loud, not fatal: a node that exits on a transient fault (a locked state file,
                # a bug in one message's handling) would leave its site out until someone
                # restarts it.
                log.exception("stream to %s failed", self._link_settings.address)
            if self._stop.is_set():
                break
            assert self._reconnect is not None
            if self._reconnect.is_set():
                self._reconnect.clear()
                continue
            delay = self._backoff.next_delay()
            log.info("reconnecting in %.2f s", delay)
            with contextlib.suppress(_Stopped):
                await self._until_stopped(asyncio.sleep(delay))
            self._reconnect.clear()

    async def _until_stopped(self, step: Coroutine[Any, Any, T]) -> T:
        """Run ``step``; raise `_Stopped` (cancelling it) if stop or reconnect comes first."""
        assert self._stop is not None
        assert self._reconnect is not None
        work = asyncio.ensure_future(step)
        stop = asyncio.ensure_future(self._stop.wait())
        again = asyncio.ensure_future(self._reconnect.wait())
        try:
            await asyncio.wait({work, stop, again}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (stop, again):
                waiter.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, EhdsError):
            await work
        raise _Stopped

    async def _session(self) -> None:
        """One stream, from Hello to its end (None: the coordinator ended it with OK)."""
        versions = await self._cdm_versions.get()
        profile = make_profile(versions, self._engine_name, self._policy.policy, self._registry)
        async with open_link(self._link_settings) as link:
            link.send(Hello(self.protocol_version, profile))
            welcome = await self._until_stopped(self._welcome(link))
            interval = self._accept(welcome)
            self._signer = self._assignment_signer(welcome)
            self._backoff.reset()
            self._link = link
            self.metrics.connected.set(1)
            heartbeats = asyncio.create_task(self._heartbeats(link, interval))
            try:
                await self._resend_pending(link)
                while True:
                    message = await self._until_stopped(link.receive())
                    if message is None:
                        log.warning("coordinator ended the stream")
                        return
                    await self._handle(link, message)
            finally:
                self._link = None
                self._signer = None
                self.metrics.connected.set(0)
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats

    async def _welcome(self, link: CoordinatorLink) -> Welcome:
        timeout = self.config.reconnect.handshake_timeout_seconds
        try:
            message = await asyncio.wait_for(link.receive(), timeout)
        except TimeoutError:
            raise LinkError(
                f"no Welcome within {timeout:g} s", status="DEADLINE_EXCEEDED"
            ) from None
        if message is None:
            raise LinkError("stream ended before Welcome", status="OK")
        if not isinstance(message, Welcome):
            raise LinkError(f"expected Welcome, got {type(message).__name__}", status="PROTOCOL")
        return message

    def _accept(self, welcome: Welcome) -> float:
        """Check and log the Welcome; the heartbeat interval in seconds."""
        ours = self.protocol_version
        chosen = welcome.protocol_version
        if chosen.major != ours.major:
            raise LinkError(
                f"coordinator chose protocol {chosen}, this node speaks {ours}", status="PROTOCOL"
            )
        if chosen.minor > ours.minor:
            log.warning("coordinator chose protocol %s, newer than this node's %s", chosen, ours)
        if welcome.node_name != self.node_name:
            log.warning(
                "coordinator knows this node as %r but its certificate names %r: was the "
                "certificate issued under the wrong name?",
                welcome.node_name,
                self.node_name,
            )
        if welcome.coordinator_time is not None:
            skew = _now() - welcome.coordinator_time
            if abs(skew) > CLOCK_SKEW_WARNING:
                log.warning(
                    "this node's clock differs from the coordinator's by %.1f s: task deadlines "
                    "are absolute, fix the clock (NTP)",
                    skew.total_seconds(),
                )
        interval = welcome.heartbeat_interval
        if interval < MIN_HEARTBEAT:
            log.warning(
                "coordinator asked for heartbeats every %s; using %s",
                interval,
                DEFAULT_HEARTBEAT,
            )
            interval = DEFAULT_HEARTBEAT
        log.info(
            "connected to %s as %r (protocol %s, coordinator %s %s)",
            self._link_settings.address,
            welcome.node_name,
            chosen,
            welcome.coordinator_software.name,
            welcome.coordinator_software.version,
        )
        return interval.total_seconds()

    def _assignment_signer(self, welcome: Welcome) -> AssignmentSigner | None:
        """The coordinator key of this stream, if its certificate is the federation's."""
        try:
            signer = coordinator_signer(welcome.coordinator_certificate, self.config.tls.ca)
        except UntrustedCoordinatorError as exc:
            log.error("%s: every task assigned on this stream will be rejected", exc)
            return None
        log.info("assignments on this stream are checked against %s", signer.identity)
        return signer

    def _head(self) -> AuditRef | None:
        return to_model_ref(self._state.audit_head)

    async def _heartbeats(self, link: CoordinatorLink, interval: float) -> None:
        """Heartbeat 0 was sent by `_resend_pending`; the rest follow every ``interval``."""
        seq = 1
        while True:
            await asyncio.sleep(interval)
            try:
                in_flight = await asyncio.to_thread(self._state.in_flight_task_ids)
            except Exception:
                log.exception("cannot read in-flight tasks; skipping heartbeat %d", seq)
                continue
            link.send(Heartbeat(seq, in_flight, self._head()))
            seq += 1

    async def _resend_pending(self, link: CoordinatorLink) -> None:
        """Right after Welcome: the first heartbeat, then every result not yet receipted,
        every outcome that ended while no stream was up, and every result still held."""
        in_flight = await asyncio.to_thread(self._state.in_flight_task_ids)
        link.send(Heartbeat(0, in_flight, self._head()))
        for task in await asyncio.to_thread(self._state.unreported_outcomes):
            if task.error_code is not None:
                await self._send_outcome(link, _stored_outcome(task, task.error_code))
        for task_id in await asyncio.to_thread(self._state.unreceipted_results):
            await self._send_result(link, task_id)
        for task in await asyncio.to_thread(self._state.held):
            link.send(_awaiting_release(task.task_id))

    # ----------------------------------------------------------------------- messages

    async def _handle(self, link: CoordinatorLink, message: CoordinatorMessage) -> None:
        match message:
            case TaskAssignment():
                await self._on_assignment(link, message)
            case CancelTask():
                if not self._runner.cancel(message.task_id):
                    log.info("cancel for task %s, which is not running", message.task_id)
                else:
                    log.info("task %s: cancel requested (%s)", message.task_id, message.reason)
            case ResultReceipt():
                stored = await asyncio.to_thread(
                    self._state.receipt, message.task_id, message.sha256
                )
                if stored:
                    log.info("task %s: result receipted", message.task_id)
                else:
                    log.warning(
                        "task %s: receipt does not match a result in the outbox (sha256 %s); "
                        "the result stays and is sent again after a reconnect",
                        message.task_id,
                        message.sha256.hex(),
                    )
            case Welcome():
                log.warning("ignoring a second Welcome on the same stream")

    async def _on_assignment(self, link: CoordinatorLink, assignment: TaskAssignment) -> None:
        if not assignment.task_id:
            log.warning("ignoring an assignment without a task id (study %s)", assignment.study_id)
            return
        signer = self._signer
        try:
            verify_assignment(assignment, signer)
            assert signer is not None
            admitted = await asyncio.to_thread(
                self._state.admit_assignment, assignment, signer=signer.identity
            )
        except AssignmentRejectedError as rejected:
            await self._reject(link, assignment, rejected.reason)
            return
        except Exception:
            # No ack: the coordinator sends the assignment again.
            log.exception("task %s: cannot store the assignment", assignment.task_id)
            return
        if admitted.admission is Admission.REJECTED:
            assert admitted.rejection is not None
            await self._reject(link, assignment, admitted.rejection, audited=True)
            return
        link.send(TaskAck(assignment.task_id))
        task = admitted.task
        if admitted.admission is Admission.NEW:
            assert task is not None
            log.info(
                "task %s: received (study %s, %s)",
                task.task_id,
                task.study_id,
                task.analysis,
            )
            self._runner.submit(task)
            return
        if task is None:
            log.info(
                "task %s: assignment repeated; the task was deleted (retention)", assignment.task_id
            )
            return
        # A re-delivery: what exists is sent again; the task never runs a second time.
        log.info("task %s: assignment repeated (status %s)", task.task_id, task.status.value)
        if task.status is TaskStatus.OUTCOME and task.error_code is not None:
            await self._send_outcome(link, _stored_outcome(task, task.error_code))
        elif task.status is TaskStatus.DONE:
            await self._send_result(link, task.task_id)
        elif task.status is TaskStatus.HELD:
            link.send(_awaiting_release(task.task_id))
        elif task.task_id not in self._runner.active():
            self._runner.submit(task)

    async def _reject(
        self,
        link: CoordinatorLink,
        assignment: TaskAssignment,
        rejection: AssignmentRejection,
        *,
        audited: bool = False,
    ) -> None:
        """Refuse an assignment: audited, acked (the coordinator stops re-sending it) and
        answered ASSIGNMENT_REJECTED; nothing is stored, nothing runs."""
        log.warning("task %s: assignment rejected: %s", assignment.task_id, rejection.value)
        if not audited:  # refused before its signature verified: its sender is unknown
            try:
                await asyncio.to_thread(self._state.reject_assignment, assignment, rejection, None)
            except Exception:
                log.exception("task %s: cannot audit the rejection", assignment.task_id)
                return
        link.send(TaskAck(assignment.task_id))
        link.send(
            TaskOutcome(
                assignment.task_id,
                ErrorCode.ASSIGNMENT_REJECTED,
                rejection.text,
                self._head(),
            )
        )

    async def _send_outcome(self, link: CoordinatorLink, task_outcome: TaskOutcome) -> None:
        link.send(dataclasses.replace(task_outcome, audit_head=self._head()))
        await asyncio.to_thread(self._state.mark_outcome_reported, task_outcome.task_id)

    async def _send_result(self, link: CoordinatorLink, task_id: str) -> None:
        stored = await asyncio.to_thread(self._state.result, task_id)
        if stored is None:
            return
        head = to_model_ref(await asyncio.to_thread(self._state.record_sent, task_id))
        chunks = await asyncio.to_thread(split_payload, stored.payload, stored.content_type)
        for chunk in chunks:
            link.send(ResultChunk(task_id, chunk, head))
        log.info("task %s: result sent in %d chunk(s)", task_id, len(chunks))

    # ----------------------------------------------------------------------- governance

    async def _deliver_decision(self, applied: AppliedDecision) -> None:
        """Send what an operator's decision let out: the result, or RELEASE_REJECTED."""
        link = self._link
        if link is None or applied.task is None:
            return  # sent from the outbox after the next Welcome
        if applied.decision is Decision.RELEASE:
            await self._send_result(link, applied.task_id)
        else:
            await self._send_outcome(
                link, _stored_outcome(applied.task, ErrorCode.RELEASE_REJECTED)
            )

    # ----------------------------------------------------------------------- runner events

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_progress(self, progress: TaskProgress) -> None:
        if self._link is not None:
            self._link.send(progress)

    def _on_result_ready(
        self, task_id: str, chunks: list[PayloadChunk], head: AuditRef | None
    ) -> None:
        """A result just stored, split on the worker's thread: sent without reading it back."""
        link = self._link
        if link is None:
            return  # sent after the next Welcome, from the outbox
        for chunk in chunks:
            link.send(ResultChunk(task_id, chunk, head))
        log.info("task %s: result sent in %d chunk(s)", task_id, len(chunks))

    def _on_result_held(self, task_id: str) -> None:
        if self._link is not None:
            self._link.send(_awaiting_release(task_id))

    def _on_outcome(self, task_outcome: TaskOutcome) -> None:
        if self._link is not None:
            self._spawn(self._send_outcome(self._link, task_outcome))

    def _from_thread(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(callback, *args)

    # ----------------------------------------------------------------------- shutdown

    async def _shutdown(self) -> None:
        """Stop the stream (done by the caller of this), then the workers, without sending an
        end for the tasks they were running: those run again at the next start."""
        self._stop_requested.set()
        self._cdm_versions.cancel()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.to_thread(self._runner.shutdown, self._shutdown_grace)
        await asyncio.to_thread(self._fl.close)
        self.metrics.connected.set(0)
        log.info("node %s stopped", self.node_name)


class _LoopEvents:
    """`TaskEvents` for the runner: each call hops from a worker thread onto the event loop."""

    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    def progress(self, task_id: str, stage: TaskStage, fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self._agent._from_thread(self._agent._on_progress, TaskProgress(task_id, fraction, stage))

    def result_ready(self, task_id: str, payload: bytes, content_type: str) -> None:
        if self._agent._link is None:
            return  # sent from the outbox after the next Welcome
        try:
            head = to_model_ref(self._agent._state.record_sent(task_id))
        except Exception:
            log.exception("task %s: cannot audit the sending; sent after a reconnect", task_id)
            return
        chunks = split_payload(payload, content_type)
        self._agent._from_thread(self._agent._on_result_ready, task_id, chunks, head)

    def result_held(self, task_id: str) -> None:
        self._agent._from_thread(self._agent._on_result_held, task_id)

    def ended(self, task_outcome: TaskOutcome) -> None:
        self._agent._from_thread(self._agent._on_outcome, task_outcome)
