"""Analyses that exist only for fault tests: one that blocks, one that returns a large result.

They read no data and release nothing about any person, but they are still analyses like any
other: a node runs them only when its ``policy.yaml`` lists them, and no example policy does.
Only the test suites' own policies allow them, to kill a node in the middle of a task
(`test.sleep`), to cancel a running task, or to send a result over gRPC's 4 MiB message limit
(`test.blob`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any, Final

from pydantic import Field

from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.federation.model import TaskStage

CANCEL_POLL_SECONDS: Final = 0.05
"""How often a sleeping task looks at its cancel flag: a cancel takes effect within this."""

PROGRESS_SECONDS: Final = 1.0
"""How often a sleeping task reports progress (more often would only load the stream)."""

MAX_BLOB_BYTES: Final = 64 * 1024 * 1024


class SleepParameters(AnalysisParameters):
    seconds: float = Field(ge=0, le=3600, allow_inf_nan=False)


class SleepAnalysis(Analysis[SleepParameters]):
    """Blocks for ``seconds``, and stops within 50 ms of a cancel or deadline."""

    name = "test.sleep"
    version = "1.0.0"
    parameters = SleepParameters
    description = "Fault tests only: block for a number of seconds."

    def compute(self, params: SleepParameters, ctx: ComputeContext) -> JsonObject:
        started = time.monotonic()
        until = started + params.seconds
        last_report = started
        ctx.report(TaskStage.COMPUTING, 0.0)
        while True:
            ctx.check_cancelled()
            now = time.monotonic()
            if now >= until:
                break
            if now - last_report >= PROGRESS_SECONDS:
                ctx.report(TaskStage.COMPUTING, (now - started) / params.seconds)
                last_report = now
            # Event.wait returns at once when the cancel flag is set.
            ctx.cancelled.wait(min(CANCEL_POLL_SECONDS, until - now))
        return {"slept": params.seconds}

    def aggregate(
        self, params: SleepParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        return {"slept": {node: node_results[node]["slept"] for node in sorted(node_results)}}

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        slept = aggregate.get("slept", {})
        return ["node", "slept_seconds"], [[node, slept[node]] for node in sorted(slept)]


class BlobParameters(AnalysisParameters):
    size_bytes: int = Field(ge=0, le=MAX_BLOB_BYTES)


def blob(size_bytes: int) -> str:
    """``size_bytes`` ASCII hex characters, the same for the same size on every machine.

    Not a repeated short pattern: a chunk lost, duplicated or swapped on the way changes the
    text, so a test comparing it end to end catches reassembly bugs a pattern would hide.
    """
    return hashlib.shake_256(b"ehds test.blob").hexdigest((size_bytes + 1) // 2)[:size_bytes]


class BlobAnalysis(Analysis[BlobParameters]):
    """Returns a deterministic string of ``size_bytes`` characters (JSON slightly larger)."""

    name = "test.blob"
    version = "1.0.0"
    parameters = BlobParameters
    description = "Fault tests only: return a large deterministic result."

    def compute(self, params: BlobParameters, ctx: ComputeContext) -> JsonObject:
        ctx.check_cancelled()
        return {"blob": blob(params.size_bytes)}

    def aggregate(
        self, params: BlobParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        return {"sizes": {node: len(node_results[node]["blob"]) for node in sorted(node_results)}}

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        sizes = aggregate.get("sizes", {})
        return ["node", "size_bytes"], [[node, sizes[node]] for node in sorted(sizes)]
