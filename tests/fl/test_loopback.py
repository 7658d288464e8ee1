"""End to end in one machine: a ServerApp process and one isolated ClientApp worker per node.

Two apps: the unmodified Flower app of bench/flower_app (a count query written only against
Flower's public API, as a researcher would write it) and tests/fl/apps/fedavg_app (FedAvg
over NumPy arrays, whose result is known exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehds.fl.bundle import build_fab
from ehds.fl.loopback import LoopbackError, run_loopback

BENCH_APP = Path(__file__).parents[2] / "bench" / "flower_app"
APP = Path(__file__).parent / "apps" / "fedavg_app"


@pytest.mark.parametrize("poll", [0.0, 0.001], ids=["send-and-receive", "push-then-pull"])
def test_unmodified_flower_app_runs_over_three_workers(tmp_path: Path, poll: float) -> None:
    timings = tmp_path / "timings.json"
    config = {"timings-path": str(timings), "rounds": 2, "warmup-rounds": 0, "min-nodes": 3}
    summary = run_loopback(
        build_fab(BENCH_APP),
        tmp_path / "work",
        {**config, "reply-poll-seconds": poll},
        {f"node-{i}": {"count": i + 1, "node-name": f"node-{i}"} for i in range(3)},
        timeout=60,
    )
    written = json.loads(timings.read_text())
    assert written["error"] is None
    assert [(r["total"], r["replies"]) for r in written["rounds"]] == [(6, 3), (6, 3)]
    assert [(r["round"], r["type"]) for r in summary["rounds"]] == [("0", "query"), ("1", "query")]
    assert summary["rounds"][0]["nodes"]["node-2"] == {"count": 3.0}
    assert summary["rounds"][0]["aggregate"] == {"count": 2.0}
    assert summary["model"] == {"source": "none", "arrays": {}}
    rounds = summary["loopback"]["round_seconds"]
    assert len(rounds) == 2
    print(f"loopback round seconds (bench app, 3 nodes): {rounds}")
    print(f"flower-side round seconds: {[r['seconds'] for r in written['rounds']]}")


def test_fedavg_app_summary_has_model_rounds_and_aggregates(tmp_path: Path) -> None:
    nodes = {"a": (1.0, 10), "b": (2.0, 30), "c": (4.0, 60)}
    summary = run_loopback(
        build_fab(APP),
        tmp_path / "work",
        {"min-nodes": 3, "num-server-rounds": 2},
        {name: {"value": v, "n": n, "node-name": name} for name, (v, n) in nodes.items()},
        timeout=60,
    )
    mean = (1.0 * 10 + 2.0 * 30 + 4.0 * 60) / 100
    assert summary["isolation"] in {"netns+audit", "audit"}
    assert [(r["round"], r["type"]) for r in summary["rounds"]] == [
        ("1", "train"),
        ("1", "evaluate"),
        ("2", "train"),
        ("2", "evaluate"),
    ]
    train = summary["rounds"][2]
    assert train["nodes"]["c"] == {"num-examples": 60.0, "train-loss": 4.0, "calls": 2.0}
    assert train["aggregate"]["train-loss"] == pytest.approx(mean)
    assert train["aggregate"]["num-examples"] == 100.0
    assert summary["rounds"][3]["aggregate"]["eval-loss"] == pytest.approx(mean)
    model = summary["model"]
    assert model["source"] == "context.state"
    np.testing.assert_allclose(model["arrays"]["ehds.model"]["w"]["values"], [2 * mean] * 3)
    np.testing.assert_allclose(model["arrays"]["ehds.model"]["b"]["values"], [2 * mean])
    assert summary["state"] == {"ehds.info": {"rounds": 2}}


def test_failing_serverapp_raises_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(LoopbackError, match="RuntimeError: planned failure"):
        run_loopback(
            build_fab(APP),
            tmp_path / "work",
            {"fail": True},
            {"a": {"value": 1.0, "n": 1, "node-name": "a"}},
            timeout=60,
        )


def test_unknown_run_config_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not declared"):
        run_loopback(build_fab(APP), tmp_path / "work", {"typo": 1}, {}, timeout=10)
