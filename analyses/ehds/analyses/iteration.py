"""Analyses of several rounds: federated Newton/IRLS, a Kaplan-Meier grid agreed first.

Why rounds through the ordinary protocol, and not a side channel: every round is a task like
any other, so a node applies its whole envelope to each one (signed assignment, permit, policy,
release gate, disclosure rules, audit entry) and the coordinator keeps its crash safety (a
round's tasks and results are rows before they are acknowledged). A node never needs to know
that a task is part of an iteration, and never holds state that the coordinator depends on.

The shape of an iteration:

* Round 0 is the study as submitted: every target node receives the researcher's parameters
  unchanged (no ``round`` key).
* After every task of a round has ended, the coordinator calls :meth:`IterativeAnalysis.advance`
  with the released results of that round (node -> result) and the state it returned last time.
  It returns either :class:`NextRound` (send another round; ``round_input`` is what the nodes
  need, e.g. the current coefficients) or :class:`Finished` (the pooled result document's
  ``pooled`` part).
* Round ``r >= 1`` goes to the nodes that released a result in round ``r - 1``, with the
  parameters of round 0 plus ``"round": {"number": r, **round_input}`` (`round_parameters`).
  The analysis' parameter model declares that field (``round: <Model> | None = None``), so a
  node validates it like any other parameter; a researcher may not set it (the coordinator
  refuses a submitted study whose parameters carry it).
* In round ``r >= 1`` every node of round ``r - 1`` must release, or the study fails: an
  estimate pooled over a set of nodes that changed half-way equals no pooled fit.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

from ehds.analyses.base import (
    Analysis,
    AnalysisParameters,
    ComputeContext,
    JsonObject,
    canonical_json,
)

ROUND_FIELD: Final = "round"
"""The parameter that carries a round's input (absent in round 0)."""

P = TypeVar("P", bound=AnalysisParameters)


@dataclass(frozen=True)
class NextRound:
    """Send another round. ``round_input`` must be JSON (it travels in the parameters);
    ``state`` is kept by the coordinator (durably) and handed back at the next `advance`."""

    round_input: JsonObject
    state: JsonObject


@dataclass(frozen=True)
class Finished:
    """The iteration is over: ``result`` is the pooled part of the study's result document."""

    result: JsonObject


class IterationFailedError(Exception):
    """The analysis cannot go on (diverged, singular information, too many rounds): the study
    fails with this message (released aggregates only; never a row-level value)."""


class IterativeAnalysis(Analysis[P]):
    """An analysis computed in rounds; see the module docstring for the protocol."""

    max_rounds: ClassVar[int] = 50
    """Round numbers the coordinator will dispatch at most (0 .. max_rounds - 1)."""

    @abstractmethod
    def advance(
        self,
        params: P,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        """Coordinator side, after round ``round_number`` ended: the next round or the end.

        ``params`` are round 0's (no ``round``); ``state`` is ``None`` after round 0.
        Raise :class:`IterationFailedError` to fail the study with a message."""

    def aggregate(self, params: P, node_results: Mapping[str, JsonObject]) -> JsonObject:
        raise IterationFailedError(
            f"{self.ref()} is an iterative analysis: the coordinator calls advance(), not "
            "aggregate()"
        )


def is_iterative(analysis: Analysis[Any]) -> bool:
    return isinstance(analysis, IterativeAnalysis)


def round_parameters(base: bytes, round_number: int, round_input: Mapping[str, Any]) -> bytes:
    """The canonical parameter bytes of round ``round_number`` (>= 1): round 0's parameters
    plus ``"round": {"number": round_number, **round_input}``."""
    if round_number < 1:
        raise ValueError("round 0 carries the study's parameters unchanged")
    data = json.loads(base)
    # Round 0's canonical parameters hold ``"round": null`` (the model's default, dumped).
    if data.get(ROUND_FIELD) is not None:
        raise ValueError("the base parameters already carry a round")
    data[ROUND_FIELD] = {"number": round_number, **round_input}
    return canonical_json(data)


def submitted_round(raw: bytes) -> bool:
    """Whether submitted parameters carry a ``round`` (which only the coordinator may set);
    ``"round": null`` is the model's default, as `Analysis.encode_parameters` writes it."""
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get(ROUND_FIELD) is not None


def run_locally(
    analysis: IterativeAnalysis[Any],
    params: AnalysisParameters,
    contexts: Mapping[str, ComputeContext],
    *,
    on_round: Callable[[int, Mapping[str, JsonObject]], None] | None = None,
) -> tuple[JsonObject, int]:
    """Drive an iteration in one process, as the coordinator would (unit tests, `bench/`).

    Every node releases in every round here; returns the pooled result and the number of
    rounds run. Parameters travel as canonical JSON bytes between rounds, exactly as over the
    wire, so a parameter that does not survive JSON fails here too."""
    base = analysis.encode_parameters(params)
    state: JsonObject | None = None
    current = base
    for round_number in range(analysis.max_rounds):
        round_params = analysis.parse_parameters(current)
        results = {
            node: json.loads(canonical_json(analysis.compute(round_params, ctx)))
            for node, ctx in contexts.items()
        }
        if on_round is not None:
            on_round(round_number, results)
        step = analysis.advance(analysis.parse_parameters(base), round_number, state, results)
        if isinstance(step, Finished):
            return step.result, round_number + 1
        state = step.state
        current = round_parameters(base, round_number + 1, step.round_input)
    raise IterationFailedError(f"{analysis.ref()} did not finish in {analysis.max_rounds} rounds")
