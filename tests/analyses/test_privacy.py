"""Differential privacy (`ehds.analyses.privacy`) and `person_count` with noise.

What is checked: the request's validation; that the noise comes from OpenDP with the scale
OpenDP's own privacy map calibrates (and the epsilon its conversion gives); that the ledger is
charged once, before any noise, and that a refusal releases nothing; that the cell threshold
applies to the noisy value; and the coordinator's checks and flags.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

import opendp.prelude as dp
import pytest

from ehds.analyses import privacy
from ehds.analyses.base import (
    ComputeContext,
    DisclosureRefusedError,
    InvalidParametersError,
    JsonObject,
)
from ehds.analyses.engine import cdm_session
from ehds.analyses.person_count import (
    InvalidNodeResultError,
    PersonCount,
    PersonCountParameters,
)
from ehds.analyses.privacy import (
    CountVector,
    PrivacyMechanismError,
    PrivacyRequest,
    approx_dp_epsilon,
    calibrated_scale,
    thresholded,
)
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate


class Ledger:
    """A test double of the node's ledger: records charges (and the order of events) or
    refuses every charge."""

    def __init__(self, log: list[str] | None = None, *, refuse: bool = False) -> None:
        self.charges: list[dict[str, float]] = []
        self.log = log if log is not None else []
        self.refuse = refuse

    def charge(self, *, rho: float, epsilon: float, delta: float) -> None:
        self.log.append("charge")
        if self.refuse:
            raise DisclosureRefusedError(
                "privacy.budget.permit", "the permit's privacy budget (rho 1.0) is spent"
            )
        self.charges.append({"rho": rho, "epsilon": epsilon, "delta": delta})


class RecordingGaussian:
    """OpenDP's measurement, its draws logged; ``fixed``: what to return instead of noise."""

    def __init__(self, inner: Any, log: list[str], fixed: Sequence[int] | None) -> None:
        self.inner = inner
        self.log = log
        self.fixed = fixed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, values: list[int]) -> list[int]:
        self.log.append("noise")
        return list(self.fixed) if self.fixed is not None else list(self.inner(values))


