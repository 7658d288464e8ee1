"""`glm` 1.0.0: a generalised linear model fitted on the pooled rows of every node, in rounds.

Node side (`Glm.compute`): the study's design table is built once in its workspace (`design`);
every round checks the disclosure guards (`guards`) and the release guard (same population
fingerprint in every round), then

* round 0: releases ``n`` and its own local fit (IRLS in the engine, one aggregate query per
  iteration): the per-node estimates, their meta-analysis, and the federated fit's start;
* round r >= 1 (``round.coefficients`` = β): releases ``n``, the score ``X'(y - mu)``, the
  information ``X'WX``, the deviance and Pearson χ² at β, from ONE aggregate query.

Coordinator side (`Glm.advance`): sums the nodes' scores and information and takes a Newton
step (`irls`): the same iteration as statsmodels' IRLS on the pooled rows, so the estimates,
standard errors and intervals equal that fit (to the convergence tolerance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ehds.analyses.base import ComputeContext, JsonObject
from ehds.analyses.iteration import Finished, IterationFailedError, IterativeAnalysis, NextRound
from ehds.analyses.person_time import population_fingerprint
from ehds.federation.model import TaskStage

from . import irls
from .design import design_table
from .guards import check_guards
from .inference import result_document, table_rows, warm_start
from .parameters import GlmParameters
from .sums import (
    DEVIANCE,
    PEARSON,
    SUM_EXPOSURE,
    SUM_Y,
    evaluate,
    guard_metrics,
    round_metrics,
    score_and_information,
)


def start_values(row: Mapping[str, Any], params: GlmParameters, n: int) -> np.ndarray:
    """A local fit's start: the intercept of the null model, other terms 0 (the guards have
    checked that the outcome is neither always nor never present)."""
    beta = np.zeros(params.parameter_count)
    sum_y = float(row[SUM_Y] or 0.0)
    if params.family == "binomial" and 0 < sum_y < n:
        beta[0] = float(np.log(sum_y / (n - sum_y)))
    elif params.family == "poisson" and sum_y > 0:
        beta[0] = float(np.log(sum_y / float(row[SUM_EXPOSURE])))
    return beta


class Glm(IterativeAnalysis[GlmParameters]):
    name = "glm"
    version = "1.0.0"
    parameters = GlmParameters
    description = (
        "Generalised linear model (logistic, Poisson with a person-time offset, linear) fitted "
        "exactly on the pooled rows by federated Newton-Raphson, with per-node fits and their "
        "random-effects meta-analysis."
    )

    # ------------------------------------------------------------------ node side

    def compute(self, params: GlmParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        design, built = design_table(ctx, params)
        ctx.check_cancelled()
        if built:
            # The release guard sees the population whenever its table is built (round 0, or a
            # later round after the workspace was dropped). A later round on the same table
            # describes the same persons: the guard would find it identical to the population
            # it recorded, so asking again would only cost a join over every person (about a
            # quarter of a Newton round at 1,000,000 rows).
            ctx.check_population(
                design.select("person_id").distinct(),
                fingerprint=population_fingerprint(self.name, params.without_round()),
            )
        ctx.report(TaskStage.COMPUTING, 0.3)
        p = params.parameter_count
        if params.round is None:
            row = evaluate(design, guard_metrics(design, params), engine)
            n = check_guards(row, params, ctx.min_cell_count)
            return {"n": n, "local": self._local_fit(params, ctx, design, row, n)}
        beta = params.round.coefficients
        metrics = {**guard_metrics(design, params), **round_metrics(design, params, beta)}
        row = evaluate(design, metrics, engine)
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        n = check_guards(row, params, ctx.min_cell_count)
        score, information = score_and_information(row, p)
        sums = irls.Sums(n, score, information, float(row[DEVIANCE]), float(row[PEARSON]))
        return sums.as_json()

    def _local_fit(
        self,
        params: GlmParameters,
        ctx: ComputeContext,
        design: Any,
        guard_row: Mapping[str, Any],
        n: int,
    ) -> JsonObject:
        """This node's own fit (one aggregate query per iteration); ``converged: false`` with
        no estimates when its information is singular (e.g. a covariate constant here)."""
        engine = ctx.require_engine()
        beta = start_values(guard_row, params, n)
        previous: float | None = None
        for iteration in range(1, params.max_iterations + 1):
            ctx.check_cancelled()
            row = evaluate(design, round_metrics(design, params, list(beta)), engine)
            score, information = score_and_information(row, params.parameter_count)
            sums = irls.Sums(n, score, information, float(row[DEVIANCE]), float(row[PEARSON]))
            try:
                outcome = irls.step(
                    params.family,
                    beta,
                    sums,
                    previous,
                    tolerance=params.tolerance,
                    last=iteration == params.max_iterations,
                )
            except irls.SingularInformationError:
                return {"converged": False, "iterations": iteration}
            if isinstance(outcome, irls.Fit):
                if not outcome.converged:
                    return {"converged": False, "iterations": iteration}
                return {
                    "converged": True,
                    "iterations": iteration,
                    "coefficients": [float(v) for v in outcome.coefficients],
                    "covariance": [[float(v) for v in r] for r in outcome.covariance],
                    "deviance": outcome.deviance,
                }
            beta, previous = outcome.coefficients, outcome.deviance
        raise AssertionError("unreachable: the last iteration always returns")

    # ------------------------------------------------------------------ coordinator side

    def advance(
        self,
        params: GlmParameters,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        p = params.parameter_count
        if not node_results:
            raise IterationFailedError("glm: no node released a result")
        if round_number == 0:
            first = {node: _round0(node, result) for node, result in node_results.items()}
            start = warm_start({node: r.get("local") for node, r in first.items()}, p)
            return NextRound(
                {"coefficients": start},
                {"round0": first, "coefficients": start, "previous_deviance": None},
            )
        assert state is not None
        round0: dict[str, JsonObject] = state["round0"]
        if set(node_results) != set(round0):
            raise IterationFailedError("glm: the nodes of this round differ from those of round 0")
        total: irls.Sums | None = None
        for node in sorted(node_results):
            try:
                sums = irls.Sums.from_json(node_results[node], p)
            except (TypeError, ValueError) as exc:
                raise IterationFailedError(
                    f"glm: the result of node {node!r} is not a round result ({exc})"
                ) from None
            if sums.n != round0[node]["n"]:
                raise IterationFailedError(
                    f"glm: node {node!r} described another population than in round 0"
                )
            total = sums if total is None else total + sums
        assert total is not None
        beta = np.asarray(state["coefficients"], dtype=float)
        try:
            outcome = irls.step(
                params.family,
                beta,
                total,
                state["previous_deviance"],
                tolerance=params.tolerance,
                last=round_number >= params.max_iterations,
            )
        except irls.SingularInformationError as exc:
            raise IterationFailedError(
                f"glm: {exc} over the pooled nodes: a covariate is constant, or a linear "
                "combination of others, in the pooled population; remove it"
            ) from None
        if isinstance(outcome, irls.Fit):
            return Finished(
                result_document(
                    params,
                    outcome,
                    n=total.n,
                    rounds=round_number + 1,
                    iterations=round_number,
                    round0=round0,
                )
            )
        coefficients = [float(v) for v in outcome.coefficients]
        return NextRound(
            {"coefficients": coefficients},
            {
                "round0": round0,
                "coefficients": coefficients,
                "previous_deviance": outcome.deviance,
            },
        )

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return table_rows(aggregate)


def _round0(node: str, result: JsonObject) -> JsonObject:
    n = result.get("n") if isinstance(result, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise IterationFailedError(f"glm: the result of node {node!r} is not a round-0 result")
    local = result.get("local")
    return {"n": n, "local": local if isinstance(local, dict) else None}


__all__ = ["Glm"]
