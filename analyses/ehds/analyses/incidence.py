"""Incidence rates per 1,000 person-years, by calendar year, sex and age band.

Node side (:meth:`Incidence.compute`): one Ibis expression, run inside the node's engine, turns
observation periods into at-risk intervals, finds each interval's first outcome, cuts the
intervals by calendar year and groups them; Python sees one row per (year, sex, age band).

Who is at risk, and when (the unit tests' independent reference follows these words):

* Time at risk runs through each observation period, from ``washout_days`` after its start
  (prior observation a person needs), cut to the study period ``[start, end]``; with a
  ``denominator`` cohort only the time inside the person's cohort entries counts.
* The outcome is an entry of the ``outcome`` cohort; its date is the entry's start.
* A person with an outcome before the start of an at-risk interval is not at risk in it:
  ``outcome_washout: "all_history"`` looks at the whole history (the outcome is then the
  person's *first* ever), a number of days looks back that far only (a person may then be at
  risk again in a later observation period, after a clean look-back).
* The interval ends at the first outcome in it (the event day is counted), at the end of
  observation, or at the study end. Days are counted inclusively; person-years = days / 365.25.
* An interval is split by calendar year; the age band in a year is ``year - year_of_birth``.

Released per (year, sex, age band) cell: ``events``, ``person_days`` and ``persons`` (persons
contributing time to the cell). Disclosure control before release:

* ``persons`` from 1 to threshold-1: every estimate of the cell is suppressed (the
  person-days of two persons would describe them).
* ``events`` from 1 to threshold-1: the events are suppressed.
* No margins (overall, per year...) are released by the node: the coordinator adds the cells
  up, so a suppressed cell cannot be recomputed from a released total. A person contributes to
  several years, so persons are never summed across cells.

Coordinator side (:meth:`Incidence.aggregate`): for each node and pooled (the node partitions
are disjoint, so events and person-days add up), over the cells and their margins (overall,
year, sex, age band): rate = events / person-years x 1000, with the exact Poisson interval
(Garwood): ``chi2.ppf(a/2, 2k)/2`` and ``chi2.ppf(1-a/2, 2k+2)/2`` events. A pooled value
built from a suppressed node cell is flagged ``complete: false`` (a lower bound).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Final, Literal

import ibis
import ibis.expr.types as ir
from pydantic import AfterValidator, Field, model_validator
from scipy.stats import chi2

from ehds.analyses import results
from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.disclosure import suppress
from ehds.analyses.engine import IbisCdm
from ehds.analyses.person_time import (
    DAYS_PER_YEAR,
    MAX_STUDY_YEARS,
    add_days,
    band_labels,
    check_age_edges,
    check_keys,
    cohort_table,
    inclusive_days,
    observed_intervals,
    population_fingerprint,
    strata_grid,
    with_person_strata,
    years_table,
)
from ehds.federation.model import TaskStage

PER_PERSON_YEARS: Final = 1000.0
VARIABLE: Final = "incidence"
CELL_STRATA: Final = "calendar_year &&& sex &&& age_group"
EVENTS: Final = "events"
PERSON_DAYS: Final = "person_days"
PERSONS: Final = "person_count"

Date = Annotated[date, Field(strict=False)]


class IncidenceParameters(AnalysisParameters):
    outcome: CohortSpec
    denominator: CohortSpec | None = None
    start: Date
    end: Date
    washout_days: int = Field(default=0, ge=0, le=36_500)
    outcome_washout: Literal["all_history"] | Annotated[int, Field(ge=0, le=36_500)] = "all_history"
    age_band_edges: Annotated[list[int], AfterValidator(check_age_edges)] = Field(
        default_factory=lambda: [0, 18, 45, 65]
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _period(self) -> IncidenceParameters:
        if self.end < self.start:
            raise ValueError("end is before start")
        if self.end.year - self.start.year >= MAX_STUDY_YEARS:
            raise ValueError(f"the study period spans more than {MAX_STUDY_YEARS} years")
        return self


# --------------------------------------------------------------------------- node side


def at_risk_intervals(
    engine: IbisCdm,
    params: IncidenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """``person_id, risk_start, risk_end, event_date``: at-risk intervals ending at their
    first outcome (``event_date`` null without one)."""
    intervals = observed_intervals(
        engine,
        start=params.start,
        end=params.end,
        washout_days=params.washout_days,
        cohort=denominator,
    ).rename(risk_start="interval_start", risk_end="interval_end")
    events = outcome.select(
        o_person_id=outcome.person_id.cast("int64"), o_date=outcome.cohort_start_date
    )
    prior = [
        intervals.person_id == events.o_person_id,
        events.o_date < intervals.risk_start,
    ]
    if params.outcome_washout != "all_history":
        prior.append(events.o_date >= add_days(intervals.risk_start, -params.outcome_washout))
    at_risk = intervals.anti_join(events, prior)
    later = events.view()
    joined = at_risk.left_join(
        later,
        [
            at_risk.person_id == later.o_person_id,
            later.o_date >= at_risk.risk_start,
            later.o_date <= at_risk.risk_end,
        ],
    )
    first = joined.group_by(["person_id", "risk_start", "risk_end"]).agg(
        event_date=joined.o_date.min()
    )
    return first.mutate(risk_end=first.event_date.fill_null(first.risk_end))


def incidence_cells(
    engine: IbisCdm,
    params: IncidenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """``year, sex, age_band, events, person_days, persons``: the grouped cells."""
    intervals = at_risk_intervals(engine, params, outcome, denominator)
    years = years_table(params.start, params.end)
    split = intervals.join(
        years,
        [years.year_start <= intervals.risk_end, years.year_end >= intervals.risk_start],
    )
    segment_start = ibis.greatest(split.risk_start, split.year_start)
    segment_end = ibis.least(split.risk_end, split.year_end)
    segments = split.select(
        person_id=split.person_id,
        year=split.year,
        days=inclusive_days(segment_start, segment_end),
        event=ibis.ifelse(
            split.event_date.notnull()
            & (split.event_date >= segment_start)
            & (split.event_date <= segment_end),
            1,
            0,
        ),
    )
    stratified = with_person_strata(segments, engine, params.age_band_edges)
    return stratified.group_by(["year", "sex", "age_band"]).agg(
        events=stratified.event.sum(),
        person_days=stratified.days.sum(),
        persons=stratified.person_id.nunique(),
    )


def contributing_persons(
    engine: IbisCdm,
    params: IncidenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """The persons the result describes (one column ``person_id``), for the release guard."""
    return at_risk_intervals(engine, params, outcome, denominator).select("person_id").distinct()


# --------------------------------------------------------------------------- coordinator


def rate_interval(events: int, person_days: float, confidence: float) -> tuple[float, float]:
    """Exact (Garwood) Poisson interval of a rate per 1,000 person-years."""
    alpha = 1.0 - confidence
    person_years = person_days / DAYS_PER_YEAR
    lower = 0.0 if events == 0 else float(chi2.ppf(alpha / 2, 2 * events)) / 2
    upper = float(chi2.ppf(1 - alpha / 2, 2 * events + 2)) / 2
    return lower / person_years * PER_PERSON_YEARS, upper / person_years * PER_PERSON_YEARS


def group_of(params: IncidenceParameters) -> tuple[str, str]:
    """``(group_name, group_level)``: the outcome cohort, and the denominator cohort if any."""
    if params.denominator is None:
        return "outcome_cohort_name", params.outcome.name
    return (
        "denominator_cohort_name &&& outcome_cohort_name",
        f"{params.denominator.name} &&& {params.outcome.name}",
    )


Cell = tuple[int, str, str]
"""(calendar year, sex, age band)."""


def cell_level(cell: Cell) -> str:
    year, sex, band = cell
    return f"{year} &&& {sex} &&& {band}"


def release_rows(
    params: IncidenceParameters, grouped: Sequence[Mapping[str, Any]], threshold: int
) -> list[results.Row]:
    """Every cell of the grid (zeros included), disclosure applied."""
    found = {
        (int(r["year"]), str(r["sex"]), str(r["age_band"])): (
            int(r["events"] or 0),
            int(r["person_days"] or 0),
            int(r["persons"] or 0),
        )
        for r in grouped
    }
    grid = strata_grid(params.start, params.end, params.age_band_edges)
    table = {cell: found.get(cell, (0, 0, 0)) for cell in grid}
    small_cells = suppress({cell: v[2] for cell, v in table.items()}, threshold)
    small_events = suppress({cell: v[0] for cell, v in table.items()}, threshold)
    group = group_of(params)
    rows: list[results.Row] = []
    for cell in grid:
        events, person_days, persons = table[cell]
        hidden = cell in small_cells
        for name, value, hide in (
            (EVENTS, events, hidden or cell in small_events),
            (PERSON_DAYS, person_days, hidden),
            (PERSONS, persons, hidden),
        ):
            rows.append(
                results.make_row(
                    VARIABLE,
                    name,
                    None if hide else value,
                    estimate_type="integer",
                    group=group,
                    strata=(CELL_STRATA, cell_level(cell)),
                    suppressed=hide,
                )
            )
    return rows


def expected_keys(params: IncidenceParameters) -> list[results.RowKey]:
    group = group_of(params)
    return [
        (*group, CELL_STRATA, cell_level(cell), VARIABLE, "", name)
        for cell in strata_grid(params.start, params.end, params.age_band_edges)
        for name in (EVENTS, PERSON_DAYS, PERSONS)
    ]


@dataclass
class _Part:
    """One estimate summed over cells at one place: ``known`` once a value was added,
    ``missing``: the nodes whose suppressed value is left out (the sum is a lower bound)."""

    value: int = 0
    known: bool = False
    missing: set[str] = field(default_factory=set)

    def add(self, value: int | None, missing: Sequence[str]) -> None:
        if value is not None:
            self.value += value
            self.known = True
        self.missing.update(missing)

    def flags(self, *, pooled: bool) -> dict[str, Any]:
        if not pooled and not self.missing:
            return {}
        return {"complete": not self.missing, "suppressed_at": sorted(self.missing)}


MARGINS: Final = (
    (CELL_STRATA, (0, 1, 2)),
    (results.OVERALL, ()),
    ("calendar_year", (0,)),
    ("sex", (1,)),
    ("age_group", (2,)),
)
"""The stratifications the coordinator reports: ``(strata_name, positions of the cell key
that define the level)``; the cells themselves, then margins summed from them."""

CellValues = dict[Cell, dict[str, tuple[int | None, list[str]]]]
"""Per cell and estimate (events, person_days): the value (None if suppressed everywhere) and
the nodes where it was suppressed."""


def derived_rows(
    params: IncidenceParameters, place: str, cells: CellValues, *, pooled: bool
) -> list[results.Row]:
    """Margins' events and person-days, and every stratum's person-years, rate and interval,
    at one place."""
    group = group_of(params)
    rows: list[results.Row] = []

    def row(strata: tuple[str, str], name: str, value: float, flags: dict[str, Any]) -> None:
        rows.append(
            results.make_row(
                VARIABLE,
                name,
                value,
                estimate_type="integer" if isinstance(value, int) else "numeric",
                group=group,
                strata=strata,
                cdm_name=place,
                **flags,
            )
        )

    for strata_name, positions in MARGINS:
        sums: dict[str, dict[str, _Part]] = {}
        for cell, estimates in cells.items():
            level = " &&& ".join(str(cell[p]) for p in positions) or results.OVERALL
            parts = sums.setdefault(level, {EVENTS: _Part(), PERSON_DAYS: _Part()})
            for name, (value, missing) in estimates.items():
                parts[name].add(value, missing)
        for level, parts in sums.items():
            strata = (strata_name, level)
            events, days = parts[EVENTS], parts[PERSON_DAYS]
            if strata_name != CELL_STRATA:
                for name, part in parts.items():
                    if part.known:
                        row(strata, name, part.value, part.flags(pooled=pooled))
            if not (events.known and days.known) or days.value == 0:
                continue
            both = _Part(missing=events.missing | days.missing).flags(pooled=pooled)
            lower, upper = rate_interval(events.value, days.value, params.confidence)
            person_years = days.value / DAYS_PER_YEAR
            row(strata, "person_years", person_years, days.flags(pooled=pooled))
            row(strata, "incidence_1000_pys", events.value / person_years * PER_PERSON_YEARS, both)
            row(strata, "incidence_1000_pys_ci_lower", lower, both)
            row(strata, "incidence_1000_pys_ci_upper", upper, both)
    return rows


def cell_values(rows: Sequence[results.Row], node: str | None) -> CellValues:
    """Events and person-days per cell from a node's released rows (``node``: its name) or
    from pooled rows (``node`` None: ``suppressed_at`` says where values are missing)."""
    values: CellValues = {}
    for row in rows:
        if row.estimate_name not in (EVENTS, PERSON_DAYS):
            continue
        year, sex, band = row.strata_level.split(" &&& ")
        value = None if row.estimate_value is None else int(row.estimate_value)
        missing = list(row.suppressed_at or ())
        if node is not None and row.suppressed:
            missing.append(node)
        values.setdefault((int(year), sex, band), {})[row.estimate_name] = (value, missing)
    return values


class Incidence(Analysis[IncidenceParameters]):
    name = "incidence"
    version = "1.0.0"
    parameters = IncidenceParameters
    description = (
        "Incidence rates per 1,000 person-years with exact Poisson intervals, by calendar "
        "year, sex and age band; person-time from observation periods after a washout."
    )

    def compute(self, params: IncidenceParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        with (
            cohort_table(engine, params.outcome) as outcome,
            cohort_table(engine, params.denominator) as denominator,
        ):
            assert outcome is not None  # a spec is always given
            ctx.check_population(
                contributing_persons(engine, params, outcome, denominator),
                fingerprint=population_fingerprint(self.name, params),
            )
            ctx.check_cancelled()
            cells = len(strata_grid(params.start, params.end, params.age_band_edges))
            grouped = engine.collect(
                incidence_cells(engine, params, outcome, denominator), max_rows=cells
            )
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        rows = release_rows(params, grouped, ctx.min_cell_count)
        return results.SummarisedResult(min_cell_count=ctx.min_cell_count, rows=rows).to_json()

    def aggregate(
        self, params: IncidenceParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        released = results.validated_results(self.ref(), node_results)
        check_keys(self.ref(), released, expected_keys(params))
        rows: list[results.Row] = []
        for node, result in released.items():
            labelled = results.label_rows(node, result)
            rows.extend(labelled)
            rows.extend(derived_rows(params, node, cell_values(labelled, node), pooled=False))
        pooled = results.pool_additive(released)
        rows.extend(pooled)
        rows.extend(derived_rows(params, results.POOLED, cell_values(pooled, None), pooled=True))
        return results.summarised_document(released, rows)

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return results.summarised_table(aggregate)


__all__ = [
    "Incidence",
    "IncidenceParameters",
    "at_risk_intervals",
    "band_labels",
    "incidence_cells",
    "rate_interval",
]
