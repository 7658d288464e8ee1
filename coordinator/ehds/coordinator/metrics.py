"""The coordinator's Prometheus metrics, in a registry of their own (no global state: two
coordinators in one test process must not share counters).

Counting rules: a task counts as dispatched when its TaskAssignment is first sent (re-sends after
a reconnect do not count), completed when its result is stored, refused or failed when it ends
so (a TIMED_OUT task counts as failed; a CANCELLED one in neither). Latency runs from the first
dispatch to the stored result. Metrics move only after the change is committed.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ehds.coordinator.effects import Effects

__all__ = ["CoordinatorMetrics"]

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
        if effects.studies_submitted:
            self.studies_submitted.inc(effects.studies_submitted)