@pytest.fixture
def noise_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Log every draw of noise (real OpenDP noise)."""
    return _patch_gaussian(monkeypatch, None)


def _patch_gaussian(monkeypatch: pytest.MonkeyPatch, fixed: Sequence[int] | None) -> list[str]:
    log: list[str] = []
    real = privacy.gaussian

    def recording(scale: float) -> RecordingGaussian:
        return RecordingGaussian(real(scale), log, fixed)

    monkeypatch.setattr(privacy, "gaussian", recording)
    return log


@pytest.fixture(scope="module")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> CdmDatabase:
    path = tmp_path_factory.mktemp("cdm") / "site.duckdb"
    db = CdmDatabase.parse(str(path))
    generate(db, SynthOptions(persons=400, seed=11, profile="fi"))
    return db


def _exact(db: CdmDatabase) -> JsonObject:
    return _compute(db, None, min_cell_count=1)


def _compute(
    db: CdmDatabase,
    ledger: Ledger | None,
    *,
    min_cell_count: int = 5,
    request: dict[str, Any] | None = None,
) -> JsonObject:
    raw: dict[str, Any] = {} if request is None else {"privacy": request}
    params = PersonCount().parse_parameters(raw)
    with cdm_session(db) as engine:
        return PersonCount().compute(
            params,
            ComputeContext(cdm=None, min_cell_count=min_cell_count, engine=engine, privacy=ledger),
        )


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"rho": 0}, "privacy.rho"),
        ({"rho": 10.5}, "privacy.rho"),
        ({"rho": "1"}, "privacy.rho"),
        ({"rho": 1, "delta": 0}, "privacy.delta"),
        ({"rho": 1, "delta": 0.5}, "privacy.delta"),
        ({"rho": 1, "epsilon": 1}, "privacy.epsilon"),
        ({"delta": 1e-6}, "privacy.rho"),
    ],
)
def test_privacy_request_is_validated(request_: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParametersError, match=rf"parameters\.{field}"):
        PersonCount().parse_parameters({"privacy": request_})


def test_privacy_request_defaults_and_encoding() -> None:
    analysis = PersonCount()
    plain = analysis.parse_parameters({})
    assert plain.privacy is None
    # Without privacy the bytes are those of the parameters before the field existed.
    assert "privacy" not in json.loads(analysis.encode_parameters(plain))
    noisy = analysis.parse_parameters({"privacy": {"rho": 1}})
    assert noisy.privacy == PrivacyRequest(rho=1.0, delta=1e-6)
    encoded = analysis.encode_parameters(noisy)
    assert json.loads(encoded)["privacy"] == {"rho": 1.0, "delta": 1e-6}
    assert analysis.parse_parameters(encoded) == noisy


# --------------------------------------------------------------------------- OpenDP


@pytest.mark.parametrize(("sensitivity", "rho"), [(1.0, 0.5), (math.sqrt(5), 0.1), (818.4, 2.0)])
def test_scale_is_opendps_calibration(sensitivity: float, rho: float) -> None:
    scale = calibrated_scale(sensitivity, rho)
    dp.enable_features("contrib")
    measurement: Any = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"), scale=scale
    )
    assert measurement.map(sensitivity) <= rho
    assert measurement.map(sensitivity) == pytest.approx(rho, rel=1e-6)
    # The smallest passing scale: any visibly smaller one breaks the budget.
    smaller: Any = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"), scale=scale * 0.999
    )
    assert smaller.map(sensitivity) > rho
    # The Gaussian's zCDP map is sensitivity^2 / (2 scale^2).
    assert scale == pytest.approx(sensitivity / math.sqrt(2 * rho), rel=1e-6)


def test_epsilon_is_opendps_conversion_of_the_measurement() -> None:
    rho, delta = 0.5, 1e-6
    scale = calibrated_scale(1.0, rho)
    dp.enable_features("contrib")
    measurement: Any = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"), scale=scale
    )
    converted: Any = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), delta)
    epsilon, fixed_delta = converted.map(1.0)
    assert fixed_delta == delta
    assert approx_dp_epsilon(rho, delta) == pytest.approx(epsilon, rel=1e-9)
    # Smaller delta, larger epsilon; more rho, larger epsilon.
    assert approx_dp_epsilon(rho, 1e-9) > approx_dp_epsilon(rho, 1e-6)
    assert approx_dp_epsilon(2.0, 1e-6) > approx_dp_epsilon(rho, 1e-6)


def test_noise_has_the_calibrated_spread() -> None:
    ledger = Ledger()
    request = PrivacyRequest(rho=0.02)
    noisy = privacy.release(
        request, ledger, [CountVector("zeros", [1_000_000] * 20_000, sensitivity=1.0, share=1.0)]
    )
    vector = noisy.vectors["zeros"]
    assert vector.scale == pytest.approx(1 / math.sqrt(2 * 0.02), rel=1e-6)
    spread = statistics.pstdev(vector.values)
    assert spread == pytest.approx(vector.scale, rel=0.05)
    assert statistics.fmean(vector.values) == pytest.approx(1_000_000, abs=0.2)
    assert all(isinstance(v, int) for v in vector.values)


@pytest.mark.parametrize(
    "vectors",
    [
        [],
        [CountVector("a", [1], 1.0, 0.5)],
        [CountVector("a", [1], 1.0, 0.5), CountVector("a", [1], 1.0, 0.5)],
        [CountVector("a", [1], 0.0, 1.0)],
        [CountVector("a", [1], math.inf, 1.0)],
    ],
    ids=["none", "shares-below-1", "same-name", "zero-sensitivity", "infinite-sensitivity"],
)
def test_bad_mechanism_figures_charge_nothing(vectors: list[CountVector]) -> None:
    ledger = Ledger()
    with pytest.raises(PrivacyMechanismError):
        privacy.release(PrivacyRequest(rho=1.0), ledger, vectors)
    assert ledger.log == []


def test_thresholded() -> None:
    assert thresholded(0, 5) == 0
    assert thresholded(1, 5) is None
    assert thresholded(4, 5) is None
    assert thresholded(5, 5) == 5


# --------------------------------------------------------------------------- person_count


def test_person_count_charges_once_before_noise(cdm: CdmDatabase, noise_log: list[str]) -> None:
    ledger = Ledger(noise_log)
    result = _compute(cdm, ledger, request={"rho": 0.5, "delta": 1e-5})
    assert noise_log == ["charge", "noise"]
    assert ledger.charges == [{"rho": 0.5, "epsilon": approx_dp_epsilon(0.5, 1e-5), "delta": 1e-5}]
    block = result["privacy"]
    assert block["mechanism"] == "discrete_gaussian"
    assert (block["rho"], block["delta"]) == (0.5, 1e-5)
    assert block["epsilon"] == ledger.charges[0]["epsilon"]
    counts = block["vectors"]["counts"]
    assert counts["l2_sensitivity"] == 1.0
    assert counts["scale"] == pytest.approx(1.0, rel=1e-6)  # 1 / sqrt(2 * 0.5)
    assert counts["rho"] <= 0.5


def test_a_refused_charge_releases_nothing(cdm: CdmDatabase, noise_log: list[str]) -> None:
    ledger = Ledger(noise_log, refuse=True)
    with pytest.raises(DisclosureRefusedError) as refused:
        _compute(cdm, ledger, request={"rho": 0.5})
    assert refused.value.rule == "privacy.budget.permit"
    assert noise_log == ["charge"]


def test_privacy_needs_the_nodes_ledger(cdm: CdmDatabase) -> None:
    with pytest.raises(RuntimeError, match="ledger"):
        _compute(cdm, None, request={"rho": 0.5})


def test_noisy_counts_are_near_the_truth_and_thresholded(cdm: CdmDatabase) -> None:
    truth = {(c["sex"], c["age_band"]): c["count"] for c in _exact(cdm)["cells"]}
    threshold = 5
    result = _compute(cdm, Ledger(), min_cell_count=threshold, request={"rho": 0.5})
    scale = result["privacy"]["vectors"]["counts"]["scale"]
    differences = 0
    for cell in result["cells"]:
        count = cell["count"]
        if count is None:
            assert cell["suppressed"] is True
            continue
        assert count == 0 or count >= threshold
        true_count = truth[(cell["sex"], cell["age_band"])]
        assert abs(count - true_count) <= 8 * scale + threshold
        differences += count != true_count
    assert differences > 0  # noise was added (all 12 cells unchanged: probability < 1e-6)


def test_threshold_applies_to_the_noisy_value(
    cdm: CdmDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = len(_exact(cdm)["cells"])
    # "Noise" chosen so that each outcome occurs: clamped negative, zero, small, at threshold.
    fixed = ([-3, 0, 1, 4, 5, 120] * grid)[:grid]
    _patch_gaussian(monkeypatch, fixed)
    result = _compute(cdm, Ledger(), min_cell_count=5, request={"rho": 1.0})
    released = [cell["count"] for cell in result["cells"]]
    expected = ([0, 0, None, None, 5, 120] * grid)[:grid]
    assert released == expected
    assert [cell["suppressed"] for cell in result["cells"]] == [v is None for v in expected]


# --------------------------------------------------------------------------- coordinator


def _node_results(cdm: CdmDatabase, request: dict[str, Any]) -> dict[str, JsonObject]:
    return {node: _compute(cdm, Ledger(), request=request) for node in ("dk", "fi", "se")}


def test_pooled_cells_are_flagged_noisy_with_each_nodes_epsilon(cdm: CdmDatabase) -> None:
    request = {"rho": 0.25}
    params = PersonCount().parse_parameters({"privacy": request})
    results = _node_results(cdm, request)
    pooled = PersonCount().aggregate(params, results)
    for index, cell in enumerate(pooled["cells"]):
        assert cell["noisy"] is True
        released = [results[n]["cells"][index]["count"] for n in sorted(results)]
        assert cell["count"] == sum(v for v in released if v is not None)
    section = pooled["privacy"]
    assert section["noisy"] is True
    assert sorted(section["nodes"]) == ["dk", "fi", "se"]
    for node, spent in section["nodes"].items():
        assert spent["epsilon"] == results[node]["privacy"]["epsilon"]
        assert spent["rho"] == 0.25
    header, rows = PersonCount().table(pooled)
    assert header[-1] == "flags"
    assert all("noisy" in row[-1] for row in rows)


def test_exact_results_keep_their_shape(cdm: CdmDatabase) -> None:
    params = PersonCountParameters()
    pooled = PersonCount().aggregate(params, {"dk": _exact(cdm)})
    assert "privacy" not in pooled
    assert all("noisy" not in cell for cell in pooled["cells"])


def test_coordinator_refuses_mixed_exact_and_noisy_results(cdm: CdmDatabase) -> None:
    noisy = _compute(cdm, Ledger(), request={"rho": 0.25})
    exact = _exact(cdm)
    dp_params = PersonCount().parse_parameters({"privacy": {"rho": 0.25}})
    with pytest.raises(InvalidNodeResultError, match="no privacy block"):
        PersonCount().aggregate(dp_params, {"dk": noisy, "fi": exact})
    with pytest.raises(InvalidNodeResultError, match="requested no privacy"):
        PersonCount().aggregate(PersonCountParameters(), {"dk": noisy})
    other = PersonCount().parse_parameters({"privacy": {"rho": 0.5}})
    with pytest.raises(InvalidNodeResultError, match="another rho"):
        PersonCount().aggregate(other, {"dk": noisy})
