"""DerSimonian-Laird against statsmodels (where tau² > 0) and against the formulas by hand
(where the moment estimate is negative and tau² is truncated at zero)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.meta_analysis import combine_effects

from ehds.analyses.meta import MetaAnalysisInputError, dersimonian_laird


def test_heterogeneous_sites_match_statsmodels() -> None:
    effects = {"dk": 0.10, "fi": 0.62, "fr": 0.25, "es": -0.05}
    variances = {"dk": 0.010, "fi": 0.020, "fr": 0.015, "es": 0.012}
    result = dersimonian_laird(effects, variances)
    assert result is not None
    sites = sorted(effects)
    reference = combine_effects(
        np.array([effects[s] for s in sites]),
        np.array([variances[s] for s in sites]),
        method_re="dl",
        use_t=False,
    )
    assert reference.tau2 > 0
    assert result.tau2 == pytest.approx(reference.tau2, rel=1e-12)
    assert result.i2 == pytest.approx(reference.i2, rel=1e-12)
    assert result.q == pytest.approx(reference.q, rel=1e-12)
    assert result.estimate == pytest.approx(reference.mean_effect_re, rel=1e-12)
    assert result.standard_error == pytest.approx(reference.sd_eff_w_re, rel=1e-12)
    assert result.fixed_estimate == pytest.approx(reference.mean_effect_fe, rel=1e-12)
    low, high = reference.conf_int(alpha=0.05, use_t=False)[1]
    assert result.ci_lower == pytest.approx(low, rel=1e-12)
    assert result.ci_upper == pytest.approx(high, rel=1e-12)
    assert sum(result.weights.values()) == pytest.approx(1.0)


def test_homogeneous_sites_truncate_tau2_at_zero() -> None:
    effects = {"a": 0.10, "b": 0.30, "c": 0.25}
    variances = {"a": 0.01, "b": 0.02, "c": 0.015}
    result = dersimonian_laird(effects, variances)
    assert result is not None
    w = {s: 1 / v for s, v in variances.items()}
    fixed = sum(w[s] * effects[s] for s in w) / sum(w.values())
    q = sum(w[s] * (effects[s] - fixed) ** 2 for s in w)
    assert q < 2  # below its degrees of freedom: the moment estimate is negative
    assert result.tau2 == 0.0
    assert result.i2 == 0.0
    assert result.estimate == pytest.approx(fixed, rel=1e-12)
    assert result.standard_error == pytest.approx(1 / math.sqrt(sum(w.values())), rel=1e-12)
    assert result.q == pytest.approx(q, rel=1e-12)


def test_one_site_has_no_meta_analysis() -> None:
    assert dersimonian_laird({"a": 1.0}, {"a": 0.1}) is None


def test_a_site_without_positive_variance_is_refused() -> None:
    with pytest.raises(MetaAnalysisInputError, match="site b"):
        dersimonian_laird({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.0})
