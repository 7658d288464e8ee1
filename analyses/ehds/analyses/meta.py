"""Random-effects meta-analysis of per-node estimates (DerSimonian-Laird), beside each pooled
estimate, so that heterogeneity between countries is visible.

Why both: the pooled estimate (an exact federated fit, or summed counts) answers "what is the
effect in everyone"; the per-node estimates and their random-effects summary answer "does it
differ between sites", which a regulator reading a multi-country result asks first.

Why written here and not taken from statsmodels: `statsmodels.stats.meta_analysis.
combine_effects` (0.15) does not truncate the moment estimate of tau² at zero, so with
homogeneous sites it weights them with a negative between-site variance and reports a negative
I². The DerSimonian-Laird formulas are short and standard (DerSimonian & Laird 1986; Higgins &
Thompson 2002 for I²); the tests compare them with statsmodels where tau² > 0 and with the
formulas by hand where it is truncated.

* Fixed-effect weights ``w_i = 1 / v_i``; pooled ``mu_FE = sum w y / sum w``.
* ``Q = sum w (y - mu_FE)²`` on ``k - 1`` degrees of freedom; heterogeneity p-value from chi².
* ``tau² = max(0, (Q - (k-1)) / (sum w - sum w² / sum w))``.
* Random-effects weights ``1 / (v_i + tau²)``; ``mu_RE`` and its standard error
  ``1 / sqrt(sum w*)``; Wald interval with normal quantiles.
* ``I² = max(0, (Q - (k-1)) / Q)`` (0 when Q is 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy.stats import chi2, norm


class MetaAnalysisInputError(ValueError):
    """Estimates without a positive, finite variance: they cannot be weighted."""


@dataclass(frozen=True)
class MetaAnalysis:
    """A DerSimonian-Laird random-effects summary of ``k`` estimates."""

    k: int
    estimate: float
    standard_error: float
    ci_lower: float
    ci_upper: float
    fixed_estimate: float
    fixed_standard_error: float
    tau2: float
    i2: float
    q: float
    q_p_value: float
    weights: dict[str, float]
    """Relative random-effects weight of each site (sum 1)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "method": "DerSimonian-Laird",
            "k": self.k,
            "estimate": self.estimate,
            "standard_error": self.standard_error,
            "ci_lower": self.ci_lower,
            "ci_upper": self.ci_upper,
            "fixed_estimate": self.fixed_estimate,
            "fixed_standard_error": self.fixed_standard_error,
            "tau2": self.tau2,
            "i2": self.i2,
            "q": self.q,
            "q_p_value": self.q_p_value,
            "weights": dict(sorted(self.weights.items())),
        }


def dersimonian_laird(
    estimates: Mapping[str, float],
    variances: Mapping[str, float],
    *,
    confidence: float = 0.95,
) -> MetaAnalysis | None:
    """Random-effects summary of the sites in ``estimates`` (site -> estimate, same keys in
    ``variances``); ``None`` with fewer than two sites (no heterogeneity to speak of)."""
    sites = sorted(estimates)
    if set(sites) != set(variances):
        raise MetaAnalysisInputError("estimates and variances name different sites")
    for site in sites:
        value, variance = estimates[site], variances[site]
        if not (math.isfinite(value) and math.isfinite(variance) and variance > 0):
            raise MetaAnalysisInputError(
                f"site {site}: an estimate needs a finite value and a positive variance"
            )
    k = len(sites)
    if k < 2:
        return None
    y = [estimates[s] for s in sites]
    w = [1.0 / variances[s] for s in sites]
    w_sum = math.fsum(w)
    fixed = math.fsum(wi * yi for wi, yi in zip(w, y, strict=True)) / w_sum
    q = math.fsum(wi * (yi - fixed) ** 2 for wi, yi in zip(w, y, strict=True))
    df = k - 1
    c = w_sum - math.fsum(wi * wi for wi in w) / w_sum
    tau2 = max(0.0, (q - df) / c) if c > 0 else 0.0
    w_re = [1.0 / (variances[s] + tau2) for s in sites]
    w_re_sum = math.fsum(w_re)
    estimate = math.fsum(wi * yi for wi, yi in zip(w_re, y, strict=True)) / w_re_sum
    se = 1.0 / math.sqrt(w_re_sum)
    z = float(norm.ppf(0.5 + confidence / 2))
    return MetaAnalysis(
        k=k,
        estimate=estimate,
        standard_error=se,
        ci_lower=estimate - z * se,
        ci_upper=estimate + z * se,
        fixed_estimate=fixed,
        fixed_standard_error=1.0 / math.sqrt(w_sum),
        tau2=tau2,
        i2=max(0.0, (q - df) / q) if q > 0 else 0.0,
        q=q,
        q_p_value=float(chi2.sf(q, df)),
        weights={s: wi / w_re_sum for s, wi in zip(sites, w_re, strict=True)},
    )
