"""Incidence, prevalence and numeric summaries: federated equals pooled, through the live
federation.

Three country nodes (separate processes, disjoint synthetic CDMs of different profiles) run
each analysis; every pooled value the researcher receives that is complete (no node suppressed
a cell it is built from) must equal the same figure computed by independent code (plain
Python over person rows read with hand-written SQL, scipy for the intervals, numpy for
moments and quantiles; `tests/analyses/test_incidence_reference.py`) over the union of the
three CDMs. Every node value is checked against that node's own CDM, and every suppressed
node count against the threshold.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import beta, gamma

from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState

pytestmark = pytest.mark.slow

MIN_CELL = 5
PERSONS = 2500
HYPERTENSION = 320128
WEIGHT = 3025315


def _load_reference() -> Any:
    path = Path(__file__).parents[1] / "analyses" / "test_incidence_reference.py"
    spec = importlib.util.spec_from_file_location("epi_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("epi_reference", module)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def _hypertension(exit_rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "hypertension",
        "yaml": {
            "concept_sets": {"hypertension": {"include": [{"concept": HYPERTENSION}]}},
            "entry": {"events": [{"condition": "hypertension"}], "first_occurrence": True},
            "exit": exit_rule,
        },
    }


INCIDENCE = {
    "outcome": _hypertension({"days_after_start": 0}),
    "start": "2015-01-01",
    "end": "2018-12-31",
    "washout_days": 365,
    "age_band_edges": [0, 50],
}
PREVALENCE = {
    "outcome": _hypertension({"end_of_observation": True}),
    "start": "2016-01-01",
    "end": "2020-12-31",
    "age_band_edges": [0, 45, 65],
}
NUMERIC: dict[str, Any] = {
    "name": "body weight",
    "concept_ids": [WEIGHT],
    "lower": 0,
    "upper": 200,
    "width": 2.5,
    "quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
}


@pytest.fixture(scope="module")
def documents(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalFederation, dict[str, Any]]]:
    """One federation, the three studies submitted together, their result documents."""
    from ehds.cli.demo_command import wait_for_nodes

    root = tmp_path_factory.mktemp("epi")
    fed = prepare(
        root / "fed",
        persons=PERSONS,
        analyses=[("incidence", "1.0.0"), ("prevalence", "1.0.0"), ("numeric_summary", "1.0.0")],
        min_cell_count=MIN_CELL,
    )
    with running(fed) as started:
        wait_for_nodes(started.operator_config, list(started.nodes), 60)
        with CoordinatorClient(load_client_config(started.researcher_config)) as client:
            ids = {
                name: client.submit(
                    StudySpec(
                        title=f"epi {name}",
                        analysis=AnalysisRef(name, "1.0.0"),
                        parameters=json.dumps(parameters).encode(),
                        min_nodes=3,
                        deadline_seconds=120,
                        data_permit_id=PERMIT_ID,
                    )
                ).id
                for name, parameters in (
                    ("incidence", INCIDENCE),
                    ("prevalence", PREVALENCE),
                    ("numeric_summary", NUMERIC),
                )
            }
            results = {}
            for name, study_id in ids.items():
                assert client.wait(study_id, timeout=120).state == StudyState.COMPLETED, name
                results[name] = client.results(study_id)
        yield started, results


@pytest.fixture(scope="module")
def pooled_cdm(documents: tuple[LocalFederation, dict[str, Any]]) -> Any:
    fed, _ = documents
    return ref.read_cdms([node.cdm for node in fed.nodes.values()])


def _close(got: float, expected: float) -> bool:
    return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)


def _margin_levels(cell: tuple[int, str, str]) -> dict[str, str]:
    year, sex, band = cell
    return {
        "calendar_year &&& sex &&& age_group": f"{year} &&& {sex} &&& {band}",
        "overall": "overall",
        "calendar_year": str(year),
        "sex": sex,
        "age_group": band,
        "calendar_year &&& sex": f"{year} &&& {sex}",
        "calendar_year &&& age_group": f"{year} &&& {band}",
    }


def _incidence_expected(
    cells: dict[tuple[int, str, str], tuple[int, int, int]],
) -> dict[Any, float]:
    sums: dict[tuple[str, str], list[int]] = {}
    expected: dict[Any, float] = {}
    for cell, (events, days, persons) in cells.items():
        level = _margin_levels(cell)
        expected[
            (
                "calendar_year &&& sex &&& age_group",
                level["calendar_year &&& sex &&& age_group"],
                "person_count",
            )
        ] = persons
        for strata in (
            "calendar_year &&& sex &&& age_group",
            "overall",
            "calendar_year",
            "sex",
            "age_group",
        ):
            total = sums.setdefault((strata, level[strata]), [0, 0])
            total[0] += events
            total[1] += days
    for (strata, margin), (events, days) in sums.items():
        expected[(strata, margin, "events")] = events
        expected[(strata, margin, "person_days")] = days
        if days:
            years = days / 365.25
            expected[(strata, margin, "person_years")] = years
            expected[(strata, margin, "incidence_1000_pys")] = events / years * 1000
            lower = gamma.ppf(0.025, events) if events else 0.0
            expected[(strata, margin, "incidence_1000_pys_ci_lower")] = lower / years * 1000
            expected[(strata, margin, "incidence_1000_pys_ci_upper")] = (
                gamma.ppf(0.975, events + 1) / years * 1000
            )
    return expected


def _prevalence_expected(cells: dict[tuple[int, str, str], tuple[int, int]]) -> dict[Any, float]:
    sums: dict[tuple[str, str], list[int]] = {}
    for cell, (total, cases) in cells.items():
        level = _margin_levels(cell)
        for strata in (
            "calendar_year &&& sex &&& age_group",
            "calendar_year",
            "calendar_year &&& sex",
            "calendar_year &&& age_group",
        ):
            entry = sums.setdefault((strata, level[strata]), [0, 0])
            entry[0] += total
            entry[1] += cases
    expected: dict[Any, float] = {}
    for (strata, margin), (n, k) in sums.items():
        expected[(strata, margin, "denominator_count")] = n
        expected[(strata, margin, "outcome_count")] = k
        if n:
            expected[(strata, margin, "prevalence")] = k / n
            expected[(strata, margin, "prevalence_ci_lower")] = (
                float(beta.ppf(0.025, k, n - k + 1)) if k else 0.0
            )
            expected[(strata, margin, "prevalence_ci_upper")] = (
                float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
            )
    return expected


def _compare(document: dict[str, Any], place: str, expected: dict[Any, float]) -> int:
    """Every complete row of ``place`` equals the reference (absent there means 0)."""
    compared = 0
    for row in document["pooled"]["rows"]:
        if row["cdm_name"] != place or row["suppressed"] or row.get("complete") is False:
            continue
        key = (row["strata_name"], row["strata_level"], row["estimate_name"])
        value = expected.get(key, 0)
        assert _close(row["estimate_value"], value), (key, row["estimate_value"], value)
        compared += 1
    return compared


def _check_node_suppression(document: dict[str, Any]) -> None:
    """Released node counts are 0 or at least the threshold; suppressed ones are null."""
    for entry in document["nodes"]:
        for row in entry["result"]["rows"]:
            if row["suppressed"]:
                assert row["estimate_value"] is None
            elif row["estimate_name"] in (
                "events",
                "person_count",
                "denominator_count",
                "outcome_count",
            ):
                assert row["estimate_value"] == 0 or row["estimate_value"] >= MIN_CELL


def _outcome_until_end_of_observation(cdm: Any) -> Any:
    entries = ref.first_occurrence_cohort(cdm, HYPERTENSION)
    periods = cdm.observation_period
    stops = []
    for person_id, start in entries[["person_id", "start"]].itertuples(index=False):
        own = periods[
            (periods.person_id == person_id) & (periods.start <= start) & (periods.stop >= start)
        ]
        stops.append(own.stop.iloc[0])
    entries["stop"] = stops
    return entries


def test_federated_incidence_equals_pooled(documents: Any, pooled_cdm: Any) -> None:
    fed, results = documents
    document = results["incidence"]
    params = {
        "start": date(2015, 1, 1),
        "end": date(2018, 12, 31),
        "washout_days": 365,
        "outcome_washout": "all_history",
        "edges": [0, 50],
    }
    cells = ref.incidence(
        pooled_cdm, ref.first_occurrence_cohort(pooled_cdm, HYPERTENSION), **params
    )
    compared = _compare(document, "pooled", _incidence_expected(cells))
    assert compared >= 60, compared
    overall = [
        r
        for r in document["pooled"]["rows"]
        if r["cdm_name"] == "pooled"
        and r["strata_name"] == "overall"
        and r["estimate_name"] == "person_days"
    ]
    assert overall[0]["complete"], "person-days overall must be complete"
    for name, node in fed.nodes.items():
        own = ref.read_cdms([node.cdm])
        own_cells = ref.incidence(own, ref.first_occurrence_cohort(own, HYPERTENSION), **params)
        assert _compare(document, name, _incidence_expected(own_cells)) > 0
    _check_node_suppression(document)


def test_federated_prevalence_equals_pooled(documents: Any, pooled_cdm: Any) -> None:
    fed, results = documents
    document = results["prevalence"]
    params = {"start": date(2016, 1, 1), "end": date(2020, 12, 31), "edges": [0, 45, 65]}
    cells = ref.prevalence(pooled_cdm, _outcome_until_end_of_observation(pooled_cdm), **params)
    compared = _compare(document, "pooled", _prevalence_expected(cells))
    assert compared >= 80, compared
    for name, node in fed.nodes.items():
        own = ref.read_cdms([node.cdm])
        own_cells = ref.prevalence(own, _outcome_until_end_of_observation(own), **params)
        assert _compare(document, name, _prevalence_expected(own_cells)) > 0
    _check_node_suppression(document)


def test_federated_numeric_summary_equals_pooled(documents: Any, pooled_cdm: Any) -> None:
    _, results = documents
    document = results["numeric_summary"]
    values = ref.measurement_values(pooled_cdm, [WEIGHT])
    pooled = {
        r["estimate_name"]: r
        for r in document["pooled"]["rows"]
        if r["cdm_name"] == "pooled" and r["variable_name"] == "value_as_number"
    }
    assert all(r["complete"] for r in pooled.values())
    assert pooled["count"]["estimate_value"] == len(values)
    assert _close(pooled["sum"]["estimate_value"], float(np.sum(values)))
    assert math.isclose(pooled["mean"]["estimate_value"], float(np.mean(values)), rel_tol=1e-9)
    assert math.isclose(pooled["sd"]["estimate_value"], float(np.std(values, ddof=1)), rel_tol=1e-9)
    bins = [
        (r["variable_level"], r["estimate_value"])
        for r in document["pooled"]["rows"]
        if r["cdm_name"] == "pooled" and r["variable_name"] == "histogram_bin"
    ]
    spans = [tuple(int(x) for x in level.split("..")) for level, _ in bins]
    index = ref.fine_bins(values, 0.0, 2.5, 80)
    for (first, last), (_, count) in zip(spans, bins, strict=True):
        assert count == int(((index >= first) & (index <= last)).sum())
    for q in NUMERIC["quantiles"]:
        name = f"p{q * 100:g}"
        expected, _ = ref.grouped_quantile(values, spans, q, lower=0.0, width=2.5, bins=80)
        assert math.isclose(pooled[name]["estimate_value"], expected, rel_tol=1e-12)
        true = float(np.quantile(values, q))
        low, high = (
            pooled[f"{name}_bin_lower"]["estimate_value"],
            pooled[f"{name}_bin_upper"]["estimate_value"],
        )
        assert low <= true <= high
        assert _close(pooled[f"{name}_bin_width"]["estimate_value"], high - low)
    for entry in document["nodes"]:
        for row in entry["result"]["rows"]:
            if row["variable_name"] == "histogram_bin":
                assert row["estimate_value"] == 0 or row["estimate_value"] >= MIN_CELL
