"""Person-time from observation periods, as Ibis expressions: the shared half of `incidence`
and `prevalence`.

Why here and not in each analysis: incidence and prevalence must agree on who is observed,
when, in which sex and age band, or a reader comparing the two tables compares different
populations. Everything is an Ibis expression compiled by the node's engine (DuckDB,
PostgreSQL, Spark); nothing here brings a row into Python.

Conventions (the unit tests' independent reference follows them, and so must a reader):

* Days are counted inclusively: an interval from 1 March to 1 March is one day.
* A calendar year is cut to the study period: in a study from 2015-07-01 the year 2015 runs
  from 1 July. The years table is a handful of literal rows (`ibis.memtable`), joined by range.
* Age in a calendar year is ``year - year_of_birth`` (OMOP often holds no birth day); ages
  below the first edge (an observation before birth, a data error) fall in the first band.
* Sex: OMOP's FEMALE (8532) and MALE (8507) concepts, every other gender concept pooled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any, Final

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from ehds.analyses import cohorts, results
from ehds.analyses.age_bands import band_labels, check_age_edges
from ehds.analyses.base import AnalysisParameters, canonical_json
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.engine import IbisCdm
from ehds.analyses.person_count import FEMALE_CONCEPT_ID, MALE_CONCEPT_ID, SEXES

MAX_STUDY_YEARS: Final = 100
DAYS_PER_YEAR: Final = 365.25

__all__ = [
    "DAYS_PER_YEAR",
    "SEXES",
    "age_band_label",
    "band_labels",
    "check_age_edges",
    "observed_intervals",
    "sex_label",
    "study_years",
    "years_table",
]


def age_band_label(age: ir.IntegerValue, edges: Sequence[int]) -> ir.StringValue:
    labels = band_labels(edges)
    if len(edges) == 1:
        return ibis.literal(labels[0])
    cases = [(age < hi, labels[index]) for index, hi in enumerate(edges[1:])]
    return ibis.cases(*cases, else_=labels[-1])


def sex_label(gender_concept_id: ir.IntegerValue) -> ir.StringValue:
    return ibis.cases(
        (gender_concept_id == FEMALE_CONCEPT_ID, "FEMALE"),
        (gender_concept_id == MALE_CONCEPT_ID, "MALE"),
        else_="OTHER/UNKNOWN",
    )


def study_years(start: date, end: date) -> list[int]:
    return list(range(start.year, end.year + 1))


def years_table(start: date, end: date) -> ir.Table:
    """One row per calendar year of the study: ``year``, ``year_start``, ``year_end`` (dates,
    cut to the study period). A literal table: the engine joins it by range."""
    years = study_years(start, end)
    return ibis.memtable(
        pa.table(
            {
                "year": pa.array(years, pa.int64()),
                "year_start": pa.array([max(date(y, 1, 1), start) for y in years], pa.date32()),
                "year_end": pa.array([min(date(y, 12, 31), end) for y in years], pa.date32()),
            }
        )
    )


def add_days(value: ir.DateValue, days: int) -> ir.DateValue:
    """``value + days`` as a DATE on every engine (PostgreSQL's date + interval is a
    timestamp, hence the cast)."""
    if days == 0:
        return value
    return (value + ibis.interval(days=days)).cast("date")


def inclusive_days(first: ir.DateValue, last: ir.DateValue) -> ir.IntegerValue:
    """Days from ``first`` to ``last``, both counted."""
    return last.delta(first, unit="day") + 1


def observed_intervals(
    engine: IbisCdm,
    *,
    start: date,
    end: date,
    washout_days: int = 0,
    cohort: ir.Table | None = None,
) -> ir.Table:
    """``person_id, interval_start, interval_end``: observation cut to the study period.

    ``washout_days``: observation starts counting that many days after the start of each
    observation period (a person needs that much prior observation). ``cohort`` (columns
    ``person_id, cohort_start_date, cohort_end_date``): the intervals are intersected with the
    person's cohort entries, so only time inside the cohort counts. Intervals never overlap as
    long as a person's observation periods, and cohort entries, do not (OMOP and cohort rules).
    """
    op = engine.table("observation_period")
    study_start = ibis.literal(start, type="date")
    study_end = ibis.literal(end, type="date")
    intervals = op.select(
        person_id=op.person_id.cast("int64"),
        interval_start=ibis.greatest(
            add_days(op.observation_period_start_date, washout_days), study_start
        ),
        interval_end=ibis.least(op.observation_period_end_date, study_end),
    )
    if cohort is not None:
        entry = cohort.select(
            entry_person=cohort.person_id.cast("int64"),
            entry_start=cohort.cohort_start_date,
            entry_end=cohort.cohort_end_date,
        )
        joined = intervals.join(
            entry,
            [
                intervals.person_id == entry.entry_person,
                entry.entry_start <= intervals.interval_end,
                entry.entry_end >= intervals.interval_start,
            ],
        )
        intervals = joined.select(
            person_id=joined.person_id,
            interval_start=ibis.greatest(joined.interval_start, joined.entry_start),
            interval_end=ibis.least(joined.interval_end, joined.entry_end),
        )
    return intervals.filter(intervals.interval_start <= intervals.interval_end)


def index_dates(cohort: ir.Table) -> ir.Table:
    """``person_id, index_date``: each person's first entry start (a regression's or a survival
    curve's index)."""
    return cohort.group_by(person_id=cohort.person_id.cast("int64")).agg(
        index_date=cohort.cohort_start_date.min()
    )


