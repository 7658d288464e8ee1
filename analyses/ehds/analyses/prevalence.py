"""Period prevalence per calendar year, by sex and age band, with exact (Clopper-Pearson)
intervals.

Node side (:meth:`Prevalence.compute`): one Ibis expression inside the node's engine; Python
sees one row per (year, sex, age band). Definitions (the unit tests' independent reference
follows these words; person-time conventions are those of `ehds.analyses.person_time`):

* A calendar year is cut to the study period ``[start, end]``.
* Denominator of a year: the persons observed at least one day in it (optionally only during
  an entry of the ``denominator`` cohort).
* Numerator: those of them with an entry of the ``outcome`` cohort overlapping the year
  (``cohort_start_date <= year end`` and ``cohort_end_date >= year start``).
* Sex and age band (``year - year_of_birth``) as in incidence.

Released per (year, sex, age band) cell: ``denominator_count`` and ``outcome_count``.
Disclosure control: a denominator from 1 to threshold-1 suppresses the cell; an outcome count
from 1 to threshold-1 is suppressed. No margins are released (the coordinator adds cells up;
a person counts once per year, so cells of one year add up to the year's margin, but persons
are never added across years).

Known limit: a cell in which nearly everybody has the outcome discloses the complement
(``denominator - outcome``) for a small number of persons without the outcome; as in the
OHDSI IncidencePrevalence package, that complement is not suppressed.

Coordinator side (:meth:`Prevalence.aggregate`): for each node and pooled, cells and margins
(overall per year is not defined: prevalence is per year; the margins are year, year x sex and
year x age band), the proportion and its Clopper-Pearson interval from
``scipy.stats.beta``. Pooled values built from a suppressed node cell are ``complete: false``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Annotated, Any, Final

import ibis.expr.types as ir
from pydantic import AfterValidator, Field, model_validator
from scipy.stats import beta

from ehds.analyses import results
from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.disclosure import suppress
from ehds.analyses.engine import IbisCdm
from ehds.analyses.person_time import (
    MAX_STUDY_YEARS,
    check_age_edges,
    check_keys,
    cohort_table,
    observed_intervals,
    population_fingerprint,
    strata_grid,
    with_person_strata,
    years_table,
)
from ehds.federation.model import TaskStage

VARIABLE: Final = "prevalence"
CELL_STRATA: Final = "calendar_year &&& sex &&& age_group"
DENOMINATOR: Final = "denominator_count"
OUTCOME: Final = "outcome_count"

Date = Annotated[date, Field(strict=False)]
Cell = tuple[int, str, str]


class PrevalenceParameters(AnalysisParameters):
    outcome: CohortSpec
    denominator: CohortSpec | None = None
    start: Date
    end: Date
    age_band_edges: Annotated[list[int], AfterValidator(check_age_edges)] = Field(
        default_factory=lambda: [0, 18, 45, 65]
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _period(self) -> PrevalenceParameters:
        if self.end < self.start:
            raise ValueError("end is before start")
        if self.end.year - self.start.year >= MAX_STUDY_YEARS:
            raise ValueError(f"the study period spans more than {MAX_STUDY_YEARS} years")
        return self


# --------------------------------------------------------------------------- node side


def observed_person_years(
    engine: IbisCdm, params: PrevalenceParameters, denominator: ir.Table | None
) -> ir.Table:
    """``person_id, year``: persons observed at least one day in each study year."""
    intervals = observed_intervals(engine, start=params.start, end=params.end, cohort=denominator)
    years = years_table(params.start, params.end)
    joined = intervals.join(
        years,
        [years.year_start <= intervals.interval_end, years.year_end >= intervals.interval_start],
    )
    return joined.select(person_id=joined.person_id, year=joined.year).distinct()


def prevalence_cells(
    engine: IbisCdm,
    params: PrevalenceParameters,
    outcome: ir.Table,
    denominator: ir.Table | None,
) -> ir.Table:
    """``year, sex, age_band, denominator, outcome``: the grouped cells."""
    observed = observed_person_years(engine, params, denominator)
    years = years_table(params.start, params.end)
    entries = outcome.select(
        o_person_id=outcome.person_id.cast("int64"),
        o_start=outcome.cohort_start_date,
        o_end=outcome.cohort_end_date,
    )
    with_outcome = entries.join(
        years, [entries.o_start <= years.year_end, entries.o_end >= years.year_start]
    )
    cases = with_outcome.select(
        o_person_id=with_outcome.o_person_id, o_year=with_outcome.year
    ).distinct()
    flagged = observed.left_join(
        cases, [observed.person_id == cases.o_person_id, observed.year == cases.o_year]
    )
    flagged = flagged.select(
        person_id=flagged.person_id,
        year=flagged.year,
        case=flagged.o_person_id.notnull().ifelse(1, 0),
    )
    stratified = with_person_strata(flagged, engine, params.age_band_edges)
    return stratified.group_by(["year", "sex", "age_band"]).agg(
        denominator=stratified.count(), outcome=stratified.case.sum()
    )


# --------------------------------------------------------------------------- coordinator


def proportion_interval(cases: int, total: int, confidence: float) -> tuple[float, float]:
    """Exact Clopper-Pearson interval of ``cases / total``."""
    alpha = 1.0 - confidence
    lower = 0.0 if cases == 0 else float(beta.ppf(alpha / 2, cases, total - cases + 1))
    upper = 1.0 if cases == total else float(beta.ppf(1 - alpha / 2, cases + 1, total - cases))
    return lower, upper


def group_of(params: PrevalenceParameters) -> tuple[str, str]:
    if params.denominator is None:
        return "outcome_cohort_name", params.outcome.name
    return (
        "denominator_cohort_name &&& outcome_cohort_name",
        f"{params.denominator.name} &&& {params.outcome.name}",
    )


def cell_level(cell: Cell) -> str:
    return f"{cell[0]} &&& {cell[1]} &&& {cell[2]}"


def release_rows(
    params: PrevalenceParameters, grouped: Sequence[Mapping[str, Any]], threshold: int
) -> list[results.Row]:
    found = {
        (int(r["year"]), str(r["sex"]), str(r["age_band"])): (
            int(r["denominator"] or 0),
            int(r["outcome"] or 0),
        )
        for r in grouped
    }
    grid = strata_grid(params.start, params.end, params.age_band_edges)
    table = {cell: found.get(cell, (0, 0)) for cell in grid}
    small_cells = suppress({cell: v[0] for cell, v in table.items()}, threshold)
    small_cases = suppress({cell: v[1] for cell, v in table.items()}, threshold)
    # The persons without the outcome are a cell too (denominator minus cases): "all but 2
    # persons have the condition" discloses those 2 as surely as a released 2 would.
    small_rest = suppress({cell: v[0] - v[1] for cell, v in table.items()}, threshold)
    group = group_of(params)
    rows: list[results.Row] = []
    for cell in grid:
        total, cases = table[cell]
        for name, value, hide in (
            (DENOMINATOR, total, cell in small_cells),
            (OUTCOME, cases, cell in small_cells or cell in small_cases or cell in small_rest),
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


def expected_keys(params: PrevalenceParameters) -> list[results.RowKey]:
    group = group_of(params)
    return [
        (*group, CELL_STRATA, cell_level(cell), VARIABLE, "", name)
        for cell in strata_grid(params.start, params.end, params.age_band_edges)
        for name in (DENOMINATOR, OUTCOME)
    ]


MARGINS: Final = (
    (CELL_STRATA, (0, 1, 2)),
    ("calendar_year", (0,)),
    ("calendar_year &&& sex", (0, 1)),
    ("calendar_year &&& age_group", (0, 2)),
)
"""Stratifications derived by the coordinator: (strata_name, positions in the cell key)."""


def derived_rows(
    params: PrevalenceParameters, place: str, rows: Sequence[results.Row], *, pooled: bool
) -> list[results.Row]:
    """Margins' counts and every stratum's proportion and interval at one place."""
    cells: dict[Cell, dict[str, Any]] = {}
    for row in rows:
        year, sex, band = row.strata_level.split(" &&& ")
        entry = cells.setdefault((int(year), sex, band), {"missing": set()})
        entry[row.estimate_name] = row.estimate_value
        if row.suppressed and not pooled:
            entry["missing"].add(place)
        entry["missing"].update(row.suppressed_at or ())
    group = group_of(params)
    derived: list[results.Row] = []
    for strata_name, positions in MARGINS:
        sums: dict[str, dict[str, Any]] = {}
        for cell, entry in cells.items():
            level = " &&& ".join(str(cell[p]) for p in positions)
            total = sums.setdefault(level, {DENOMINATOR: None, OUTCOME: None, "missing": set()})
            for name in (DENOMINATOR, OUTCOME):
                if entry.get(name) is not None:
                    total[name] = (total[name] or 0) + int(entry[name])
            total["missing"].update(entry["missing"])
        for level, total in sums.items():
            missing = sorted(total["missing"])
            flags: dict[str, Any] = {"complete": not missing, "suppressed_at": missing}
            if not pooled and not missing:
                flags = {}
            strata = (strata_name, level)
            n, k = total[DENOMINATOR], total[OUTCOME]
            if strata_name != CELL_STRATA:
                for name, value in ((DENOMINATOR, n), (OUTCOME, k)):
                    if value is not None:
                        derived.append(
                            results.make_row(
                                VARIABLE,
                                name,
                                value,
                                estimate_type="integer",
                                group=group,
                                strata=strata,
                                cdm_name=place,
                                **flags,
                            )
                        )
            if n is None or k is None or n == 0:
                continue
            lower, upper = proportion_interval(k, n, params.confidence)
            for name, value in (
                ("prevalence", k / n),
                ("prevalence_ci_lower", lower),
                ("prevalence_ci_upper", upper),
            ):
                derived.append(
                    results.make_row(
                        VARIABLE,
                        name,
                        value,
                        estimate_type="numeric",
                        group=group,
                        strata=strata,
                        cdm_name=place,
                        **flags,
                    )
                )
    return derived


class Prevalence(Analysis[PrevalenceParameters]):
    name = "prevalence"
    version = "1.0.0"
    parameters = PrevalenceParameters
    description = (
        "Period prevalence per calendar year, by sex and age band, with exact "
        "Clopper-Pearson intervals."
    )

    def compute(self, params: PrevalenceParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        with (
            cohort_table(engine, params.outcome) as outcome,
            cohort_table(engine, params.denominator) as denominator,
        ):
            assert outcome is not None  # a spec is always given
            ctx.check_population(
                observed_person_years(engine, params, denominator).select("person_id").distinct(),
                fingerprint=population_fingerprint(self.name, params),
            )
            ctx.check_cancelled()
            cells = len(strata_grid(params.start, params.end, params.age_band_edges))
            grouped = engine.collect(
                prevalence_cells(engine, params, outcome, denominator), max_rows=cells
            )
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        rows = release_rows(params, grouped, ctx.min_cell_count)
        return results.SummarisedResult(min_cell_count=ctx.min_cell_count, rows=rows).to_json()

    def aggregate(
        self, params: PrevalenceParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        released = results.validated_results(self.ref(), node_results)
        check_keys(self.ref(), released, expected_keys(params))
        rows: list[results.Row] = []
        for node, result in released.items():
            labelled = results.label_rows(node, result)
            rows.extend(labelled)
            rows.extend(derived_rows(params, node, labelled, pooled=False))
        pooled = results.pool_additive(released)
        rows.extend(pooled)
        rows.extend(derived_rows(params, results.POOLED, pooled, pooled=True))
        return results.summarised_document(released, rows)

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return results.summarised_table(aggregate)
