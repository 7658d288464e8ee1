"""The Grafana dashboards shipped with the charts (`deploy/helm/*/dashboards/*.json`) against the
metrics the processes really expose.

Why: a dashboard is code that nothing runs until an operator opens it. Every PromQL expression
is read here, and every metric and label it names must be in the exposition of the process's
own registry (`CoordinatorMetrics`, `NodeMetrics`, with every sample created once), so that
renaming a metric fails this test instead of leaving an empty panel. Counters and histogram
series are only ever read through rate()/increase() (a raw counter is a meaningless sawtooth)
and histogram buckets only through histogram_quantile() by ``le``.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ehds.audit import AuditRef
from ehds.coordinator.effects import Effects
from ehds.coordinator.metrics import CoordinatorMetrics
from ehds.coordinator.state.database import create_state_engine, upgrade
from ehds.federation.model import AnalysisRef, ErrorCode
from ehds.node.metrics import NodeMetrics

ROOT: Final = Path(__file__).resolve().parents[2]
HELM: Final = ROOT / "deploy" / "helm"
COORDINATOR_DASHBOARD: Final = HELM / "coordinator" / "dashboards" / "ehds-coordinator.json"
NODE_DASHBOARD: Final = HELM / "node" / "dashboards" / "ehds-node.json"

PANEL_TYPES: Final = {"timeseries", "stat", "bargauge"}
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
TARGET_LABELS: Final = {"instance", "job"}
"""Labels Prometheus adds to every series it scrapes."""

COUNTER_SUFFIXES: Final = ("_total", "_bucket", "_sum", "_count", "_created")
RATE_FUNCTIONS: Final = ("rate", "irate", "increase")
KEYWORDS: Final = {"and", "or", "unless", "bool", "offset", "inf", "nan"}

# The operator's questions, and the series that answer them (each must be in some panel).
TOPICS: Final = {
    "nodes connected": {"ehds_coordinator_connected_nodes", "ehds_node_connected"},
    "studies by state": {"ehds_coordinator_studies"},
    "task latency": {
        "ehds_coordinator_task_latency_seconds_bucket",
        "ehds_node_task_duration_seconds_bucket",
    },
    "suppressed cells": {"ehds_node_suppressed_cells_total"},
    "refusals": {"ehds_coordinator_tasks_refused_total", "ehds_node_disclosure_refusals_total"},
    "audit chain length": {
        "ehds_coordinator_audit_chain_length",
        "ehds_node_audit_chain_length",
    },
    "FL round times": {"ehds_coordinator_round_seconds_bucket"},
}
COORDINATOR_TOPICS: Final = {
    "nodes connected",
    "studies by state",
    "task latency",
    "refusals",
    "audit chain length",
    "FL round times",
}
NODE_TOPICS: Final = {
    "nodes connected",
    "task latency",
    "suppressed cells",
    "refusals",
    "audit chain length",
}

# --------------------------------------------------------------------------- the exposition


@dataclass(frozen=True)
class Series:
    """What a registry exposes: series name -> its labels, and the counter-like ones."""

    labels: dict[str, frozenset[str]]
    counters: frozenset[str]


def exposition(registry: CollectorRegistry) -> Series:
    """Series names as Prometheus stores them (``_total``, ``_bucket``, ``_sum``, ``_count``
    included), parsed back from the text format the health port serves."""
    labels: dict[str, set[str]] = {}
    counters: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ("",))
        for suffix in suffixes:
            labels.setdefault(family.name + suffix, set())
            if suffix:
                counters.add(family.name + suffix)
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return Series({name: frozenset(found) for name, found in labels.items()}, frozenset(counters))


@pytest.fixture(scope="module")
def coordinator_series(tmp_path_factory: pytest.TempPathFactory) -> Series:
    """A coordinator's registry with every metric moved once, its state counts read from a
    real (empty, migrated) state database."""
    metrics = CoordinatorMetrics()
    label = "counts 1.0.0"
    metrics.record(
        Effects(
            dispatched=Counter({label: 1}),
            completed=[(label, 0.2)],
            failed=Counter({label: 1}),
            refused=Counter({label: 1}),
            rounds_ended=[("fl 1.0.0", 30.0)],
            studies_submitted=1,
        )
    )
    metrics.connected_nodes.set(1)
    metrics.stream_connects.inc()
    engine = create_state_engine(f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}")
    try:
        upgrade(engine)
        metrics.state.watch(engine)
        return exposition(metrics.registry)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def node_series() -> Series:
    metrics = NodeMetrics()
    counts = AnalysisRef("counts", "1.0.0")
    metrics.connected.set(1)
    metrics.reconnects.inc()
    metrics.task_ended(counts, None, 0.3)
    metrics.task_ended(counts, ErrorCode.DISCLOSURE_REFUSED, 0.1)
    metrics.cells_suppressed(counts, 2)
    metrics.disclosure_refused(counts, "differencing")
    metrics.follow_audit_chain(lambda: AuditRef("node hospital-a", 7, "0" * 64))
    return exposition(metrics.registry)


def test_the_exposition_has_the_series_the_dashboards_need(
    coordinator_series: Series, node_series: Series
) -> None:
    """The fixtures themselves: suffixed series, labels, the database-backed gauges."""
    assert coordinator_series.labels["ehds_coordinator_studies"] == {"state"}
    assert "ehds_coordinator_audit_chain_length" in coordinator_series.labels
    assert coordinator_series.labels["ehds_coordinator_round_seconds_bucket"] == {
        "analysis",
        "le",
    }
    assert "ehds_coordinator_tasks_refused_total" in coordinator_series.counters
    assert "ehds_coordinator_studies" not in coordinator_series.counters
    # prometheus_client adds _total to a counter named without it.
    assert node_series.labels["ehds_node_tasks_total"] == {"analysis", "outcome"}
    assert "ehds_node_tasks" not in node_series.labels
    assert "ehds_node_audit_chain_length" in node_series.labels


# --------------------------------------------------------------------------- PromQL, read lightly

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


@dataclass(frozen=True)
class Expr:
    """What an expression reads: metric names (in order), labels by metric, grouping labels."""

    text: str
    metrics: list[str]
    matcher_labels: dict[str, set[str]]
    grouping_labels: set[str]
    # ``rate(NAME)``-like wrappings of each metric name (the text without selectors/ranges).
    bare: str


def parse(expr: str) -> Expr:
    """Enough of PromQL for the dashboards' expressions: no subqueries, no `@`."""
    matcher_labels: dict[str, set[str]] = {}
    text = _STRING.sub('""', expr)
    for name, body in _SELECTOR.findall(text):
        matcher_labels.setdefault(name, set()).update(_MATCHER_LABEL.findall(body))
    bare = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    bare = _RANGE.sub("", bare)
    grouping: set[str] = set()
    for body in _GROUPING.findall(bare):
        grouping.update(label.strip() for label in body.split(",") if label.strip())
    bare = _GROUPING.sub(" ", bare)
    metrics = [
        name
        for name, call in _IDENTIFIER.findall(bare)
        if not call and name.lower() not in KEYWORDS
    ]
    return Expr(expr, metrics, matcher_labels, grouping, re.sub(r"\s+", "", bare))


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows' own panels included, rows themselves not)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel.get("title", "?"), str(target.get("expr", ""))