def observed_at_index(engine: IbisCdm, index: ir.Table) -> ir.Table:
    """``index`` joined to the observation period holding each index date, adding ``op_end``
    (its end); persons whose index lies outside every period are left out."""
    op = engine.table("observation_period")
    periods = op.select(
        op_person_id=op.person_id.cast("int64"),
        op_start=op.observation_period_start_date,
        op_end=op.observation_period_end_date,
    )
    holding = index.join(
        periods,
        [
            index.person_id == periods.op_person_id,
            periods.op_start <= index.index_date,
            periods.op_end >= index.index_date,
        ],
    )
    return holding.select(*index.columns, "op_end")


def with_person_strata(table: ir.Table, engine: IbisCdm, edges: Sequence[int]) -> ir.Table:
    """``table`` (with ``person_id`` and ``year``) plus ``sex`` and ``age_band`` in that year."""
    person = engine.table("person")
    persons = person.select(
        p_person_id=person.person_id.cast("int64"),
        sex=sex_label(person.gender_concept_id),
        year_of_birth=person.year_of_birth.cast("int64"),
    )
    joined = table.join(persons, table.person_id == persons.p_person_id)
    age = joined.year - joined.year_of_birth
    return joined.mutate(age_band=age_band_label(age, edges)).drop("p_person_id", "year_of_birth")


def strata_grid(start: date, end: date, edges: Sequence[int]) -> list[tuple[int, str, str]]:
    """Every (year, sex, age band) cell, in output order, present whether empty or not."""
    return [
        (year, sex, band)
        for year in study_years(start, end)
        for sex in SEXES
        for band in band_labels(edges)
    ]


# --------------------------------------------------------------------------- shared plumbing


@contextmanager
def cohort_table(engine: IbisCdm, spec: CohortSpec | None) -> Iterator[ir.Table | None]:
    """The materialised cohort of ``spec`` (dropped on exit), or None without a spec."""
    if spec is None:
        yield None
        return
    table = cohorts.materialize(engine, spec)
    try:
        yield table
    finally:
        cohorts.drop(engine, table)


def population_fingerprint(analysis: str, params: AnalysisParameters) -> str:
    """What defines the population an analysis describes, for the release guard: the
    analysis, its parameters, with each cohort replaced by its definition's fingerprint (a
    renamed cohort is the same population)."""
    data: dict[str, Any] = params.model_dump(mode="json")
    for key in list(data):
        value = getattr(params, key)
        if isinstance(value, CohortSpec):
            data[key] = {"cohort": cohorts.fingerprint(value)}
    return hashlib.sha256(canonical_json({"analysis": analysis, **data})).hexdigest()


def check_keys(
    analysis: object,
    released: Mapping[str, results.SummarisedResult],
    expected: Sequence[results.RowKey],
) -> None:
    """Every node released exactly the cells these parameters define, in order: a node running
    other code under the same name and version must not be pooled."""
    for node, result in released.items():
        if [row.key() for row in result.rows] != list(expected):
            raise results.InvalidNodeResultError(
                f"{analysis}: result of node {node!r} does not hold the cells these parameters "
                "define"
            )
