"""The sums a node computes over its design table, as ONE Ibis aggregate (one pass, one row).

Why one aggregate: a round must cost a single scan of the design table whatever the number of
terms (p = 11 is about 80 sums: p scores, p(p+1)/2 information entries, deviance, Pearson χ²),
and the disclosure guards' counts ride along in the same scan, so checking them every round is
free. Only the one aggregate row reaches Python.

With a canonical link (logit, log, identity) and linear predictor ``eta = log_exposure + Xβ``:

* score ``U = X'(y - mu)``; information ``I = X'WX`` with ``W = mu(1 - mu)``, ``mu``, ``1``;
* deviance: binomial ``2 Σ softplus(±eta)`` (sign by y), Poisson ``2 Σ (y log(y/mu) - (y -
  mu))``, Gaussian ``Σ (y - mu)²``; Pearson ``Σ (y - mu)² / V(mu)``.

``eta`` is clipped (±500 for the logit, ±700 for the log) before ``exp`` so that no engine
overflows or divides by zero (PostgreSQL raises on both); no fit that a reader would
trust gets there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import ibis
import ibis.expr.types as ir
import numpy as np

from .design import COVARIATE_PREFIX, LOG_EXPOSURE, Y
from .parameters import GlmParameters

N: Final = "n"
POSITIVE: Final = "g_positive"
SUM_Y: Final = "g_sum_y"
SUM_EXPOSURE: Final = "g_sum_exposure"
DEVIANCE: Final = "r_deviance"
PEARSON: Final = "r_pearson"


def _terms(design: ir.Table, params: GlmParameters) -> list[ir.FloatingValue]:
    """The model's columns: the intercept (1), then each covariate."""
    one: ir.FloatingValue = ibis.literal(1.0, type="float64")
    return [one, *(design[COVARIATE_PREFIX + c.name].cast("float64") for c in params.covariates)]


def _count(condition: ir.BooleanValue) -> ir.IntegerScalar:
    return ibis.ifelse(condition, 1, 0).sum()


def guard_metrics(design: ir.Table, params: GlmParameters) -> dict[str, ir.Scalar]:
    """Counts the disclosure guards need (see `guards.check_guards`), and the outcome totals
    a local fit starts from (never released)."""
    y = design[Y].cast("float64")
    metrics: dict[str, ir.Scalar] = {
        N: design.count(),
        POSITIVE: _count(y > 0),
        SUM_Y: y.sum(),
        SUM_EXPOSURE: design[LOG_EXPOSURE].cast("float64").exp().sum(),
    }
    x = _terms(design, params)[1:]
    for j, xj in enumerate(x):
        metrics[f"g_nonbinary_{j}"] = _count((xj != 0.0) & (xj != 1.0))
        metrics[f"g_ones_{j}"] = _count(xj == 1.0)
        if params.family != "gaussian":
            metrics[f"g_outcome_{j}"] = _count((xj == 1.0) & (y > 0))
        for k in range(j + 1, len(x)):
            metrics[f"g_pair_{j}_{k}"] = _count((xj == 1.0) & (x[k] == 1.0))
    return metrics


def round_metrics(
    design: ir.Table, params: GlmParameters, beta: Sequence[float]
) -> dict[str, ir.Scalar]:
    """Score, information, deviance and Pearson χ² at ``beta``."""
    x = _terms(design, params)
    y = design[Y].cast("float64")
    eta: ir.FloatingValue = design[LOG_EXPOSURE].cast("float64")
    for b, xj in zip(beta, x, strict=True):
        eta = eta + ibis.literal(float(b), type="float64") * xj
    if params.family == "binomial":
        clipped = ibis.greatest(ibis.least(eta, 500.0), -500.0)
        mu = 1.0 / (1.0 + (-clipped).exp())
        weight = mu * (1.0 - mu)
        t = ibis.ifelse(y > 0.5, -clipped, clipped)
        softplus = ibis.greatest(t, 0.0) + (1.0 + (-t.abs()).exp()).ln()
        deviance = 2.0 * softplus
        pearson = t.exp()  # (y - mu)² / (mu (1 - mu)) for y in {0, 1}, without 0/0
    elif params.family == "poisson":
        mu = ibis.greatest(ibis.least(eta, 700.0), -700.0).exp()
        weight = mu
        deviance = 2.0 * (y * ibis.greatest(y, 1.0).ln() - y * eta - (y - mu))
        pearson = (y - mu) ** 2 / mu
    else:
        mu = eta
        weight = ibis.literal(1.0, type="float64")
        deviance = (y - mu) ** 2
        pearson = deviance
    residual = y - mu
    n = design.count()

    def total(value: ir.FloatingValue) -> ir.Scalar:
        # a product of literals only (the Gaussian intercept's weight): n times the value
        if isinstance(value, ir.Scalar):
            return n.cast("float64") * value
        return value.sum()

    metrics: dict[str, ir.Scalar] = {N: n}
    for j, xj in enumerate(x):
        metrics[f"r_score_{j}"] = total(xj * residual)
        for k in range(j, len(x)):
            metrics[f"r_info_{j}_{k}"] = total(weight * xj * x[k])
    metrics[DEVIANCE] = deviance.sum()
    metrics[PEARSON] = pearson.sum()
    return metrics


def evaluate(design: ir.Table, metrics: Mapping[str, ir.Scalar], engine: Any) -> dict[str, Any]:
    """Run the metrics as one aggregate query; the one row as a dict."""
    rows: list[dict[str, Any]] = engine.collect(design.aggregate(**metrics), max_rows=1)
    return rows[0]


def score_and_information(row: Mapping[str, Any], p: int) -> tuple[np.ndarray, np.ndarray]:
    score = np.array([float(row[f"r_score_{j}"] or 0.0) for j in range(p)])
    information = np.zeros((p, p))
    for j in range(p):
        for k in range(j, p):
            information[j, k] = information[k, j] = float(row[f"r_info_{j}_{k}"] or 0.0)
    return score, information
