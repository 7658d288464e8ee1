"""Analyses that exist only for tests: one that blocks, one that returns a large result, one
that runs in rounds.

They read no data and release nothing about any person, but they are still analyses like any
other: a node runs them only when its ``policy.yaml`` lists them, and no example policy does.
Only the test suites' own policies allow them, to kill a node in the middle of a task
(`test.sleep`), to cancel a running task, to send a result over gRPC's 4 MiB message limit
(`test.blob`), or to drive an iteration through the coordinator without statistics in the way
(`test.rounds`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any, Final

from pydantic import Field

from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.iteration import Finished, IterativeAnalysis, NextRound
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


MAX_TEST_ROUNDS: Final = 10


class RoundsInput(AnalysisParameters):
    """What the coordinator adds to the parameters of round >= 1."""

    number: int = Field(ge=1)
    total: int = 0


class RoundsParameters(AnalysisParameters):
    rounds: int = Field(ge=1, le=MAX_TEST_ROUNDS)
    value: int
    round: RoundsInput | None = None


class RoundsAnalysis(IterativeAnalysis[RoundsParameters]):
    """Runs ``rounds`` rounds. Each node releases ``value`` plus the pooled total of the round
    before (0 in round 0); the coordinator sums them into the new total. With n nodes whose
    values sum to S, the totals are S, (n + 1)S, ((n + 1)n + 1)S, ... : a node that got a
    round's input wrong, or a round counted twice, changes the result."""

    name = "test.rounds"
    version = "1.0.0"
    parameters = RoundsParameters
    description = "Tests only: an iteration of a given number of rounds."

    def compute(self, params: RoundsParameters, ctx: ComputeContext) -> JsonObject:
        ctx.check_cancelled()
        previous = params.round.total if params.round is not None else 0
        return {"value": params.value + previous}

    def advance(
        self,
        params: RoundsParameters,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        total = sum(int(result["value"]) for result in node_results.values())
        if round_number + 1 >= params.rounds:
            return Finished({"total": total, "rounds": params.rounds})
        return NextRound(round_input={"total": total}, state={"total": total})

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return ["total", "rounds"], [[aggregate.get("total"), aggregate.get("rounds")]]
