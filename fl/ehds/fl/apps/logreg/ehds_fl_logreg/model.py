"""Logistic regression in numpy: local training and the evaluation metrics a node reports.

Why numpy and not a framework: the model is a linear predictor, its gradient is one matrix
product, and the worker that runs it must start fast and stay small on an idle node.

Parameters are kept as ``intercept`` (shape ``(1,)``) and ``coef`` (shape ``(p,)``) over
standardised features (the pooled means and scales the server computes in its query round),
so that every node steps in the same coordinates and one learning rate suits all features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]

_EPS = 1e-12


def sigmoid(z: Vector) -> Vector:
    out: Vector = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    e = np.exp(z[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def log_loss(y: Vector, p: Vector) -> float:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log(1.0 - q)))


def predict(x: Matrix, intercept: float, coef: Vector) -> Vector:
    return sigmoid(intercept + x @ coef)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    learning_rate: float
    batch_size: int
    proximal_mu: float
    seed: int


def train(
    x: Matrix, y: Vector, intercept: float, coef: Vector, settings: TrainSettings
) -> tuple[float, Vector, float]:
    """Local (mini-batch) gradient descent from the global parameters; with ``proximal_mu``
    > 0, FedProx's term ``mu/2 * ||w - w_global||^2`` pulls the local model back towards the
    global one. Returns the new intercept, coefficients and the training loss after it."""
    w = np.concatenate([[intercept], coef]).astype(np.float64)
    anchor = w.copy()
    design = np.hstack([np.ones((x.shape[0], 1)), x])
    n = design.shape[0]
    batch = n if settings.batch_size <= 0 else min(settings.batch_size, n)
    rng = np.random.default_rng(settings.seed)
    for _ in range(settings.epochs):
        order = rng.permutation(n) if batch < n else np.arange(n)
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            xb = design[rows]
            residual = sigmoid(xb @ w) - y[rows]
            gradient = xb.T @ residual / len(rows)
            if settings.proximal_mu > 0:
                gradient = gradient + settings.proximal_mu * (w - anchor)
            w = w - settings.learning_rate * gradient
    loss = log_loss(y, sigmoid(design @ w))
    return float(w[0]), w[1:].copy(), loss


def auc(y: Vector, p: Vector) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    positives = int(np.sum(y == 1))
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both outcomes among the evaluated rows")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = float(np.sum(ranks[y == 1]))
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def calibration(y: Vector, p: Vector, iterations: int = 50) -> tuple[float, float]:
    """Calibration-in-the-large (observed minus expected event rate) and the calibration
    slope (the coefficient of ``logit(p)`` in a logistic recalibration model, 1 is ideal),
    by Newton's method on the two-parameter model. The slope is NaN where that model has no
    estimate (few events, separated rows): a number there would be noise."""
    q = np.clip(p, 1e-9, 1.0 - 1e-9)
    lp = np.log(q / (1.0 - q))
    design = np.column_stack([np.ones_like(lp), lp])
    beta = np.array([0.0, 1.0])
    slope = float("nan")
    for _ in range(iterations):
        mu = sigmoid(design @ beta)
        weight = mu * (1.0 - mu)
        hessian = design.T @ (design * weight[:, None]) + 1e-10 * np.eye(2)
        step = np.linalg.solve(hessian, design.T @ (y - mu))
        beta = beta + step
        if not np.all(np.isfinite(beta)) or float(np.max(np.abs(beta))) > 1e3:
            break
        if float(np.max(np.abs(step))) < 1e-10:
            slope = float(beta[1])
            break
    return float(np.mean(y) - np.mean(p)), slope


def evaluate(x: Matrix, y: Vector, intercept: float, coef: Vector) -> dict[str, float]:
    p = predict(x, intercept, coef)
    citl, slope = calibration(y, p)
    return {
        "eval-loss": log_loss(y, p),
        "auc": auc(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "calibration-in-the-large": citl,
        "calibration-slope": slope,
    }


def pooled_standardisation(count: Vector, total: Vector, squares: Vector) -> tuple[Vector, Vector]:
    """Means and scales (population standard deviations; 1 for a constant feature) from the
    nodes' summed per-feature count, sum and sum of squares."""
    mean = total / count
    variance = np.maximum(squares / count - mean**2, 0.0)
    scale = np.sqrt(variance)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return mean, scale


def to_original_scale(
    intercept: float, coef: Vector, mean: Vector, scale: Vector
) -> tuple[float, Vector]:
    """The same linear predictor over the unstandardised features."""
    original = coef / scale
    return float(intercept - np.sum(original * mean)), original
