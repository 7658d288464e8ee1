"""Incidence and prevalence on a synthetic DuckDB CDM against the independent reference
(`test_incidence_reference.py`: loops over persons and days), intervals against scipy's
other formulations, and disclosure control of the released cells."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import binomtest, gamma

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.incidence import (
    Incidence,
    IncidenceParameters,
    incidence_cells,
    rate_interval,
)
from ehds.analyses.incidence import release_rows as incidence_release
from ehds.analyses.prevalence import (
    Prevalence,
    PrevalenceParameters,
    prevalence_cells,
    proportion_interval,
)
from ehds.analyses.prevalence import release_rows as prevalence_release
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate


def _load_reference() -> Any:
    path = Path(__file__).with_name("test_incidence_reference.py")
    spec = importlib.util.spec_from_file_location("epi_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("epi_reference", module)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

HYPERTENSION = 320128
T2DM = 201826


def cohort_yaml(name: str, concept: int) -> dict[str, Any]:
    return {
        "name": name,
        "yaml": {
            "concept_sets": {name: {"include": [{"concept": concept}]}},
            "entry": {"events": [{"condition": name}], "first_occurrence": True},
            "exit": {"days_after_start": 0},
        },
    }


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cdm") / "fr.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=1500, seed=7, profile="fr"))
    return path


@pytest.fixture(scope="module")
def cdm(cdm_file: Path) -> Any:
    return ref.read_cdms([cdm_file])


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "task.duckdb") as session:
        yield session


def entries_table(frame: pd.DataFrame) -> ir.Table:
    """Cohort entries as the cohorts module gives them, from a pandas frame."""
    return ibis.memtable(
        pa.table(
            {
                "person_id": pa.array(frame.person_id.astype("int64"), pa.int64()),
                "cohort_start_date": pa.array(list(frame.start), pa.date32()),
                "cohort_end_date": pa.array(list(frame.stop), pa.date32()),
            }
        )
    )


def incidence_params(**overrides: Any) -> IncidenceParameters:
    raw: dict[str, Any] = {
        "outcome": cohort_yaml("hypertension", HYPERTENSION),
        "start": "2016-01-01",
        "end": "2021-12-31",
        "washout_days": 365,
        "age_band_edges": [0, 45, 65],
    }
    raw.update(overrides)
    return Incidence().parse_parameters(raw)


def collected(engine: IbisCdm, expr: ir.Table) -> dict[tuple[int, str, str], tuple[int, ...]]:
    rows = engine.collect(expr, max_rows=10_000)
    keys = ("year", "sex", "age_band")
    return {
        (int(r["year"]), r["sex"], r["age_band"]): tuple(
            int(v) for k, v in r.items() if k not in keys
        )
        for r in rows
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"washout_days": 0, "outcome_washout": 180, "start": "2015-07-01", "end": "2019-03-31"},
        {"washout_days": 30, "age_band_edges": [0, 18, 45, 65, 80]},
    ],
    ids=["washout-365", "lookback-180-mid-year", "five-bands"],
)
def test_incidence_cells_equal_the_reference(
    engine: IbisCdm, cdm: Any, overrides: dict[str, Any]
) -> None:
    params = incidence_params(**overrides)
    outcome = ref.first_occurrence_cohort(cdm, HYPERTENSION)
    got = collected(engine, incidence_cells(engine, params, entries_table(outcome), None))
    expected = ref.incidence(
        cdm,
        outcome,
        start=params.start,
        end=params.end,
        washout_days=params.washout_days,
        outcome_washout=params.outcome_washout,
        edges=params.age_band_edges,
    )
    assert got == expected
    assert sum(v[0] for v in got.values()) > 20, "too few events for the test to mean anything"


def _denominator(cdm: Any) -> pd.DataFrame:
    """Even persons, from 2016-03-01 to 2019-10-31 (an arbitrary target cohort)."""
    ids = sorted(int(p) for p in cdm.person.person_id if int(p) % 2 == 0)
    return pd.DataFrame(
        {
            "person_id": ids,
            "start": [date(2016, 3, 1)] * len(ids),
            "stop": [date(2019, 10, 31)] * len(ids),
        }
    )


def test_incidence_with_a_denominator_cohort(engine: IbisCdm, cdm: Any) -> None:
    params = incidence_params(washout_days=0)
    outcome = ref.first_occurrence_cohort(cdm, HYPERTENSION)
    denominator = _denominator(cdm)
    got = collected(
        engine,
        incidence_cells(engine, params, entries_table(outcome), entries_table(denominator)),
    )
    expected = ref.incidence(
        cdm,
        outcome,
        start=params.start,
        end=params.end,
        washout_days=0,
        outcome_washout="all_history",
        edges=params.age_band_edges,
        denominator=denominator,
    )
    assert got == expected
    assert {cell[0] for cell in got} == {2016, 2017, 2018, 2019}


@pytest.mark.parametrize("with_denominator", [False, True])
def test_prevalence_cells_equal_the_reference(
    engine: IbisCdm, cdm: Any, with_denominator: bool
) -> None:
    params = Prevalence().parse_parameters(
        {
            "outcome": cohort_yaml("t2dm", T2DM),
            "start": "2015-04-01",
            "end": "2022-12-31",
            "age_band_edges": [0, 45, 65],
        }
    )
    outcome = ref.first_occurrence_cohort(cdm, T2DM)
    outcome["stop"] = date(2023, 12, 31)  # diabetes lasts: entries up to the data's end
    denominator = _denominator(cdm) if with_denominator else None
    got = collected(
        engine,
        prevalence_cells(
            engine,
            params,
            entries_table(outcome),
            None if denominator is None else entries_table(denominator),
        ),
    )
    expected = ref.prevalence(
        cdm,
        outcome,
        start=params.start,
        end=params.end,
        edges=params.age_band_edges,
        denominator=denominator,
    )
    assert got == expected
    assert sum(v[1] for v in got.values()) > 50


@pytest.mark.parametrize(("events", "days"), [(0, 1000), (1, 365), (7, 20_000), (250, 10**6)])
def test_rate_interval_is_the_exact_poisson_interval(events: int, days: int) -> None:
    lower, upper = rate_interval(events, days, 0.95)
    person_years = days / 365.25
    expected_lower = 0.0 if events == 0 else gamma.ppf(0.025, events) / person_years * 1000
    expected_upper = gamma.ppf(0.975, events + 1) / person_years * 1000
    assert math.isclose(lower, expected_lower, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(upper, expected_upper, rel_tol=1e-9)


@pytest.mark.parametrize(("cases", "total"), [(0, 10), (3, 10), (10, 10), (120, 5000)])
def test_proportion_interval_is_clopper_pearson(cases: int, total: int) -> None:
    lower, upper = proportion_interval(cases, total, 0.9)
    expected = binomtest(cases, total).proportion_ci(confidence_level=0.9, method="exact")
    assert math.isclose(lower, expected.low, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(upper, expected.high, rel_tol=1e-9)


# --------------------------------------------------------------------------- the analyses


def _pooled(document: dict[str, Any], strata: str, level: str, estimate: str) -> Any:
    for row in document["rows"]:
        if (
            row["cdm_name"] == "pooled"
            and row["strata_name"] == strata
            and row["strata_level"] == level
            and row["estimate_name"] == estimate
        ):
            return row
    raise KeyError((strata, level, estimate))


def test_incidence_analysis_end_to_end_with_a_circe_cohort(engine: IbisCdm, cdm: Any) -> None:
    """compute() (cohort through circe, disclosure) and aggregate() on one node: every
    released cell equals the reference, suppressed cells are small, rates follow."""
    analysis = Incidence()
    params = incidence_params(age_band_edges=[0, 50])
    released = analysis.compute(params, ComputeContext(cdm=None, min_cell_count=5, engine=engine))
    assert engine.rows_collected <= len(released["rows"])
    outcome = ref.first_occurrence_cohort(cdm, HYPERTENSION)
    expected = ref.incidence(
        cdm,
        outcome,
        start=params.start,
        end=params.end,
        washout_days=365,
        outcome_washout="all_history",
        edges=[0, 50],
    )
    names = {"events": 0, "person_days": 1, "person_count": 2}
    for row in released["rows"]:
        year, sex, band = row["strata_level"].split(" &&& ")
        true = expected.get((int(year), sex, band), (0, 0, 0))[names[row["estimate_name"]]]
        if row["suppressed"]:
            assert row["estimate_value"] is None
        else:
            assert row["estimate_value"] == true
            if row["estimate_name"] != "person_days":
                assert true == 0 or true >= 5
    document = analysis.aggregate(params, {"fr": released})
    for row in document["rows"]:
        if row["cdm_name"] == "pooled" and row["estimate_name"] == "incidence_1000_pys":
            if not row["complete"]:
                continue
            level = row["strata_level"]
            events = _pooled(document, row["strata_name"], level, "events")["estimate_value"]
            days = _pooled(document, row["strata_name"], level, "person_days")["estimate_value"]
            assert math.isclose(row["estimate_value"], events / (days / 365.25) * 1000)


def test_prevalence_analysis_end_to_end(engine: IbisCdm, cdm: Any) -> None:
    analysis = Prevalence()
    params = analysis.parse_parameters(
        {
            "outcome": cohort_yaml("hypertension", HYPERTENSION),
            "start": "2018-01-01",
            "end": "2020-12-31",
            "age_band_edges": [0, 50],
        }
    )
    released = analysis.compute(params, ComputeContext(cdm=None, min_cell_count=5, engine=engine))
    document = analysis.aggregate(params, {"fr": released})
    year = _pooled(document, "calendar_year", "2019", "prevalence")
    n = _pooled(document, "calendar_year", "2019", "denominator_count")["estimate_value"]
    k = _pooled(document, "calendar_year", "2019", "outcome_count")["estimate_value"]
    assert year["estimate_value"] == k / n
    assert year["complete"] == (not year["suppressed_at"])


# --------------------------------------------------------------------------- disclosure


def test_incidence_suppression_rules() -> None:
    params = incidence_params(start="2020-01-01", end="2020-12-31", age_band_edges=[0])
    grouped = [
        {
            "year": 2020,
            "sex": "FEMALE",
            "age_band": "0+",
            "events": 3,
            "person_days": 9000,
            "persons": 40,
        },
        {
            "year": 2020,
            "sex": "MALE",
            "age_band": "0+",
            "events": 1,
            "person_days": 700,
            "persons": 2,
        },
    ]
    rows = {(r.strata_level, r.estimate_name): r for r in incidence_release(params, grouped, 5)}
    female = "2020 &&& FEMALE &&& 0+"
    male = "2020 &&& MALE &&& 0+"
    other = "2020 &&& OTHER/UNKNOWN &&& 0+"
    assert rows[(female, "events")].suppressed
    assert rows[(female, "events")].estimate_value is None
    assert rows[(female, "person_days")].estimate_value == 9000
    assert rows[(female, "person_count")].estimate_value == 40
    for name in ("events", "person_days", "person_count"):
        assert rows[(male, name)].suppressed, name  # 2 persons: the whole cell
        assert rows[(other, name)].estimate_value == 0  # zero is released as zero
        assert not rows[(other, name)].suppressed


def test_prevalence_suppression_rules() -> None:
    params = PrevalenceParameters.model_validate(
        {
            "outcome": cohort_yaml("t2dm", T2DM),
            "start": "2020-01-01",
            "end": "2020-12-31",
            "age_band_edges": [0],
        }
    )
    grouped = [
        {"year": 2020, "sex": "FEMALE", "age_band": "0+", "denominator": 100, "outcome": 4},
        {"year": 2020, "sex": "MALE", "age_band": "0+", "denominator": 3, "outcome": 0},
    ]
    rows = {(r.strata_level, r.estimate_name): r for r in prevalence_release(params, grouped, 5)}
    assert rows[("2020 &&& FEMALE &&& 0+", "denominator_count")].estimate_value == 100
    assert rows[("2020 &&& FEMALE &&& 0+", "outcome_count")].suppressed
    assert rows[("2020 &&& MALE &&& 0+", "denominator_count")].suppressed
    assert rows[("2020 &&& MALE &&& 0+", "outcome_count")].suppressed


def test_prevalence_hides_a_small_group_without_the_outcome() -> None:
    """40 of 42 with the outcome would tell that 2 persons are without it: the cases are
    suppressed, the denominator stays."""
    params = PrevalenceParameters.model_validate(
        {
            "outcome": cohort_yaml("t2dm", T2DM),
            "start": "2020-01-01",
            "end": "2020-12-31",
            "age_band_edges": [0],
        }
    )
    grouped = [
        {"year": 2020, "sex": "FEMALE", "age_band": "0+", "denominator": 42, "outcome": 40},
        {"year": 2020, "sex": "MALE", "age_band": "0+", "denominator": 42, "outcome": 42},
    ]
    rows = {(r.strata_level, r.estimate_name): r for r in prevalence_release(params, grouped, 5)}
    assert rows[("2020 &&& FEMALE &&& 0+", "denominator_count")].estimate_value == 42
    assert rows[("2020 &&& FEMALE &&& 0+", "outcome_count")].suppressed
    # Everybody with the outcome: the group without it is empty, which identifies nobody.
    assert rows[("2020 &&& MALE &&& 0+", "outcome_count")].estimate_value == 42


def test_pooled_values_from_a_suppressed_node_cell_are_flagged() -> None:
    analysis = Incidence()
    params = incidence_params(start="2020-01-01", end="2020-12-31", age_band_edges=[0])
    big = {
        "year": 2020,
        "sex": "FEMALE",
        "age_band": "0+",
        "events": 9,
        "person_days": 9000,
        "persons": 40,
    }
    small = {**big, "events": 2}

    def released(row: dict[str, Any]) -> dict[str, Any]:
        rows = incidence_release(params, [row], 5)
        return {
            "format": "ehds-summarised-result/1",
            "min_cell_count": 5,
            "rows": [r.to_json() for r in rows],
        }

    document = analysis.aggregate(params, {"a": released(big), "b": released(small)})
    cell = "2020 &&& FEMALE &&& 0+"
    events = _pooled(document, "calendar_year &&& sex &&& age_group", cell, "events")
    assert events["estimate_value"] == 9
    assert not events["complete"]
    assert events["suppressed_at"] == ["b"]
    rate = _pooled(document, "overall", "overall", "incidence_1000_pys")
    assert rate["complete"] is False
    assert rate["suppressed_at"] == ["b"]
    days = _pooled(document, "overall", "overall", "person_days")
    assert days["estimate_value"] == 18_000
    assert days["complete"]
    assert document["suppressed_cells"] == {"a": 0, "b": 1}
