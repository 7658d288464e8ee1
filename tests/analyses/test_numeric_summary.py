"""numeric_summary on a synthetic DuckDB CDM against pandas/numpy, the histogram merging rule,
and disclosure control."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pyarrow as pa
import pytest

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.numeric_summary import (
    NumericSummary,
    NumericSummaryParameters,
    merge_bins,
    parse_span,
    release_rows,
    selected_values,
)
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

WEIGHT = 3025315
HBA1C = 3004410


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


@pytest.fixture(scope="module")
def cdm_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cdm")
    files = []
    for profile, offset in (("fi", 0), ("dk", 500_000_000)):
        path = folder / f"{profile}.duckdb"
        options = SynthOptions(persons=800, seed=3, profile=profile, id_offset=offset)
        generate(CdmDatabase.parse(str(path)), options)
        files.append(path)
    return files


@pytest.fixture
def engines(cdm_files: list[Path], tmp_path: Path) -> Iterator[list[IbisCdm]]:
    with (
        duckdb_session(cdm_files[0], tmp_path / "a.duckdb") as first,
        duckdb_session(cdm_files[1], tmp_path / "b.duckdb") as second,
    ):
        yield [first, second]


def params_for(**overrides: Any) -> NumericSummaryParameters:
    raw: dict[str, Any] = {
        "name": "body weight",
        "concept_ids": [WEIGHT],
        "lower": 0,
        "upper": 150,
        "width": 2.5,
        "quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
    }
    raw.update(overrides)
    return NumericSummary().parse_parameters(raw)


def _pooled_values(document: dict[str, Any]) -> dict[str, Any]:
    return {
        row["estimate_name"]: row
        for row in document["rows"]
        if row["cdm_name"] == "pooled" and row["variable_name"] == "value_as_number"
    }


@pytest.mark.parametrize("concept", [WEIGHT, HBA1C])
def test_federated_moments_and_quantiles_equal_pooled_numpy(
    engines: list[IbisCdm], cdm_files: list[Path], concept: int
) -> None:
    analysis = NumericSummary()
    params = (
        params_for(concept_ids=[concept])
        if concept == WEIGHT
        else params_for(concept_ids=[concept], lower=3, upper=15, width=0.1)
    )
    node_results = {
        name: analysis.compute(params, ComputeContext(cdm=None, min_cell_count=5, engine=engine))
        for name, engine in zip(("fi", "dk"), engines, strict=True)
    }
    for engine, result in zip(engines, node_results.values(), strict=True):
        assert engine.rows_collected <= len(result["rows"]) + params.bins + 2
    document = analysis.aggregate(params, node_results)
    pooled = _pooled_values(document)
    values = ref.measurement_values(ref.read_cdms(cdm_files), [concept])
    assert pooled["count"]["estimate_value"] == len(values)
    assert math.isclose(pooled["mean"]["estimate_value"], float(np.mean(values)), rel_tol=1e-9)
    assert math.isclose(pooled["sd"]["estimate_value"], float(np.std(values, ddof=1)), rel_tol=1e-9)
    spans = [
        parse_span(row["variable_level"])
        for row in document["rows"]
        if row["cdm_name"] == "pooled" and row["variable_name"] == "histogram_bin"
    ]
    for q in params.quantiles:
        name = f"p{q * 100:g}"
        expected, (first, last) = ref.grouped_quantile(
            values, spans, q, lower=params.lower, width=params.width, bins=params.bins
        )
        assert expected is not None
        assert math.isclose(pooled[name]["estimate_value"], expected, rel_tol=1e-12)
        low = pooled[f"{name}_bin_lower"]["estimate_value"]
        high = pooled[f"{name}_bin_upper"]["estimate_value"]
        assert low == params.lower + first * params.width
        assert high == params.lower + (last + 1) * params.width
        assert math.isclose(pooled[f"{name}_bin_width"]["estimate_value"], high - low)
        true = float(np.quantile(values, q))
        assert low <= true <= high, (q, low, true, high)


def test_descendants_unit_and_cohort_window(engines: list[IbisCdm], cdm_files: list[Path]) -> None:
    engine = engines[0]
    cdm = ref.read_cdms(cdm_files[:1])
    m = cdm.measurement
    plain = params_for(unit_concept_id=9529)
    values = engine.backend.to_pyarrow(selected_values(engine, plain, None))
    assert values.num_rows == int(((m.concept_id == WEIGHT) & (m.unit_concept_id == 9529)).sum())
    assert (
        len(engine.backend.to_pyarrow(selected_values(engine, params_for(unit_concept_id=1), None)))
        == 0
    )
    with_descendants = params_for(include_descendants=True)
    assert len(engine.backend.to_pyarrow(selected_values(engine, with_descendants, None))) == len(
        values
    )

    first = m[m.concept_id == WEIGHT].groupby("person_id")["day"].min().reset_index()
    first = first.head(50)
    cohort = ibis.memtable(
        pa.table(
            {
                "person_id": pa.array(first.person_id.astype("int64"), pa.int64()),
                "cohort_start_date": pa.array(list(first.day), pa.date32()),
                "cohort_end_date": pa.array(list(first.day), pa.date32()),
            }
        )
    )
    windowed = params_for(window_start_days=0, window_end_days=400)
    got = engine.backend.to_pyarrow(selected_values(engine, windowed, cohort))
    index = dict(zip(first.person_id, first.day, strict=True))
    chosen = m[(m.concept_id == WEIGHT) & m.person_id.isin(index.keys()) & m.value.notna()]
    expected = [
        v
        for p, d, v in chosen[["person_id", "day", "value"]].itertuples(index=False)
        if 0 <= (d - index[p]).days <= 400
    ]
    assert sorted(got.column("value").to_pylist()) == sorted(expected)


@pytest.mark.parametrize("seed", range(30))
def test_merge_bins_meets_the_threshold_and_keeps_every_value(seed: int) -> None:
    rng = random.Random(seed)
    bins = rng.randint(1, 40)
    counts = {i: rng.choice([0, 0, 1, 2, 3, 7, 20]) for i in range(-1, bins + 1)}
    threshold = rng.choice([2, 5, 10])
    spans = merge_bins(counts, -1, bins, threshold)
    total = sum(counts.values())
    if total < threshold:
        assert spans == []
        return
    assert spans[0][0] == -1
    assert spans[-1][1] == bins
    for (_, last), (first, _) in zip(
        [(a, b) for a, b, _ in spans], [(a, b) for a, b, _ in spans[1:]], strict=False
    ):
        assert first == last + 1
    for first, last, count in spans:
        assert count == sum(counts[i] for i in range(first, last + 1))
        assert count == 0 or count >= threshold


def test_small_populations_release_nothing_but_suppressed_moments() -> None:
    params = params_for()
    rows = release_rows(
        params, {"count": 12, "person_count": 3, "sum": 800.0, "sum_squares": 6e4}, [], 5
    )
    assert [r.estimate_name for r in rows] == ["count", "person_count", "sum", "sum_squares"]
    assert all(r.suppressed and r.estimate_value is None for r in rows)
    rows = release_rows(
        params, {"count": 0, "person_count": 0, "sum": None, "sum_squares": None}, [], 5
    )
    assert [r.estimate_value for r in rows] == [0, 0, 0.0, 0.0]


def test_released_histogram_bins_are_zero_or_at_least_the_threshold() -> None:
    params = params_for(lower=0, upper=10, width=1)
    histogram = [{"bin": i, "count": c} for i, c in enumerate([1, 2, 3, 0, 0, 9, 1, 1, 2, 5])]
    rows = release_rows(
        params, {"count": 24, "person_count": 20, "sum": 100.0, "sum_squares": 600.0}, histogram, 5
    )
    bins = [
        (r.variable_level, r.estimate_value) for r in rows if r.variable_name == "histogram_bin"
    ]
    assert bins == [
        ("-1..-1", 0),
        ("0..2", 6),
        ("3..3", 0),
        ("4..4", 0),
        ("5..5", 9),
        ("6..9", 9),
        ("10..10", 0),
    ]


def test_pooled_values_are_flagged_when_a_node_suppressed() -> None:
    analysis = NumericSummary()
    params = params_for(lower=0, upper=10, width=1)

    def released(n: int, persons: int) -> dict[str, Any]:
        histogram = [{"bin": 5, "count": n}]
        rows = release_rows(
            params,
            {"count": n, "person_count": persons, "sum": 5.5 * n, "sum_squares": 30.25 * n},
            histogram,
            5,
        )
        return {
            "format": "ehds-summarised-result/1",
            "min_cell_count": 5,
            "rows": [r.to_json() for r in rows],
        }

    document = analysis.aggregate(params, {"a": released(40, 30), "b": released(3, 2)})
    pooled = _pooled_values(document)
    assert pooled["count"]["estimate_value"] == 40
    assert pooled["count"]["complete"] is False
    assert pooled["mean"]["suppressed_at"] == ["b"]
    assert pooled["p50"]["estimate_value"] == 5.5
    assert pooled["p50_bin_width"]["estimate_value"] == 1.0
