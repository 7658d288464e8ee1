"""Summaries of measurement values: count, mean and standard deviation exactly, quantiles from
merged histograms whose bins each meet the cell threshold.

Which values: ``measurement.value_as_number`` (non-null) of the measurements whose concept is
in ``concept_ids`` (with their descendants through ``concept_ancestor`` if asked), optionally
of one unit only; with a ``cohort``, only the measurements of its members dated within
``[window_start_days, window_end_days]`` of a cohort entry's start (each measurement once,
whatever the number of entries it falls near).

Node side (:meth:`NumericSummary.compute`): two grouped statements inside the engine (the
moments, and the counts per fine histogram bin); Python sees one row and at most
``bins + 2`` rows. Released, all additive:

* ``count`` (measurements), ``person_count``, ``sum`` and ``sum_squares`` of the values:
  pooled mean and standard deviation are then exact. If the measurements or the persons
  number 1 to threshold-1, everything is suppressed.
* A histogram on the grid fixed by the parameters: bin ``i`` holds the values with
  ``floor((value - lower) / width) == i`` for ``0 <= i < bins``; an underflow bin (``i = -1``)
  and an overflow bin (``i = bins``) hold the rest. The node merges neighbouring bins until
  every non-empty released bin holds at least threshold values (scanning upwards, closing a
  bin as soon as it is large enough; a small remainder joins the last closed bin). A released
  bin is a span ``first..last`` of grid bins (``variable_level``), so the released bins are a
  coarsening of the grid and no released count lies in 1..threshold-1.

Coordinator side (:meth:`NumericSummary.aggregate`): mean and standard deviation from the
pooled sums, computed with exact rational arithmetic from the released floats (the sum of
squares minus the squared sum loses digits in floating point). Histograms are merged on the
finest partition that coarsens every node's bins (its boundaries are those common to all
nodes) and quantiles interpolated linearly inside the bin holding them (the grouped-data
formula ``L + (q N - F) / f * w``); each quantile states its bin's edges and width. A quantile
falling in the underflow or overflow bin has no finite edge and is not estimated.

Known limit: the histogram threshold counts values, not persons: a bin of five values of one
person is released. Choose ``lower``/``upper`` to cover the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Final

import ibis
import ibis.expr.types as ir
from pydantic import Field, model_validator

from ehds.analyses import results
from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.engine import IbisCdm
from ehds.analyses.person_time import (
    add_days,
    cohort_table,
    population_fingerprint,
)
from ehds.federation.model import TaskStage

MAX_BINS: Final = 10_000
MAX_CONCEPTS: Final = 1_000
VALUE: Final = "value_as_number"
HISTOGRAM: Final = "histogram_bin"
MOMENTS: Final = ("count", "person_count", "sum", "sum_squares")


class NumericSummaryParameters(AnalysisParameters):
    name: str = Field(default="measurement", min_length=1, max_length=200)
    concept_ids: list[int] = Field(min_length=1, max_length=MAX_CONCEPTS)
    include_descendants: bool = False
    unit_concept_id: int | None = None
    cohort: CohortSpec | None = None
    window_start_days: int = Field(default=-365, ge=-36_500, le=36_500)
    window_end_days: int = Field(default=0, ge=-36_500, le=36_500)
    lower: float
    upper: float
    width: float = Field(gt=0)
    quantiles: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], max_length=99)

    @model_validator(mode="after")
    def _consistent(self) -> NumericSummaryParameters:
        if self.window_end_days < self.window_start_days:
            raise ValueError("window_end_days is before window_start_days")
        if not self.upper > self.lower:
            raise ValueError("upper must be greater than lower")
        bins = (self.upper - self.lower) / self.width
        if round(bins) < 1 or abs(bins - round(bins)) > 1e-9 * max(1.0, bins):
            raise ValueError("upper - lower must be a whole number of widths")
        if round(bins) > MAX_BINS:
            raise ValueError(f"at most {MAX_BINS} bins")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        if len(set(self.quantiles)) != len(self.quantiles):
            raise ValueError("quantiles must be distinct")
        return self

    @property
    def bins(self) -> int:
        return round((self.upper - self.lower) / self.width)

    def edge(self, index: int) -> float:
        """Lower edge of grid bin ``index`` (-inf for the underflow bin, +inf past the last)."""
        if index < 0:
            return -math.inf
        if index > self.bins:
            return math.inf
        return self.lower + index * self.width


# --------------------------------------------------------------------------- node side


def selected_values(
    engine: IbisCdm, params: NumericSummaryParameters, cohort: ir.Table | None
) -> ir.Table:
    """``person_id, value``: the measurements the summary describes."""
    m = engine.table("measurement")
    m = m.filter(m.value_as_number.notnull())
    in_set = m.measurement_concept_id.isin(params.concept_ids)
    if params.include_descendants:
        ca = engine.table("concept_ancestor")
        descendants = ca.filter(ca.ancestor_concept_id.isin(params.concept_ids)).select(
            concept_id=ca.descendant_concept_id
        )
        in_set = in_set | m.measurement_concept_id.isin(descendants.concept_id)
    m = m.filter(in_set)
    if params.unit_concept_id is not None:
        m = m.filter(m.unit_concept_id == params.unit_concept_id)
    if cohort is not None:
        entries = cohort.select(
            c_person_id=cohort.person_id.cast("int64"), c_start=cohort.cohort_start_date
        )
        m = m.semi_join(
            entries,
            [
                m.person_id.cast("int64") == entries.c_person_id,
                m.measurement_date >= add_days(entries.c_start, params.window_start_days),
                m.measurement_date <= add_days(entries.c_start, params.window_end_days),
            ],
        )
    return m.select(person_id=m.person_id.cast("int64"), value=m.value_as_number.cast("float64"))


def bin_index(value: ir.FloatingValue, params: NumericSummaryParameters) -> ir.IntegerValue:
    """``floor((value - lower) / width)`` clamped to -1 (underflow) and ``bins`` (overflow);
    the comparisons come before the cast so that huge values never overflow an integer."""
    position = (value - params.lower) / params.width
    result: ir.IntegerValue = ibis.cases(
        (position < 0, -1),
        (position >= params.bins, params.bins),
        else_=position.floor().cast("int64"),
    )
    return result


def moments(values: ir.Table) -> ir.Table:
    return values.aggregate(
        count=values.count(),
        person_count=values.person_id.nunique(),
        sum=values.value.sum(),
        sum_squares=(values.value * values.value).sum(),
    )


def fine_histogram(values: ir.Table, params: NumericSummaryParameters) -> ir.Table:
    binned = values.select(bin=bin_index(values.value, params))
    return binned.group_by("bin").agg(count=binned.count())


def merge_bins(
    counts: Mapping[int, int], first: int, last: int, threshold: int
) -> list[tuple[int, int, int]]:
    """``(first, last, count)`` spans covering ``first..last`` in which every non-empty span
    holds at least ``threshold``: neighbours merged upwards, empty bins kept alone while
    nothing is pending, a small remainder joined to the last closed span. Nothing (an empty
    list) if the total is below the threshold."""
    spans: list[tuple[int, int, int]] = []
    start, pending = first, 0
    for index in range(first, last + 1):
        count = counts.get(index, 0)
        if pending == 0 and count == 0:
            spans.append((index, index, 0))
            start = index + 1
            continue
        pending += count
        if pending >= threshold:
            spans.append((start, index, pending))
            start, pending = index + 1, 0
    if pending:
        closed = [i for i, span in enumerate(spans) if span[2] > 0]
        if not closed:
            return []
        keep = closed[-1]
        merged_count = spans[keep][2] + pending
        spans = [*spans[:keep], (spans[keep][0], last, merged_count)]
    elif start <= last:  # pragma: no cover - every index is in a span when nothing is pending
        raise AssertionError("unreachable")
    return spans


def span_level(first: int, last: int) -> str:
    return f"{first}..{last}"


def parse_span(level: str) -> tuple[int, int]:
    first, last = level.split("..")
    return int(first), int(last)


def release_rows(
    params: NumericSummaryParameters,
    stats: Mapping[str, Any],
    histogram: Sequence[Mapping[str, Any]],
    threshold: int,
) -> list[results.Row]:
    n = int(stats.get("count") or 0)
    persons = int(stats.get("person_count") or 0)
    hidden = 0 < n < threshold or 0 < persons < threshold
    group = ("concept_set_name", params.name)
    values: dict[str, int | float] = {
        "count": n,
        "person_count": persons,
        "sum": float(stats.get("sum") or 0.0),
        "sum_squares": float(stats.get("sum_squares") or 0.0),
    }
    rows = [
        results.make_row(
            VALUE,
            name,
            None if hidden else values[name],
            estimate_type="integer" if name in ("count", "person_count") else "numeric",
            group=group,
            suppressed=hidden,
        )
        for name in MOMENTS
    ]
    if hidden or n == 0:
        return rows
    counts = {int(r["bin"]): int(r["count"]) for r in histogram}
    for first, last, count in merge_bins(counts, -1, params.bins, threshold):
        rows.append(
            results.make_row(
                HISTOGRAM,
                "count",
                count,
                estimate_type="integer",
                variable_level=span_level(first, last),
                group=group,
            )
        )
    return rows


# --------------------------------------------------------------------------- coordinator


def mean_sd(parts: Sequence[tuple[int, float, float]]) -> tuple[float, float | None]:
    """Mean and sample standard deviation from ``(n, sum, sum of squares)`` of one or more
    places, in exact rational arithmetic: the released floats are exact binary fractions, so
    neither the pooling nor the difference ``sum of squares - sum^2 / n`` loses digits."""
    n = sum(part[0] for part in parts)
    s1 = sum((Fraction(part[1]) for part in parts), Fraction(0))
    s2 = sum((Fraction(part[2]) for part in parts), Fraction(0))
    mean = s1 / n
    if n < 2:
        return float(mean), None
    variance = (s2 - s1 * s1 / n) / (n - 1)
    return float(mean), math.sqrt(max(float(variance), 0.0))


def common_partition(partitions: Sequence[Sequence[tuple[int, int]]]) -> list[tuple[int, int]]:
    """The finest partition whose bins are unions of every given partition's bins: its
    boundaries are those that all partitions share."""
    if not partitions:
        return []
    shared: set[int] | None = None
    for spans in partitions:
        cuts = {last for _, last in spans}
        shared = cuts if shared is None else shared & cuts
    assert shared is not None
    first = min(span[0] for span in partitions[0])
    result = []
    for cut in sorted(shared):
        result.append((first, cut))
        first = cut + 1
    return result


def merged_histogram(
    histograms: Sequence[Mapping[tuple[int, int], int]],
) -> list[tuple[int, int, int]]:
    """``(first, last, count)`` on the common partition of the histograms, counts summed."""
    partition = common_partition([sorted(h) for h in histograms])
    merged = []
    for first, last in partition:
        count = sum(c for h in histograms for (f, la), c in h.items() if f >= first and la <= last)
        merged.append((first, last, count))
    return merged


def histogram_quantile(
    params: NumericSummaryParameters, bins: Sequence[tuple[int, int, int]], q: float
) -> tuple[float | None, int, int]:
    """``(value, first, last)``: the grouped-data quantile ``L + (qN - F) / f * w`` and the
    span of the bin holding it (value None in the underflow or overflow bin)."""
    total = sum(count for _, _, count in bins)
    target = q * total
    below = 0
    for first, last, count in bins:
        if count and below + count >= target:
            low, high = params.edge(first), params.edge(last + 1)
            if math.isinf(low) or math.isinf(high):
                return None, first, last
            return low + (target - below) / count * (high - low), first, last
        below += count
    raise ValueError("an empty histogram has no quantiles")


def quantile_name(q: float) -> str:
    return f"p{q * 100:g}"


def derived_rows(
    params: NumericSummaryParameters,
    place: str,
    parts: Sequence[tuple[int, float, float]],
    histograms: Sequence[Mapping[tuple[int, int], int]],
    missing: Sequence[str],
    *,
    pooled: bool,
) -> list[results.Row]:
    group = ("concept_set_name", params.name)
    flags: dict[str, Any] = {"complete": not missing, "suppressed_at": list(missing)}
    if not pooled and not missing:
        flags = {}
    rows: list[results.Row] = []
    if sum(part[0] for part in parts) > 0:
        mean, sd = mean_sd(parts)
        rows.append(results.make_row(VALUE, "mean", mean, group=group, cdm_name=place, **flags))
        if sd is not None:
            rows.append(results.make_row(VALUE, "sd", sd, group=group, cdm_name=place, **flags))
    if not histograms:
        return rows
    merged = merged_histogram(histograms)
    if pooled:
        for first, last, count in merged:
            rows.append(
                results.make_row(
                    HISTOGRAM,
                    "count",
                    count,
                    estimate_type="integer",
                    variable_level=span_level(first, last),
                    group=group,
                    cdm_name=place,
                    **flags,
                )
            )
    if not any(count for _, _, count in merged):
        return rows
    for q in params.quantiles:
        value, first, last = histogram_quantile(params, merged, q)
        name = quantile_name(q)
        low, high = params.edge(first), params.edge(last + 1)
        estimates: list[tuple[str, float]] = []
        if value is not None:
            estimates.append((name, value))
        if not math.isinf(low):
            estimates.append((f"{name}_bin_lower", low))
        if not math.isinf(high):
            estimates.append((f"{name}_bin_upper", high))
        if value is not None:
            estimates.append((f"{name}_bin_width", high - low))
        for estimate, number in estimates:
            rows.append(
                results.make_row(
                    VALUE, estimate, float(number), group=group, cdm_name=place, **flags
                )
            )
    return rows


def node_histogram(result: results.SummarisedResult) -> dict[tuple[int, int], int]:
    return {
        parse_span(row.variable_level): int(row.estimate_value or 0)
        for row in result.rows
        if row.variable_name == HISTOGRAM
    }


class NumericSummary(Analysis[NumericSummaryParameters]):
    name = "numeric_summary"
    version = "1.0.0"
    parameters = NumericSummaryParameters
    description = (
        "Measurement values of a concept set: count, mean and standard deviation exactly, "
        "quantiles from histograms merged so that every bin meets the cell threshold."
    )

    def compute(self, params: NumericSummaryParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        with cohort_table(engine, params.cohort) as cohort:
            values = selected_values(engine, params, cohort)
            ctx.check_population(
                values.select("person_id").distinct(),
                fingerprint=population_fingerprint(self.name, params),
            )
            ctx.check_cancelled()
            stats = engine.collect(moments(values), max_rows=1)[0]
            ctx.check_cancelled()
            histogram = engine.collect(fine_histogram(values, params), max_rows=params.bins + 2)
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        rows = release_rows(params, stats, histogram, ctx.min_cell_count)
        return results.SummarisedResult(min_cell_count=ctx.min_cell_count, rows=rows).to_json()

    def aggregate(
        self, params: NumericSummaryParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        released = results.validated_results(self.ref(), node_results)
        for node, result in released.items():
            self._check_shape(params, node, result)
        rows: list[results.Row] = []
        histograms: dict[str, dict[tuple[int, int], int]] = {}
        parts: dict[str, tuple[int, float, float]] = {}
        for node, result in released.items():
            labelled = results.label_rows(node, result)
            rows.extend(labelled)
            moments_of = {r.estimate_name: r.estimate_value for r in result.rows[: len(MOMENTS)]}
            if moments_of["count"] is not None:
                parts[node] = (
                    int(moments_of["count"]),
                    float(moments_of["sum"] or 0.0),
                    float(moments_of["sum_squares"] or 0.0),
                )
            histogram = node_histogram(result)
            if histogram:
                histograms[node] = histogram
            rows.extend(
                derived_rows(
                    params,
                    node,
                    [parts[node]] if node in parts else [],
                    [histogram] if histogram else [],
                    [] if node in parts else [node],
                    pooled=False,
                )
            )
        rows.extend(results.pool_additive(released, select=lambda row: row.variable_name == VALUE))
        missing = sorted(node for node in released if node not in parts)
        rows.extend(
            derived_rows(
                params,
                results.POOLED,
                [parts[node] for node in sorted(parts)],
                [histograms[node] for node in sorted(histograms)],
                missing,
                pooled=True,
            )
        )
        return results.summarised_document(released, rows)

    def _check_shape(
        self, params: NumericSummaryParameters, node: str, result: results.SummarisedResult
    ) -> None:
        """The moments first, then histogram spans tiling the grid (or no histogram)."""
        group = ("concept_set_name", params.name)
        keys = [row.key() for row in result.rows]
        expected = [(*group, results.OVERALL, results.OVERALL, VALUE, "", n) for n in MOMENTS]
        spans = sorted(node_histogram(result))
        histogram_keys = [
            (*group, results.OVERALL, results.OVERALL, HISTOGRAM, span_level(*span), "count")
            for span in spans
        ]
        if keys != expected + histogram_keys or (spans and not _tiles(spans, -1, params.bins)):
            raise results.InvalidNodeResultError(
                f"{self.ref()}: result of node {node!r} does not hold the moments and a "
                "histogram on these parameters' grid"
            )

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return results.summarised_table(aggregate)


def _tiles(spans: Sequence[tuple[int, int]], first: int, last: int) -> bool:
    expected = first
    for start, end in spans:
        if start != expected or end < start:
            return False
        expected = end + 1
    return expected == last + 1
