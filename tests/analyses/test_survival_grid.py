"""The pure halves of `kaplan_meier`: risk tables from buckets, the greedy coarsening, the
agreed grid, and the log-rank test on cases small enough to check by hand."""

from __future__ import annotations

import pytest
from lifelines.statistics import multivariate_logrank_test

from ehds.analyses.survival.estimates import curve, log_rank
from ehds.analyses.survival.grid import (
    Cells,
    InvalidCellsError,
    cells_from_buckets,
    coarsen,
    common_cuts,
    meets_thresholds,
    parse_cells,
)


def test_risk_table_from_buckets_truncates_at_the_last_cut() -> None:
    # 3 intervals; bucket 4 = beyond the last cut (its events are censored there).
    cells = cells_from_buckets({1: (4, 3), 2: (2, 0), 4: (5, 2)}, 3)
    assert cells == Cells(at_risk=[11, 7, 5], events=[3, 0, 0], censored=[1, 2, 5])
    assert parse_cells(cells.as_json(), 3) == cells


def test_coarsening_closes_an_interval_once_every_stratum_has_enough_events() -> None:
    cuts = [10, 20, 30, 40, 50]
    a = Cells(at_risk=[40, 35, 30, 20, 8], events=[2, 3, 5, 4, 1], censored=[3, 2, 5, 8, 7])
    b = Cells(at_risk=[40, 30, 20, 12, 6], events=[5, 5, 4, 2, 1], censored=[5, 5, 4, 4, 5])
    # At 20 both hold 5+; at 30 a holds 5 but b only 4, so the interval runs on to 40.
    # Then the interval from 40 starts with b's 6 at risk (>= 5) but never gathers 5 events.
    assert coarsen(cuts, {"a": a, "b": b}, 5) == [20, 40]
    # Alone, a closes (30, 50] with 4 + 1 events and 20 at risk at its start.
    assert coarsen(cuts, {"a": a}, 5) == [20, 30, 50]


def test_coarsening_stops_where_too_few_are_at_risk() -> None:
    cells = Cells(at_risk=[20, 12, 4], events=[6, 6, 4], censored=[2, 4, 0])
    assert coarsen([1, 2, 3], {"x": cells}, 5) == [1, 2]
    assert coarsen([1, 2, 3], {"x": cells}, 21) == []


def test_the_agreed_grid_is_a_coarsening_of_every_nodes_grid() -> None:
    assert common_cuts({"a": [10, 30, 40, 60], "b": [20, 30, 60, 90]}) == [30, 60]
    assert common_cuts({"a": [10], "b": [20]}) == []


def test_thresholds() -> None:
    assert meets_thresholds(Cells([10, 5], [5, 5], [0, 0]), 5)
    assert not meets_thresholds(Cells([10, 5], [5, 4], [0, 1]), 5)
    assert not meets_thresholds(Cells([10, 4], [6, 4], [0, 0]), 5)


@pytest.mark.parametrize(
    "raw",
    [
        {"at_risk": [3], "events": [1], "censored": [1]},
        {"at_risk": [3], "events": [True], "censored": [2]},
        {"at_risk": [3], "events": [-1], "censored": [4]},
        {"at_risk": [3], "events": [1], "censored": [2], "extra": [0]},
    ],
)
def test_cells_are_checked(raw: dict[str, list[int]]) -> None:
    with pytest.raises(InvalidCellsError):
        parse_cells(raw, 1)


def test_survival_by_hand() -> None:
    got = curve([1, 2], Cells([10, 6], [2, 3], [2, 3]), 0.95)
    assert got["survival"] == pytest.approx([0.8, 0.4])
    greenwood = [2 / (10 * 8), 2 / (10 * 8) + 3 / (6 * 3)]
    assert got["variance"] == pytest.approx([0.64 * greenwood[0], 0.16 * greenwood[1]])
    assert all(
        lo < s < hi
        for lo, s, hi in zip(got["ci_lower"], got["survival"], got["ci_upper"], strict=True)
    )


def test_log_rank_equals_lifelines_on_a_small_table() -> None:
    # Two groups on times 1, 2, 3: expand the risk tables into rows for lifelines.
    a = Cells(at_risk=[6, 4, 1], events=[1, 2, 1], censored=[1, 1, 0])
    b = Cells(at_risk=[5, 3, 2], events=[2, 0, 1], censored=[0, 1, 1])
    durations, groups, events = [], [], []
    for name, cells in (("a", a), ("b", b)):
        for t, (d, c) in enumerate(zip(cells.events, cells.censored, strict=True), start=1):
            durations += [t] * (d + c)
            events += [1] * d + [0] * c
            groups += [name] * (d + c)
    expected = multivariate_logrank_test(durations, groups, events)
    got = log_rank({"a": a, "b": b})
    assert got is not None
    assert got["chi2"] == pytest.approx(expected.test_statistic, rel=1e-12)
    assert got["p"] == pytest.approx(expected.p_value, rel=1e-10)
    assert log_rank({"a": a}) is None