def drift(dashboard: dict[str, Any], series: Series) -> list[str]:
    """Everything in the dashboard's PromQL that the registry does not back, as messages."""
    problems: list[str] = []
    for title, text in expressions(dashboard):
        where = f"{title!r}: {text}"
        if not balanced(text):
            problems.append(f"{where}: unbalanced brackets")
            continue
        expr = parse(text)
        if not expr.metrics:
            problems.append(f"{where}: reads no metric")
        known_labels: set[str] = set(TARGET_LABELS)
        for name in expr.metrics:
            if name not in series.labels:
                problems.append(f"{where}: unknown metric {name}")
                continue
            known_labels |= series.labels[name]
            wrapped = len(re.findall(rf"\b(?:{'|'.join(RATE_FUNCTIONS)})\({name}\)", expr.bare))
            uses = len(re.findall(rf"(?<![\w:]){name}(?![\w:])", expr.bare))
            if name in series.counters and wrapped != uses:
                problems.append(f"{where}: counter {name} read without rate()/increase()")
            if name not in series.counters and wrapped:
                problems.append(f"{where}: rate() of the gauge {name}")
            if name.endswith("_bucket") and not (
                "histogram_quantile(" in expr.bare and "le" in expr.grouping_labels
            ):
                problems.append(f"{where}: {name} outside histogram_quantile(... by (le))")
        for name, labels in expr.matcher_labels.items():
            allowed = series.labels.get(name, frozenset()) | TARGET_LABELS
            for label in sorted(labels - allowed):
                problems.append(f"{where}: {name} has no label {label!r}")
        for label in sorted(expr.grouping_labels - known_labels):
            problems.append(f"{where}: grouping by {label!r}, a label none of its metrics has")
    return problems


