"""`incidence` with differential privacy (bounded contributions, three noisy vectors) and its
meta-analysis of the nodes' overall rates (against the formulas by hand and statsmodels)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from statsmodels.stats.meta_analysis import combine_effects

from ehds.analyses import results
from ehds.analyses.base import (
    ComputeContext,
    DisclosureRefusedError,
    InvalidParametersError,
    JsonObject,
)
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.incidence import (
    RANDOM_EFFECTS,
    Incidence,
    IncidenceParameters,
    bounded_incidence_cells,
    dp_sensitivities,
    incidence_cells,
    released_rows,
)
from ehds.analyses.person_time import cohort_table, strata_grid
from ehds.analyses.privacy import approx_dp_epsilon
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

HYPERTENSION = 320128


class Ledger:
    def __init__(self, *, refuse: bool = False) -> None:
        self.charges: list[dict[str, float]] = []
        self.refuse = refuse

    def charge(self, *, rho: float, epsilon: float, delta: float) -> None:
        if self.refuse:
            raise DisclosureRefusedError("privacy.budget.researcher", "budget spent")
        self.charges.append({"rho": rho, "epsilon": epsilon, "delta": delta})


def params(**overrides: Any) -> IncidenceParameters:
    raw: dict[str, Any] = {
        "outcome": {
            "name": "hypertension",
            "yaml": {
                "concept_sets": {"htn": {"include": [{"concept": HYPERTENSION}]}},
                "entry": {"events": [{"condition": "htn"}], "first_occurrence": True},
                "exit": {"days_after_start": 0},
            },
        },
        "start": "2017-01-01",
        "end": "2021-12-31",
        "washout_days": 365,
        "age_band_edges": [0, 45, 65],
    }
    raw.update(overrides)
    return Incidence().parse_parameters(raw)


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cdm") / "fr.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=1200, seed=5, profile="fr"))
    return path


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "task.duckdb") as session:
        yield session


def compute(engine: IbisCdm, p: IncidenceParameters, ledger: Ledger | None) -> JsonObject:
    return Incidence().compute(
        p, ComputeContext(cdm=None, min_cell_count=5, engine=engine, privacy=ledger)
    )


# --------------------------------------------------------------------------- parameters


def test_privacy_needs_all_history_washout() -> None:
    with pytest.raises(InvalidParametersError, match="all_history"):
        params(privacy={"rho": 1}, outcome_washout=365)
    assert params(privacy={"rho": 1}).privacy is not None
    with pytest.raises(InvalidParametersError, match=r"parameters\.privacy\.rho"):
        params(privacy={"rho": -1})


def test_sensitivities_follow_the_study_years() -> None:
    got = dp_sensitivities(params(start="2017-03-01", end="2021-02-01"))
    assert got == {
        "events": 1.0,
        "person_count": math.sqrt(5),
        "person_days": 366 * math.sqrt(5),
    }


# --------------------------------------------------------------------------- node side


def test_bounded_cells_equal_the_exact_cells_on_clean_data(engine: IbisCdm) -> None:
    p = params()
    with cohort_table(engine, p.outcome) as outcome:
        assert outcome is not None
        exact = engine.collect(incidence_cells(engine, p, outcome, None), max_rows=1000)
        bounded = engine.collect(bounded_incidence_cells(engine, p, outcome, None), max_rows=1000)

    def keyed(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, ...]]:
        return {
            (int(r["year"]), r["sex"], r["age_band"]): (
                int(r["events"]),
                int(r["person_days"]),
                int(r["persons"]),
            )
            for r in rows
        }

    assert keyed(bounded) == keyed(exact)
    assert sum(v[0] for v in keyed(exact).values()) > 20


def test_noisy_release_charges_once_and_keeps_the_disclosure_rule(engine: IbisCdm) -> None:
    ledger = Ledger()
    p = params(privacy={"rho": 0.9, "delta": 1e-7})
    result = compute(engine, p, ledger)
    assert ledger.charges == [{"rho": 0.9, "epsilon": approx_dp_epsilon(0.9, 1e-7), "delta": 1e-7}]
    block = result.pop("privacy")
    assert block["epsilon"] == ledger.charges[0]["epsilon"]
    vectors = block["vectors"]
    assert set(vectors) == {"events", "person_days", "person_count"}
    for name, sensitivity in dp_sensitivities(p).items():
        assert vectors[name]["l2_sensitivity"] == sensitivity
        assert vectors[name]["rho"] <= 0.3 + 1e-12
        assert vectors[name]["scale"] == pytest.approx(sensitivity / math.sqrt(2 * 0.3), 1e-6)
    # What remains is a summarised result that keeps the threshold on every released count.
    parsed = results.validate_node_result("incidence", "fr", result, min_cell_count=5)
    grid = strata_grid(p.start, p.end, p.age_band_edges)
    assert len(parsed.rows) == 3 * len(grid)


def test_refused_charge_releases_nothing(engine: IbisCdm) -> None:
    with pytest.raises(DisclosureRefusedError):
        compute(engine, params(privacy={"rho": 0.9}), Ledger(refuse=True))


def test_noisy_values_are_thresholded() -> None:
    p = params(start="2020-01-01", end="2020-12-31", age_band_edges=[0])
    grid = strata_grid(p.start, p.end, p.age_band_edges)
    assert len(grid) == 3
    noisy = dict(zip(grid, [(3, 4000, 12), (0, 900, 4), (7, 20000, 60)], strict=True))
    rows = {(r.strata_level, r.estimate_name): r.estimate_value for r in released_rows(p, noisy, 5)}
    first, second, third = (f"2020 &&& {sex} &&& 0+" for sex in ("FEMALE", "MALE", "OTHER/UNKNOWN"))
    assert rows[(first, "events")] is None  # 3 noisy events < 5
    assert rows[(first, "person_days")] == 4000
    assert rows[(second, "person_count")] is None  # 4 noisy persons: the whole cell
    assert rows[(second, "person_days")] is None
    assert rows[(third, "events")] == 7


# --------------------------------------------------------------------------- coordinator


def node_result(p: IncidenceParameters, per_cell: list[tuple[int, int, int]]) -> JsonObject:
    grid = strata_grid(p.start, p.end, p.age_band_edges)
    table = dict(zip(grid, per_cell, strict=True))
    return results.SummarisedResult(min_cell_count=5, rows=released_rows(p, table, 5)).to_json()


META_PARAMS: dict[str, Any] = {"start": "2019-01-01", "end": "2020-12-31", "age_band_edges": [0]}
"""Two years x three sexes x one band: six cells per node."""


def meta_nodes(p: IncidenceParameters) -> dict[str, JsonObject]:
    cells = len(strata_grid(p.start, p.end, p.age_band_edges))
    return {
        "be": node_result(p, [(20, 200_000, 600)] * cells),
        "dk": node_result(p, [(45, 150_000, 500)] * cells),
        "fi": node_result(p, [(12, 300_000, 900)] * cells),
        "nl": node_result(p, [(9, 100_000, 300)] * (cells - 1) + [(3, 5000, 40)]),
        "se": node_result(p, [(0, 80_000, 250)] * cells),
    }


def test_meta_analysis_of_log_rates_by_hand_and_statsmodels() -> None:
    p = params(**META_PARAMS)
    document = Incidence().aggregate(p, meta_nodes(p))
    meta = document["meta_analysis"]
    assert meta["excluded"] == {
        "nl": "a cell was suppressed (its overall rate is a lower bound)",
        "se": "no events",
    }
    cells = 6
    totals = {"be": (20, 200_000), "dk": (45, 150_000), "fi": (12, 300_000)}
    y, v = [], []
    for node, (per_cell_events, per_cell_days) in totals.items():
        events, days = per_cell_events * cells, per_cell_days * cells
        rate = events / (days / 365.25) * 1000
        got = meta["nodes"][node]
        assert got["events"] == events
        assert got["incidence_1000_pys"] == pytest.approx(rate, rel=1e-12)
        assert got["variance"] == pytest.approx(1 / events, rel=1e-12)
        y.append(math.log(rate))
        v.append(1 / events)
    # DerSimonian-Laird by hand.
    w = [1 / vi for vi in v]
    fixed = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sum(w)
    q = sum(wi * (yi - fixed) ** 2 for wi, yi in zip(w, y, strict=True))
    tau2 = max(0.0, (q - 2) / (sum(w) - sum(wi * wi for wi in w) / sum(w)))
    w_re = [1 / (vi + tau2) for vi in v]
    estimate = sum(wi * yi for wi, yi in zip(w_re, y, strict=True)) / sum(w_re)
    summary = meta["random_effects"]
    assert tau2 > 0
    assert summary["k"] == 3
    assert summary["tau2"] == pytest.approx(tau2, rel=1e-9)
    assert summary["estimate"] == pytest.approx(estimate, rel=1e-12)
    assert meta["incidence_1000_pys"] == pytest.approx(math.exp(estimate), rel=1e-12)
    # statsmodels (tau2 > 0 here, where it agrees with the truncated estimator).
    reference = combine_effects(np.array(y), np.array(v), method_re="dl")
    assert summary["estimate"] == pytest.approx(reference.mean_effect_re, rel=1e-9)
    assert summary["tau2"] == pytest.approx(reference.tau2, rel=1e-9)
    lower, upper = reference.conf_int(use_t=False)[1]  # random effects, normal quantiles
    assert meta["incidence_1000_pys_ci_lower"] == pytest.approx(math.exp(lower), rel=1e-9)
    assert meta["incidence_1000_pys_ci_upper"] == pytest.approx(math.exp(upper), rel=1e-9)
    # The same figures as rows of place random_effects; the other rows are untouched.
    meta_rows = {
        r["estimate_name"]: r["estimate_value"]
        for r in document["rows"]
        if r["cdm_name"] == RANDOM_EFFECTS
    }
    assert meta_rows["incidence_1000_pys"] == meta["incidence_1000_pys"]
    assert meta_rows["i2"] == summary["i2"]
    assert "privacy" not in document


def test_meta_analysis_needs_two_nodes() -> None:
    p = params(**META_PARAMS)
    nodes = meta_nodes(p)
    document = Incidence().aggregate(p, {"be": nodes["be"], "se": nodes["se"]})
    assert document["meta_analysis"]["random_effects"] is None
    assert sorted(document["meta_analysis"]["nodes"]) == ["be"]
    assert not [r for r in document["rows"] if r["cdm_name"] == RANDOM_EFFECTS]


def test_noisy_results_pool_with_each_nodes_epsilon(engine: IbisCdm) -> None:
    p = params(privacy={"rho": 2.0})
    node_results = {node: compute(engine, p, Ledger()) for node in ("fr1", "fr2")}
    document = Incidence().aggregate(p, node_results)
    section = document["privacy"]
    assert section["noisy"] is True
    assert sorted(section["nodes"]) == ["fr1", "fr2"]
    assert section["nodes"]["fr1"]["epsilon"] == approx_dp_epsilon(2.0, 1e-6)
    meta = document["meta_analysis"]
    for node, entry in meta["nodes"].items():
        # The noise of the summed counts widens each node's variance beyond 1 / events.
        assert entry["variance"] > 1 / entry["events"], node
    # Exact and noisy results are never pooled together.
    exact = compute(engine, params(), None)
    with pytest.raises(results.InvalidNodeResultError, match="no privacy block"):
        Incidence().aggregate(p, {"fr1": node_results["fr1"], "fr2": exact})
    with pytest.raises(results.InvalidNodeResultError, match="requested no privacy"):
        Incidence().aggregate(params(), {"fr1": node_results["fr1"]})


def test_parameters_without_privacy_encode_as_before() -> None:
    p = params()
    assert b'"privacy"' not in Incidence().encode_parameters(p)
    noisy = params(privacy={"rho": 1})
    assert Incidence().parse_parameters(Incidence().encode_parameters(noisy)) == noisy
    assert isinstance(noisy.outcome, CohortSpec)
    assert noisy.start == date(2017, 1, 1)
