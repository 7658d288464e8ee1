"""The fault-test analyses: `test.sleep` blocks and stops at once when cancelled, `test.blob`
returns a deterministic result of the size asked for (JSON over gRPC's 4 MiB limit)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ehds.analyses.base import (
    ComputeContext,
    InvalidParametersError,
    TaskCancelledError,
    canonical_json,
)
from ehds.analyses.registry import default_registry
from ehds.analyses.testing import BlobAnalysis, BlobParameters, SleepAnalysis, SleepParameters
from ehds.core.config import load_config
from ehds.federation.model import AnalysisRef, TaskStage
from ehds.node.policy import Policy

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def _ctx(cancelled: threading.Event | None = None) -> ComputeContext:
    # These analyses never touch the CDM.
    return ComputeContext(cdm=None, min_cell_count=10, cancelled=cancelled or threading.Event())


def test_registered_under_their_test_names() -> None:
    registry = default_registry()
    assert isinstance(registry.get(AnalysisRef("test.sleep", "1.0.0")), SleepAnalysis)
    assert isinstance(registry.get(AnalysisRef("test.blob", "1.0.0")), BlobAnalysis)


def test_sleep_sleeps_and_reports() -> None:
    reports: list[tuple[TaskStage, float]] = []
    ctx = ComputeContext(None, 10, report=lambda stage, f: reports.append((stage, f)))
    started = time.monotonic()
    result = SleepAnalysis().compute(SleepParameters(seconds=0.2), ctx)
    elapsed = time.monotonic() - started
    assert result == {"slept": 0.2}
    assert 0.2 <= elapsed < 2.0
    assert reports[0] == (TaskStage.COMPUTING, 0.0)
    assert SleepAnalysis().compute(SleepParameters(seconds=0), _ctx()) == {"slept": 0.0}


def test_sleep_stops_within_the_poll_interval_when_cancelled() -> None:
    cancelled = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            SleepAnalysis().compute(SleepParameters(seconds=60), _ctx(cancelled))
        except TaskCancelledError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.2)
    assert worker.is_alive()
    cancelled.set()
    set_at = time.monotonic()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - set_at < 0.5
    assert len(outcome) == 1


def test_sleep_aggregate_and_table() -> None:
    analysis = SleepAnalysis()
    params = SleepParameters(seconds=1)
    pooled = analysis.aggregate(params, {"fr": {"slept": 1.0}, "dk": {"slept": 1.0}})
    assert pooled == {"slept": {"dk": 1.0, "fr": 1.0}}
    assert analysis.table(pooled) == (["node", "slept_seconds"], [["dk", 1.0], ["fr", 1.0]])


@pytest.mark.parametrize(
    ("analysis", "raw", "expected"),
    [
        (SleepAnalysis(), {"seconds": -1}, "parameters.seconds: Input should be greater than"),
        (SleepAnalysis(), {"seconds": 3601}, "parameters.seconds: Input should be less than"),
        (SleepAnalysis(), {"seconds": "1"}, "parameters.seconds: Input should be a valid number"),
        (SleepAnalysis(), {}, "parameters.seconds: Field required"),
        (BlobAnalysis(), {"size_bytes": 64 * 1024 * 1024 + 1}, "parameters.size_bytes: Input"),
        (BlobAnalysis(), {"size_bytes": 1.5}, "parameters.size_bytes: Input should be a valid"),
        (BlobAnalysis(), {"size_bytes": 1, "x": 1}, "parameters.x: unknown parameter"),
    ],
)
def test_bad_parameters(analysis: Any, raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidParametersError, match=expected):
        analysis.parse_parameters(raw)


def test_sleep_rejects_non_finite_seconds() -> None:
    with pytest.raises(InvalidParametersError, match=r"parameters\.seconds"):
        SleepAnalysis().parse_parameters(b'{"seconds": NaN}')


def test_blob_is_deterministic_ascii_of_the_size_asked() -> None:
    analysis = BlobAnalysis()
    for size in (0, 1, 2, 7, 1000):
        blob = analysis.compute(BlobParameters(size_bytes=size), _ctx())["blob"]
        assert len(blob) == size
        assert blob.isascii()
    five_mib = 5 * 1024 * 1024
    first = analysis.compute(BlobParameters(size_bytes=five_mib), _ctx())
    second = analysis.compute(BlobParameters(size_bytes=five_mib), _ctx())
    assert first == second
    assert len(canonical_json(first)) > 4 * 1024 * 1024
    # Not a short repeated pattern: any two 1 MiB chunks differ.
    blob = first["blob"]
    mib = 1024 * 1024
    assert len({blob[i : i + mib] for i in range(0, five_mib, mib)}) == 5
    assert blob[:10] == analysis.compute(BlobParameters(size_bytes=10), _ctx())["blob"]


def test_blob_aggregate_and_table() -> None:
    analysis = BlobAnalysis()
    pooled = analysis.aggregate(
        BlobParameters(size_bytes=3), {"fr": {"blob": "abc"}, "fi": {"blob": "abc"}}
    )
    assert pooled == {"sizes": {"fi": 3, "fr": 3}}
    assert analysis.table(pooled) == (["node", "size_bytes"], [["fi", 3], ["fr", 3]])


def test_no_example_policy_allows_the_test_analyses() -> None:
    policies = sorted(EXAMPLES.glob("policy*.yaml"))
    assert policies, "deploy/examples/policy.yaml is missing"
    for path in policies:
        policy = load_config(Policy, path)
        assert not any(a.name.startswith("test.") for a in policy.analyses), path
