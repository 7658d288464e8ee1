"""The coordinator's Prometheus metrics, in a registry of their own (no global state: two
coordinators in one test process must not share counters).

Counting rules: a task counts as dispatched when its TaskAssignment is first sent (re-sends after
a reconnect do not count), completed when its result is stored, refused or failed when it ends
so (a TIMED_OUT task counts as failed; a CANCELLED one in neither). Latency runs from the first
dispatch to the stored result. Metrics move only after the change is committed.

A round of an iterative study (federated learning, and the built-in iterative fits such as the
GLMs) runs from its first task's dispatch to its last task's end; it is timed once, in the
transaction where that last task ends, whatever the study does next.

Studies by state and the audit chain's length are not counted as things happen: they are read
from the state database when Prometheus scrapes (`StateCounts`), so they are right from the
first scrape after a restart and cannot drift from the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from ehds.coordinator.effects import Effects
from ehds.coordinator.state.models import AUDIT_LOG, StudyRow
from ehds.federation.model import StudyState

__all__ = ["CoordinatorMetrics", "StateCounts"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
)

ROUND_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
"""A round waits for its slowest node: seconds on a test federation, hours on a real one."""

STUDY_STATES: Final = tuple(
    state.name for state in StudyState if state is not StudyState.UNSPECIFIED
)
"""Every state a study can be in: each is reported, 0 when no study is in it, so that a
dashboard's series do not come and go."""


class StateCounts(Collector):
    """``ehds_coordinator_studies{state}`` and ``ehds_coordinator_audit_chain_length``, read
    from the state database at scrape time.

    Why at scrape time: the database is the truth, and a gauge kept in memory would start from
    zero after a restart or miss changes made by another path (retention, migrations). Two
    cheap queries: a GROUP BY on the indexed ``studies.state`` and the chain's highest ``seq``
    (the chain is numbered 1, 2, ... without gaps, so its head's seq is its length).

    The scrape runs on the health port's thread, on a connection of its own from the engine's
    pool, not through the `DatabaseWorker`: it only reads (SQLite's WAL lets it read beside
    the writer), and it must answer while the event loop is busy. Until `watch` is given an
    engine, or when the database cannot be read, the metrics have no samples (a gap on the
    dashboard, and the failure in the log) rather than a made-up zero.
    """

    STUDIES: Final = "ehds_coordinator_studies"
    AUDIT_CHAIN_LENGTH: Final = "ehds_coordinator_audit_chain_length"

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def watch(self, engine: Engine | None) -> None:
        """Read from ``engine`` from now on (None: stop reading, e.g. while stopping)."""
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        studies, chain = self._families()
        engine = self._engine
        if engine is None:
            return [studies, chain]
        try:
            with engine.connect() as connection:
                query = select(StudyRow.state, func.count()).group_by(StudyRow.state)
                counts = {str(state): int(count) for state, count in connection.execute(query)}
                head = connection.execute(select(func.max(AUDIT_LOG.c.seq))).scalar()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the state database: %s", exc)
            return [studies, chain]
        for state in STUDY_STATES:
            studies.add_metric([state], counts.pop(state, 0))
        for state, count in sorted(counts.items()):  # a state this version does not know
            studies.add_metric([state], count)
        chain.add_metric([], 0 if head is None else int(head))
        return [studies, chain]

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                self.STUDIES, "Studies in the state database, by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                self.AUDIT_CHAIN_LENGTH, "Entries in the coordinator's own audit chain."
            ),
        )


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connected_nodes = Gauge(
            "ehds_coordinator_connected_nodes", "Nodes with an open NodeLink stream.", registry=r
        )
        self.tasks_dispatched = Counter(
            "ehds_coordinator_tasks_dispatched_total",
            "Tasks sent to a node for the first time.",
            ["analysis"],
            registry=r,
        )
        self.tasks_completed = Counter(
            "ehds_coordinator_tasks_completed_total",
            "Tasks whose result is stored.",
            ["analysis"],
            registry=r,
        )
        self.tasks_failed = Counter(
            "ehds_coordinator_tasks_failed_total",
            "Tasks that failed at the node, timed out, or whose node was revoked.",
            ["analysis"],
            registry=r,
        )
        self.tasks_refused = Counter(
            "ehds_coordinator_tasks_refused_total",
            "Tasks a node refused (policy, permit, disclosure, analysis not offered).",
            ["analysis"],
            registry=r,
        )
        self.task_latency = Histogram(
            "ehds_coordinator_task_latency_seconds",
            "From a task's dispatch to its stored result.",
            ["analysis"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_connects = Counter(
            "ehds_coordinator_stream_connects_total",
            "NodeLink streams welcomed.",
            registry=r,
        )
        self.studies_submitted = Counter(
            "ehds_coordinator_studies_submitted_total",
            "Studies created (a repeated request_id does not count).",
            registry=r,
        )
        self.round_seconds = Histogram(
            "ehds_coordinator_round_seconds",
            "Rounds of iterative studies (federated learning, iterative fits), from the "
            "round's first dispatch to the end of its last task.",
            ["analysis"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.state = StateCounts()
        r.register(self.state)

    def record(self, effects: Effects) -> None:
        for label, count in effects.dispatched.items():
            self.tasks_dispatched.labels(analysis=label).inc(count)
        for label, latency in effects.completed:
            self.tasks_completed.labels(analysis=label).inc()
            self.task_latency.labels(analysis=label).observe(latency)
        for label, count in effects.failed.items():
            self.tasks_failed.labels(analysis=label).inc(count)
        for label, count in effects.refused.items():
            self.tasks_refused.labels(analysis=label).inc(count)
        for label, seconds in effects.rounds_ended:
            self.round_seconds.labels(analysis=label).observe(seconds)
        if effects.studies_submitted:
            self.studies_submitted.inc(effects.studies_submitted)
