"""Newton-Raphson / IRLS steps from summed scores and information (numpy, no engine).

Why shared by node and coordinator: a node's local fit (round 0) and the federated fit are the
same iteration, one over one node's sums, the other over the sums of all nodes; with one
implementation they cannot disagree about convergence or the final step.

The iteration is statsmodels' (and R's ``glm.fit``) for a canonical link: at ``β_k`` the sums
give ``U_k``, ``I_k``, ``D_k``; ``β_{k+1} = β_k + I_k⁻¹U_k``; converged when
``|D_k - D_{k-1}| / (|D_k| + 0.1) < tolerance``; then the estimate is ``β_k + I_k⁻¹U_k`` with
covariance ``I_k⁻¹ * scale`` (statsmodels' last IRLS step and its ``cov_params``). Scale is 1
for binomial and Poisson; for Gaussian it is Pearson χ²/(n - p) at the estimate. The identity
link needs no iteration: ``RSS(β + d) = RSS(β) - d'U`` with ``d = I⁻¹U`` is the exact least
squares fit, so a Gaussian model ends after its first evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CONDITION_LIMIT = 1e13
"""Information matrices worse conditioned than this are treated as singular."""


class SingularInformationError(ArithmeticError):
    """The information matrix cannot be inverted (a constant or collinear covariate)."""


@dataclass(frozen=True)
class Sums:
    """What one evaluation at ``β`` yields, at one node or summed over nodes."""

    n: int
    score: np.ndarray
    information: np.ndarray
    deviance: float
    pearson_chi2: float

    def as_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "score": [float(v) for v in self.score],
            "information": [[float(v) for v in row] for row in self.information],
            "deviance": float(self.deviance),
            "pearson_chi2": float(self.pearson_chi2),
        }

    @classmethod
    def from_json(cls, data: Any, p: int) -> Sums:
        """Validate a node's released sums (shape, finiteness); ValueError otherwise."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        n = data.get("n")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("n is not a count")
        score = np.asarray(data.get("score"), dtype=float)
        information = np.asarray(data.get("information"), dtype=float)
        if score.shape != (p,) or information.shape != (p, p):
            raise ValueError("score or information has the wrong shape")
        deviance = float(data.get("deviance"))  # type: ignore[arg-type]
        pearson = float(data.get("pearson_chi2"))  # type: ignore[arg-type]
        values = np.concatenate([score, information.ravel(), [deviance, pearson]])
        if not np.all(np.isfinite(values)):
            raise ValueError("a sum is not finite")
        return cls(n, score, information, deviance, pearson)

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.n + other.n,
            self.score + other.score,
            self.information + other.information,
            self.deviance + other.deviance,
            self.pearson_chi2 + other.pearson_chi2,
        )


@dataclass(frozen=True)
class Fit:
    coefficients: np.ndarray
    covariance: np.ndarray
    deviance: float
    pearson_chi2: float
    scale: float
    converged: bool


@dataclass(frozen=True)
class Continue:
    coefficients: np.ndarray
    deviance: float


def invert(information: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(information)):
        raise SingularInformationError("the information matrix is not finite")
    if np.linalg.cond(information) > CONDITION_LIMIT:
        raise SingularInformationError("the information matrix is singular")
    inverse: np.ndarray = np.linalg.inv(information)
    symmetric: np.ndarray = (inverse + inverse.T) / 2
    return symmetric


def has_converged(previous: float | None, current: float, tolerance: float) -> bool:
    if previous is None:
        return False
    return abs(current - previous) / (abs(current) + 0.1) < tolerance


def step(
    family: str,
    beta: np.ndarray,
    sums: Sums,
    previous_deviance: float | None,
    *,
    tolerance: float,
    last: bool,
) -> Fit | Continue:
    """One iteration: the final fit (converged, or ``last`` allowed), or the next β."""
    inverse = invert(sums.information)
    delta = inverse @ sums.score
    following = beta + delta
    if not np.all(np.isfinite(following)):
        raise SingularInformationError("the Newton step is not finite")
    p = len(beta)
    residual_df = sums.n - p
    if family == "gaussian":
        rss = max(sums.deviance - float(delta @ sums.score), 0.0)
        scale = rss / residual_df if residual_df > 0 else math.nan
        return Fit(following, inverse * scale, rss, rss, scale, True)
    converged = has_converged(previous_deviance, sums.deviance, tolerance)
    if converged or last:
        return Fit(following, inverse, sums.deviance, sums.pearson_chi2, 1.0, converged)
    return Continue(following, sums.deviance)
