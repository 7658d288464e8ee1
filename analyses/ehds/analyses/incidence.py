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

Meta-analysis, beside the pooled overall rate: each node's overall rate and a DerSimonian-Laird
random-effects summary of the log rates (`ehds.analyses.meta`), in the document's
``meta_analysis`` section and as rows of place ``random_effects``. The variance of a node's log
rate is ``1 / events`` (Poisson), plus, for noisy results, the noise variance of its summed
events and person-days by the delta method (``cells x scale**2 / total**2`` each). A node is
left out, and named with the reason, when its overall events are 0 or when any of its event or
person-day cells was suppressed (its overall rate would be a biased lower bound).

Differential privacy (parameter ``privacy``, see `ehds.analyses.privacy`), only with
``outcome_washout: all_history``. Contributions are bounded inside the engine so that the
sensitivities hold whatever the data (overlapping observation periods or cohort entries
included): per person and calendar year (one cell, since sex and age band are fixed within a
year) person-days are clipped at 366 and events at 1, and only the person's first year with an
event keeps it (at most one event per person). With Y study years, adding or removing one
person changes the vectors by at most L2 = 1 (events), sqrt(Y) (persons) and 366 sqrt(Y)
(person-days). The request's ``rho`` is split in three equal shares, one per vector. The noisy
counts are clamped at 0 and then suppressed as above, on the noisy values; the result carries
a ``privacy`` block, and the pooled document's ``privacy`` section says every pooled value is
noisy and gives each node's epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Final, Literal

import ibis
import ibis.expr.types as ir
from pydantic import AfterValidator, Field, ValidationError, model_validator
from scipy.stats import chi2

from ehds.analyses import results
from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.disclosure import suppress
from ehds.analyses.engine import IbisCdm
from ehds.analyses.meta import dersimonian_laird
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
    study_years,
    with_person_strata,
    years_table,
)
from ehds.analyses.privacy import (
    CountVector,
    NoisyRelease,
    PrivacyRequest,
    ReleasedPrivacy,
    encode_without_unset_privacy,
    node_privacy_summary,
    privacy_mismatch,
    release,
)
from ehds.federation.model import TaskStage

PER_PERSON_YEARS: Final = 1000.0
VARIABLE: Final = "incidence"
CELL_STRATA: Final = "calendar_year &&& sex &&& age_group"
EVENTS: Final = "events"
PERSON_DAYS: Final = "person_days"
PERSONS: Final = "person_count"
RANDOM_EFFECTS: Final = "random_effects"
"""The place (``cdm_name``) of the meta-analysis rows."""
MAX_DAYS_IN_YEAR: Final = 366
"""The per person and cell clip of person-days under differential privacy."""

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
    privacy: PrivacyRequest | None = None

    @model_validator(mode="after")
    def _period(self) -> IncidenceParameters:
        if self.end < self.start:
            raise ValueError("end is before start")
        if self.end.year - self.start.year >= MAX_STUDY_YEARS:
            raise ValueError(f"the study period spans more than {MAX_STUDY_YEARS} years")
        if self.privacy is not None and self.outcome_washout != "all_history":
            raise ValueError(
                "privacy needs outcome_washout all_history (at most one event per person, "
                "which the noise is calibrated to)"
            )
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