# --------------------------------------------------------------------------- the tests


def load(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


DASHBOARDS: Final = pytest.mark.parametrize(
    "path", [COORDINATOR_DASHBOARD, NODE_DASHBOARD], ids=["coordinator", "node"]
)


def datasources(node: Any) -> Iterator[Any]:
    """Every ``datasource`` value anywhere in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasources(item)


@DASHBOARDS
def test_a_dashboard_is_grafana_dashboard_json(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["title"].startswith("EHDS ")
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["uid"] == path.stem
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None  # provisioned: Grafana assigns its own
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    shown = list(panels(dashboard))
    assert len(shown) >= 6
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in shown:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == DATASOURCE
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip()
    # No data source is named by uid: the one chosen in the variable is used everywhere.
    for value in datasources(dashboard):
        assert value in (DATASOURCE, {"type": "grafana", "uid": "-- Grafana --"})


def test_uids_and_titles_are_unique_across_the_charts() -> None:
    found = sorted(HELM.glob("*/dashboards/*.json"))
    assert found == sorted([COORDINATOR_DASHBOARD, NODE_DASHBOARD])
    documents = [load(path) for path in found]
    assert len({d["uid"] for d in documents}) == len({d["title"] for d in documents}) == 2


def test_the_coordinator_dashboard_reads_only_what_the_coordinator_exposes(
    coordinator_series: Series,
) -> None:
    assert drift(load(COORDINATOR_DASHBOARD), coordinator_series) == []


def test_the_node_dashboard_reads_only_what_the_node_exposes(node_series: Series) -> None:
    assert drift(load(NODE_DASHBOARD), node_series) == []


def topics_of(dashboard: dict[str, Any]) -> set[str]:
    read = {name for _, text in expressions(dashboard) for name in parse(text).metrics}
    return {topic for topic, names in TOPICS.items() if names & read}


def test_every_question_of_an_operator_has_a_panel() -> None:
    coordinator = topics_of(load(COORDINATOR_DASHBOARD))
    node = topics_of(load(NODE_DASHBOARD))
    assert coordinator >= COORDINATOR_TOPICS
    assert node >= NODE_TOPICS
    assert coordinator | node == set(TOPICS)


def test_the_drift_check_catches_what_the_code_does_not_expose(
    coordinator_series: Series,
) -> None:
    dashboard = copy.deepcopy(load(COORDINATOR_DASHBOARD))
    targets = next(iter(panels(dashboard)))["targets"]
    targets[0]["expr"] = "sum(rate(ehds_coordinator_tasks_vanished_total[5m]))"
    targets.append(
        {"refId": "Y", "datasource": DATASOURCE, "expr": "sum(ehds_coordinator_tasks_failed_total)"}
    )
    targets.append(
        {
            "refId": "Z",
            "datasource": DATASOURCE,
            "expr": 'sum by (node) (ehds_coordinator_studies{phase="x"})',
        }
    )
    problems = drift(dashboard, coordinator_series)
    assert len(problems) == 4, problems
    assert "unknown metric ehds_coordinator_tasks_vanished_total" in problems[0]
    assert "counter ehds_coordinator_tasks_failed_total read without rate()" in problems[1]
    assert "ehds_coordinator_studies has no label 'phase'" in problems[2]
    assert "grouping by 'node'" in problems[3]


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        (
            'histogram_quantile(0.95, sum by (le, analysis) (rate(x_bucket{a=~"$v"}[5m])))',
            ["x_bucket"],
            {"le", "analysis"},
        ),
        (
            "sum(increase(a_sum[$__range])) / sum(increase(a_count[$__range]))",
            ["a_sum", "a_count"],
            set(),
        ),
        ('max by (state) (s{state=~"A|B"}) * 60', ["s"], {"state"}),
        ("up == bool 1 and on (instance) y", ["up", "y"], {"instance"}),
    ],
)
def test_the_promql_reader_finds_metrics_and_grouping_labels(
    expr: str, metrics: list[str], grouping: set[str]
) -> None:
    parsed = parse(expr)
    assert parsed.metrics == metrics
    assert parsed.grouping_labels == grouping
    assert balanced(expr)
    assert not balanced(expr + ")")
