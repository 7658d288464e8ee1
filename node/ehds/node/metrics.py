"""The node's Prometheus metrics, served on its plain health port.

One object per agent, on its own `CollectorRegistry` (never prometheus' global default), so
that tests and several agents in one process do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ehds.audit import AuditRef
from ehds.federation.model import AnalysisRef, ErrorCode

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def outcome_label(code: ErrorCode | None) -> str:
    """``done`` for a result, else ``refused`` (a decision), ``cancelled`` or ``failed``."""
    if code is None:
        return "done"
    if code.is_refusal:
        return "refused"
    if code is ErrorCode.CANCELLED:
        return "cancelled"
    return "failed"


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.connected = Gauge(
            "ehds_node_connected",
            "1 while the node holds a welcomed stream to the coordinator, else 0",
            registry=self.registry,
        )
        self.reconnects = Counter(
            "ehds_node_stream_reconnects",
            "Connection attempts after the first one (stream lost or attempt failed)",
            registry=self.registry,
        )
        self.tasks = Counter(
            "ehds_node_tasks",
            "Tasks ended at this node, by analysis and outcome (done|refused|failed|cancelled)",
            ["analysis", "outcome"],
            registry=self.registry,
        )
        self.task_duration = Histogram(
            "ehds_node_task_duration_seconds",
            "Time from a task's start on a worker to its end, by analysis",
            ["analysis"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        # Disclosure control, visible to operators: how much a node withholds, and why.
        self.suppressed_cells = Counter(
            "ehds_node_suppressed_cells",
            "Result cells released as suppressed (count 1 to threshold-1, or complementary), "
            "by analysis",
            ["analysis"],
            registry=self.registry,
        )
        self.disclosure_refusals = Counter(
            "ehds_node_disclosure_refusals",
            "Tasks refused by a disclosure rule (e.g. differencing), by analysis and rule",
            ["analysis", "rule"],
            registry=self.registry,
        )
        # Read when scraped (`follow_audit_chain`), never counted here: after a restart it is
        # the chain's length in the state database, not the entries since the start.
        self.audit_chain_length = Gauge(
            "ehds_node_audit_chain_length",
            "Entries in the node's own audit chain (0 until the agent attaches it)",
            registry=self.registry,
        )

    def follow_audit_chain(self, head: Callable[[], AuditRef | None]) -> None:
        """Report the length of the chain whose head ``head()`` returns (`NodeState.audit_head`:
        kept in memory, read from the database when the chain is attached, so a scrape costs
        no query). The chain is numbered 1, 2, ... without gaps: its head's seq is its length."""

        def length() -> float:
            ref = head()
            return 0.0 if ref is None else float(ref.seq)

        self.audit_chain_length.set_function(length)

    def task_ended(self, analysis: AnalysisRef, code: ErrorCode | None, seconds: float) -> None:
        label = str(analysis)
        self.tasks.labels(analysis=label, outcome=outcome_label(code)).inc()
        self.task_duration.labels(analysis=label).observe(seconds)

    def cells_suppressed(self, analysis: AnalysisRef | str, n: int) -> None:
        """``n`` cells of one released result were suppressed (0 still creates the series, so
        a dashboard shows the analysis with nothing withheld)."""
        if n < 0:
            raise ValueError(f"suppressed cell count must be >= 0, got {n}")
        self.suppressed_cells.labels(analysis=str(analysis)).inc(n)

    def disclosure_refused(self, analysis: AnalysisRef | str, rule: str) -> None:
        self.disclosure_refusals.labels(analysis=str(analysis), rule=rule).inc()