def person_segments(
    engine: IbisCdm,
    params: IncidenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """``person_id, year, days, event, sex, age_band``: each at-risk interval cut by calendar
    year (``event`` 1 if its outcome falls in the segment)."""
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
    return with_person_strata(segments, engine, params.age_band_edges)


def incidence_cells(
    engine: IbisCdm,
    params: IncidenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """``year, sex, age_band, events, person_days, persons``: the grouped cells."""
    stratified = person_segments(engine, params, outcome, denominator)
    return stratified.group_by(["year", "sex", "age_band"]).agg(
        events=stratified.event.sum(),
        person_days=stratified.days.sum(),
        persons=stratified.person_id.nunique(),
    )


def bounded_incidence_cells(
    engine: IbisCdm,
    params: IncidenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """The cells of `incidence_cells` with each person's contribution bounded for
    differential privacy: per person and year at most 366 days and one event, and one event
    per person in all (the first year holding one). Equal to `incidence_cells` on clean data
    (non-overlapping observation periods, all-history washout)."""
    segments = person_segments(engine, params, outcome, denominator)
    per_year = segments.group_by(["person_id", "year", "sex", "age_band"]).agg(
        days=ibis.least(segments.days.sum(), MAX_DAYS_IN_YEAR),
        event=ibis.least(segments.event.sum(), 1),
    )
    first_event_year = (
        ibis.ifelse(per_year.event > 0, per_year.year, ibis.null("int64"))
        .min()
        .over(ibis.window(group_by=per_year.person_id))
    )
    bounded = per_year.mutate(first_event_year=first_event_year)
    bounded = bounded.mutate(
        event=ibis.ifelse(bounded.year == bounded.first_event_year, 1, 0),
    )
    return bounded.group_by(["year", "sex", "age_band"]).agg(
        events=bounded.event.sum(),
        person_days=bounded.days.sum(),
        persons=bounded.count(),
    )


def dp_sensitivities(params: IncidenceParameters) -> dict[str, float]:
    """L2 sensitivity of each released vector under `bounded_incidence_cells`: one person is
    in at most one cell per study year (Y years), with at most one event in all."""
    years = len(study_years(params.start, params.end))
    return {
        EVENTS: 1.0,
        PERSONS: math.sqrt(years),
        PERSON_DAYS: MAX_DAYS_IN_YEAR * math.sqrt(years),
    }


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


CellCounts = dict[Cell, tuple[int, int, int]]
"""Per cell: (events, person_days, persons)."""


def grid_counts(params: IncidenceParameters, grouped: Sequence[Mapping[str, Any]]) -> CellCounts:
    """Every cell of the grid (zeros included) with its exact counts."""
    found = {
        (int(r["year"]), str(r["sex"]), str(r["age_band"])): (
            int(r["events"] or 0),
            int(r["person_days"] or 0),
            int(r["persons"] or 0),
        )
        for r in grouped
    }
    grid = strata_grid(params.start, params.end, params.age_band_edges)
    return {cell: found.get(cell, (0, 0, 0)) for cell in grid}


def noisy_counts(
    params: IncidenceParameters, exact: CellCounts, ctx: ComputeContext
) -> tuple[CellCounts, NoisyRelease]:
    """The grid's counts with OpenDP's noise (clamped at 0), the ledger charged first: three
    vectors, a third of rho each, at the sensitivities of `dp_sensitivities`."""
    assert params.privacy is not None
    cells = list(exact)
    sensitivity = dp_sensitivities(params)
    vectors = [
        CountVector(name, [exact[c][i] for c in cells], sensitivity[name], share=1 / 3)
        for i, name in enumerate((EVENTS, PERSON_DAYS, PERSONS))
    ]
    noisy = release(params.privacy, ctx.require_privacy(), vectors)
    values = [noisy.vectors[name].values for name in (EVENTS, PERSON_DAYS, PERSONS)]
    table = {cell: (values[0][i], values[1][i], values[2][i]) for i, cell in enumerate(cells)}
    return table, noisy


def release_rows(
    params: IncidenceParameters, grouped: Sequence[Mapping[str, Any]], threshold: int
) -> list[results.Row]:
    """Every cell of the grid (zeros included), disclosure applied."""
    return released_rows(params, grid_counts(params, grouped), threshold)


def released_rows(
    params: IncidenceParameters, table: CellCounts, threshold: int
) -> list[results.Row]:
    """The rows of ``table`` (exact or noisy counts), disclosure applied to those values."""
    grid = list(table)
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


PRIVACY: Final = "privacy"


def split_privacy(
    analysis: object, params: IncidenceParameters, node_results: Mapping[str, JsonObject]
) -> tuple[dict[str, ReleasedPrivacy], dict[str, JsonObject]]:
    """Each node's ``privacy`` block (checked against the request) and the rest of its result
    (a summarised result, validated as any other)."""
    privacy: dict[str, ReleasedPrivacy] = {}
    plain: dict[str, JsonObject] = {}
    for node in sorted(node_results):
        result = dict(node_results[node])
        raw = result.pop(PRIVACY, None)
        where = f"{analysis}: result of node {node!r}"
        block = None
        if raw is not None:
            try:
                block = ReleasedPrivacy.model_validate(raw)
            except ValidationError:
                raise results.InvalidNodeResultError(
                    f"{where} has a malformed privacy block"
                ) from None
            privacy[node] = block
        problem = privacy_mismatch(block, params.privacy)
        if problem is not None:
            raise results.InvalidNodeResultError(f"{where} {problem}")
        plain[node] = result
    return privacy, plain


def _overall(cells: CellValues) -> tuple[int, int, int, int, bool]:
    """A node's summed events and person-days, how many cells were summed for each, and
    whether any of them was suppressed."""
    totals = {EVENTS: 0, PERSON_DAYS: 0}
    summed = {EVENTS: 0, PERSON_DAYS: 0}
    incomplete = False
    for estimates in cells.values():
        for name, (value, missing) in estimates.items():
            if value is None or missing:
                incomplete = True
            if value is not None:
                totals[name] += value
                summed[name] += 1
    return totals[EVENTS], totals[PERSON_DAYS], summed[EVENTS], summed[PERSON_DAYS], incomplete


def meta_analysis(
    params: IncidenceParameters,
    per_node: Mapping[str, CellValues],
    privacy: Mapping[str, ReleasedPrivacy],
) -> JsonObject:
    """Each node's overall rate and the DerSimonian-Laird summary of the log rates.

    Variance of a log rate: ``1 / events``; for a noisy result plus the delta-method noise
    term of each sum (``cells x scale**2 / total**2``). Nodes with no events, or with a
    suppressed cell, are left out and named in ``excluded``."""
    nodes: dict[str, JsonObject] = {}
    excluded: dict[str, str] = {}
    estimates: dict[str, float] = {}
    variances: dict[str, float] = {}
    for node in sorted(per_node):
        events, days, event_cells, day_cells, incomplete = _overall(per_node[node])
        if incomplete:
            excluded[node] = "a cell was suppressed (its overall rate is a lower bound)"
            continue
        if events == 0 or days == 0:
            excluded[node] = "no events" if events == 0 else "no person-time"
            continue
        person_years = days / DAYS_PER_YEAR
        rate = events / person_years * PER_PERSON_YEARS
        variance = 1.0 / events
        block = privacy.get(node)
        if block is not None:
            variance += event_cells * block.vectors[EVENTS]["scale"] ** 2 / events**2
            variance += day_cells * block.vectors[PERSON_DAYS]["scale"] ** 2 / days**2
        nodes[node] = {
            "events": events,
            "person_years": person_years,
            "incidence_1000_pys": rate,
            "log_rate": math.log(rate),
            "variance": variance,
        }
        estimates[node] = math.log(rate)
        variances[node] = variance
    summary = dersimonian_laird(estimates, variances, confidence=params.confidence)
    section: JsonObject = {
        "measure": "log incidence rate per 1,000 person-years",
        "nodes": nodes,
        "excluded": excluded,
        "random_effects": None if summary is None else summary.as_json(),
    }
    if summary is not None:
        section["incidence_1000_pys"] = math.exp(summary.estimate)
        section["incidence_1000_pys_ci_lower"] = math.exp(summary.ci_lower)
        section["incidence_1000_pys_ci_upper"] = math.exp(summary.ci_upper)
    return section


def meta_rows(params: IncidenceParameters, meta: JsonObject) -> list[results.Row]:
    """The random-effects rate and its interval as rows (place ``random_effects``, overall),
    with the heterogeneity figures; none with fewer than two nodes."""
    summary = meta.get("random_effects")
    if summary is None:
        return []
    values = (
        ("incidence_1000_pys", meta["incidence_1000_pys"]),
        ("incidence_1000_pys_ci_lower", meta["incidence_1000_pys_ci_lower"]),
        ("incidence_1000_pys_ci_upper", meta["incidence_1000_pys_ci_upper"]),
        ("i2", summary["i2"]),
        ("tau2", summary["tau2"]),
        ("q_p_value", summary["q_p_value"]),
    )
    return [
        results.make_row(
            VARIABLE,
            name,
            float(value),
            estimate_type="numeric",
            group=group_of(params),
            cdm_name=RANDOM_EFFECTS,
        )
        for name, value in values
    ]


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
                # The same population with or without noise: one fingerprint.
                fingerprint=population_fingerprint(
                    self.name, params.model_copy(update={"privacy": None})
                ),
            )
            ctx.check_cancelled()
            cells = len(strata_grid(params.start, params.end, params.age_band_edges))
            query = bounded_incidence_cells if params.privacy else incidence_cells
            grouped = engine.collect(query(engine, params, outcome, denominator), max_rows=cells)
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        table = grid_counts(params, grouped)
        noisy: NoisyRelease | None = None
        if params.privacy is not None:
            table, noisy = noisy_counts(params, table, ctx)
        rows = released_rows(params, table, ctx.min_cell_count)
        document = results.SummarisedResult(min_cell_count=ctx.min_cell_count, rows=rows)
        released = document.to_json()
        if noisy is not None:
            released[PRIVACY] = noisy.as_json()
        return released

    def aggregate(
        self, params: IncidenceParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        privacy, plain = split_privacy(self.ref(), params, node_results)
        released = results.validated_results(self.ref(), plain)
        check_keys(self.ref(), released, expected_keys(params))
        rows: list[results.Row] = []
        per_node: dict[str, CellValues] = {}
        for node, result in released.items():
            labelled = results.label_rows(node, result)
            rows.extend(labelled)
            per_node[node] = cell_values(labelled, node)
            rows.extend(derived_rows(params, node, per_node[node], pooled=False))
        pooled = results.pool_additive(released)
        rows.extend(pooled)
        rows.extend(derived_rows(params, results.POOLED, cell_values(pooled, None), pooled=True))
        meta = meta_analysis(params, per_node, privacy)
        rows.extend(meta_rows(params, meta))
        document = results.summarised_document(released, rows)
        document["meta_analysis"] = meta
        if params.privacy is not None:
            document[PRIVACY] = node_privacy_summary(privacy)
        return document

    def encode_parameters(self, params: IncidenceParameters) -> bytes:
        """Without ``privacy`` when it is not requested: a study without differential privacy
        travels as the same bytes as before the parameter existed."""
        return encode_without_unset_privacy(params)

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return results.summarised_table(aggregate)


__all__ = [
    "Incidence",
    "IncidenceParameters",
    "at_risk_intervals",
    "band_labels",
    "bounded_incidence_cells",
    "incidence_cells",
    "meta_analysis",
    "rate_interval",
]
