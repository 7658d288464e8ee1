"""The pooled result of a `glm` fit: Wald inference, per-node fits and their meta-analysis.

Wald statistics use normal quantiles for every family (statsmodels' GLM default, ``use_t``
false): ``z = β / se``, two-sided p, ``β ± q se`` (q the normal quantile of the confidence);
binomial and Poisson also report ``exp`` of the estimate and interval (odds ratios, rate
ratios).

Beside the federated fit (exact: the fit on the pooled rows), every node's own fit (round 0)
and, per coefficient, a DerSimonian-Laird random-effects summary of the node estimates: how
much the sites differ is what a multi-country reader asks first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import norm

from ehds.analyses.base import JsonObject
from ehds.analyses.meta import dersimonian_laird

from .irls import Fit
from .parameters import LINKS, GlmParameters


def _wald(estimate: float, se: float, z_crit: float, exponentiate: bool) -> JsonObject:
    z = estimate / se if se > 0 else math.nan
    row: JsonObject = {
        "estimate": estimate,
        "se": se,
        "z": _json_float(z),
        "p": float(2 * norm.sf(abs(z))) if math.isfinite(z) else None,
        "ci_lower": estimate - z_crit * se,
        "ci_upper": estimate + z_crit * se,
    }
    if exponentiate:
        row["exp_estimate"] = math.exp(estimate)
        row["exp_ci_lower"] = math.exp(row["ci_lower"])
        row["exp_ci_upper"] = math.exp(row["ci_upper"])
    return row


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def local_estimates(local: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """A node's converged local fit as (coefficients, variances), else None."""
    if not local or not local.get("converged"):
        return None
    beta = np.asarray(local["coefficients"], dtype=float)
    variance = np.diag(np.asarray(local["covariance"], dtype=float))
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(variance)) and np.all(variance > 0)):
        return None
    return beta, variance


def warm_start(locals_: Mapping[str, Mapping[str, Any] | None], p: int) -> list[float]:
    """Per coefficient, the inverse-variance weighted mean of the converged local fits (a
    start close to the pooled fit saves rounds); zeros when no node converged."""
    fits = [f for f in (local_estimates(v) for v in locals_.values()) if f is not None]
    if not fits:
        return [0.0] * p
    weights = np.array([1.0 / variance for _, variance in fits])
    values = np.array([beta for beta, _ in fits])
    return [float(v) for v in (weights * values).sum(axis=0) / weights.sum(axis=0)]


def result_document(
    params: GlmParameters,
    fit: Fit,
    *,
    n: int,
    rounds: int,
    iterations: int,
    round0: Mapping[str, Mapping[str, Any]],
) -> JsonObject:
    names = params.term_names
    p = len(names)
    exponentiate = params.family != "gaussian"
    z_crit = float(norm.ppf(0.5 + params.confidence / 2))
    se = np.sqrt(np.clip(np.diag(fit.covariance), 0.0, None))
    coefficients = [
        {"name": name, **_wald(float(fit.coefficients[j]), float(se[j]), z_crit, exponentiate)}
        for j, name in enumerate(names)
    ]
    per_node: list[JsonObject] = []
    estimates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in sorted(round0):
        released = round0[node]
        local = local_estimates(released.get("local"))
        entry: JsonObject = {"node": node, "n": released.get("n"), "converged": local is not None}
        if local is not None:
            estimates[node] = local
            entry["coefficients"] = [
                {"name": name, "estimate": float(local[0][j]), "se": math.sqrt(local[1][j])}
                for j, name in enumerate(names)
            ]
        per_node.append(entry)
    meta: list[JsonObject] = []
    for j, name in enumerate(names):
        summary = dersimonian_laird(
            {node: float(b[j]) for node, (b, _) in estimates.items()},
            {node: float(v[j]) for node, (_, v) in estimates.items()},
            confidence=params.confidence,
        )
        meta.append({"name": name, **(summary.as_json() if summary else {"k": len(estimates)})})
    return {
        "family": params.family,
        "link": LINKS[params.family],
        "n": n,
        "df_resid": n - p,
        "rounds": rounds,
        "iterations": iterations,
        "converged": fit.converged,
        "deviance": fit.deviance,
        "pearson_chi2": fit.pearson_chi2,
        "scale": _json_float(fit.scale),
        "confidence": params.confidence,
        "coefficients": coefficients,
        "covariance": [[float(v) for v in row] for row in fit.covariance],
        "per_node": per_node,
        "meta_analysis": meta,
    }


def table_rows(pooled: JsonObject) -> tuple[list[str], list[list[Any]]]:
    """One row per coefficient (the CLI's ``--format table|csv``)."""
    exponentiate = pooled.get("family") != "gaussian"
    header = ["term", "estimate", "se", "z", "p", "ci_lower", "ci_upper"]
    if exponentiate:
        header += ["exp_estimate", "exp_ci_lower", "exp_ci_upper"]
    rows = []
    for c in pooled.get("coefficients", []):
        rows.append([c["name"], *(c.get(k) for k in header[1:])])
    return header, rows
