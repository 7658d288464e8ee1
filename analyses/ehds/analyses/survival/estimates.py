"""Kaplan-Meier estimates and the log-rank test from risk tables (coordinator side).

The formulas are lifelines' defaults, so that a reader can check a federated curve with the
tool they know (the tests compare with lifelines on the pooled rows to 1e-9):

* survival ``S(t_k) = prod_{j <= k} (1 - d_j / n_j)``;
* Greenwood: ``c_k = sum_{j <= k} d_j / (n_j (n_j - d_j))`` (a term with ``n_j = d_j`` counts
  0, as lifelines does), variance ``S(t_k)^2 c_k``;
* band: exponential Greenwood (log(-log S)): ``exp(-exp(log(-log S) -+ z sqrt(c) / log S))``;
  1 where ``S = 1`` and 0 where ``S = 0``;
* log-rank across G strata: observed minus expected events per stratum, hypergeometric
  covariance with the ``(n - d) / (n - 1)`` factor (1 where ``n = 1``), chi-squared on the
  first G - 1 strata, G - 1 degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import chi2, norm

from ehds.analyses.base import JsonObject
from ehds.analyses.survival.grid import Cells


def curve(cuts: Sequence[int], cells: Cells, confidence: float) -> JsonObject:
    """Survival, Greenwood variance and band at each cut (lists aligned with ``cuts``)."""
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    survival: list[float] = []
    variance: list[float] = []
    lower: list[float] = []
    upper: list[float] = []
    s = 1.0
    greenwood = 0.0
    for n, d in zip(cells.at_risk, cells.events, strict=True):
        if n > 0:
            s *= 1.0 - d / n
            if n > d:
                greenwood += d / (n * (n - d))
        survival.append(s)
        variance.append(s * s * greenwood)
        low, high = _band(s, greenwood, z)
        lower.append(low)
        upper.append(high)
    return {
        "time": list(cuts),
        **cells.as_json(),
        "survival": survival,
        "variance": variance,
        "ci_lower": lower,
        "ci_upper": upper,
    }


def _band(s: float, greenwood: float, z: float) -> tuple[float, float]:
    if s >= 1.0:
        return 1.0, 1.0
    if s <= 0.0:
        return 0.0, 0.0
    log_s = math.log(s)
    centre = math.log(-log_s)
    half = z * math.sqrt(greenwood) / log_s  # negative: log S < 0
    return math.exp(-math.exp(centre - half)), math.exp(-math.exp(centre + half))


def log_rank(strata: Mapping[str, Cells]) -> JsonObject | None:
    """The log-rank test of equal survival across ``strata`` (None with fewer than two)."""
    names = sorted(strata)
    if len(names) < 2:
        return None
    at_risk = np.array([strata[s].at_risk for s in names], dtype=float)  # G x K
    events = np.array([strata[s].events for s in names], dtype=float)
    n = at_risk.sum(axis=0)
    d = events.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n > 0, at_risk / n, 0.0)
        ratio = np.where(n > 1, (n - d) / (n - 1), 1.0)
    expected = (share * d).sum(axis=1)
    observed = events.sum(axis=1)
    weight = ratio * d  # per time
    covariance = np.zeros((len(names), len(names)))
    for k in range(at_risk.shape[1]):
        p = share[:, k]
        covariance += weight[k] * (np.diag(p) - np.outer(p, p))
    z = (observed - expected)[:-1]
    statistic = float(z @ np.linalg.pinv(covariance[:-1, :-1]) @ z)
    df = len(names) - 1
    return {
        "strata": names,
        "observed": observed.tolist(),
        "expected": expected.tolist(),
        "chi2": statistic,
        "df": df,
        "p": float(chi2.sf(statistic, df)),
    }
