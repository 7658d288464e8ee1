"""Persons and records in a cohort, overall and by sex, age band and calendar year.

Node side (:meth:`Counts.compute`): one ``GROUP BY`` over the requested strata runs inside the
node's engine; Python only ever sees the grouped cells of the finest (crossed) stratification,
and builds the coarser ones (single strata, overall) by adding those cells up, so that all the
released tables agree exactly.

What is counted:

* A *record* is a cohort entry, classified by its own start date (age band, calendar year).
* A *subject* (person) is classified by their *index* date, the start of their first entry.
  Classifying persons by one date keeps the subject counts additive: the levels of every
  stratification add up to the overall count, which is what complementary suppression relies on.
* Without a cohort the population is every person with an observation period; the records are
  the observation periods and the index is the first observation period's start.
* Age at a date is ``year(date) - year_of_birth``. An entry dated before the year of birth is a
  data error; it is left out everywhere (overall included), so the tables stay consistent.

Disclosure control, applied before anything leaves the node:

* Every cell of every released stratification is present (a fixed grid from the parameters):
  zeros are released as 0, so a reader cannot tell a suppressed cell by its absence.
* Subject counts from 1 to threshold-1 are suppressed (primary suppression), and so is the
  record count of the same cell (a record count reveals that the cell is not empty).
* Complementary suppression (`ehds.analyses.disclosure.suppress`) over the additive relations
  between the released tables: overall = sum of each single stratum's levels, and each level of a
  single stratum = sum of the crossed cells holding it. A suppressed cell therefore cannot be
  recomputed by subtraction from one of those relations.

Coordinator side (:meth:`Counts.aggregate`): each node's rows get the node's name as
``cdm_name`` (the node stratum), and pooled rows are the sums of the released counts; a pooled
cell built from a suppressed node cell is a lower bound (``complete: false``, ``suppressed_at``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import ibis
import ibis.expr.types as ir
from pydantic import Field, model_validator

from ehds.analyses import cohorts, results
from ehds.analyses.age_bands import AgeBandEdges, band_labels, default_edges
from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.disclosure import suppress
from ehds.analyses.person_count import FEMALE_CONCEPT_ID, MALE_CONCEPT_ID, SEXES
from ehds.federation.model import TaskStage

if TYPE_CHECKING:
    from ehds.analyses.engine import IbisCdm

MAX_YEARS: Final = 100

Stratum = Literal["sex", "age_band", "calendar_year"]
STRATA_ORDER: Final[tuple[Stratum, ...]] = ("sex", "age_band", "calendar_year")
STRATUM_COLUMN: Final[Mapping[Stratum, str]] = {
    "sex": "sex",
    "age_band": "age_group",
    "calendar_year": "calendar_year",
}
"""The ``strata_name`` each stratum has in the results (omopgenerics' names)."""

SEPARATOR: Final = " &&& "
OVERALL: Final = "overall"
SUBJECTS: Final = "number subjects"
RECORDS: Final = "number records"


def sex_index(gender_concept_id: ir.IntegerValue) -> ir.IntegerValue:
    """Index into `SEXES` of a gender concept."""
    result: ir.IntegerValue = ibis.cases(
        (gender_concept_id == FEMALE_CONCEPT_ID, 0),
        (gender_concept_id == MALE_CONCEPT_ID, 1),
        else_=2,
    )
    return result


def band_index(age: ir.IntegerValue, edges: Sequence[int]) -> ir.IntegerValue:
    """Index of the band holding ``age`` (negative ages are filtered out before)."""
    upper = edges[1:]
    if not upper:
        return ibis.literal(0, "int64")
    result: ir.IntegerValue = ibis.cases(
        *[(age < hi, index) for index, hi in enumerate(upper)], else_=len(upper)
    )
    return result


def population_fingerprint(spec: CohortSpec | None) -> str:
    """What defines the population described (the release guard's key for identical re-runs)."""
    if spec is None:
        return hashlib.sha256(b"ehds:persons-with-an-observation-period").hexdigest()
    return cohorts.fingerprint(spec)


def group_of(spec: CohortSpec | None) -> tuple[str, str]:
    """``(group_name, group_level)`` of the results rows."""
    return ("overall", "overall") if spec is None else ("cohort_name", spec.name)


@contextmanager
def cohort_entries(engine: IbisCdm, spec: CohortSpec | None) -> Iterator[ir.Table]:
    """The population's entries (``person_id``, ``cohort_start_date``, ``cohort_end_date``).

    A cohort is materialised in the node's results place (and dropped on exit); without one the
    entries are the observation periods.
    """
    if spec is None:
        op = engine.table("observation_period")
        yield op.select(
            person_id=op.person_id.cast("int64"),
            cohort_start_date=op.observation_period_start_date.cast("date"),
            cohort_end_date=op.observation_period_end_date.cast("date"),
        )
        return
    table = cohorts.materialize(engine, spec)
    try:
        yield table
    finally:
        cohorts.drop(engine, table)


def classified_entries(engine: IbisCdm, entries: ir.Table) -> ir.Table:
    """Entries with ``start``, ``sex`` (index into `SEXES`) and ``age`` at their start; entries
    before the year of birth (data errors) and of persons without a person row are left out."""
    person = engine.table("person")
    joined = entries.join(
        person.select(
            person_id=person.person_id.cast("int64"),
            gender_concept_id=person.gender_concept_id,
            year_of_birth=person.year_of_birth.cast("int64"),
        ),
        "person_id",
    )
    classified = joined.select(
        person_id=joined.person_id,
        start=joined.cohort_start_date,
        sex=sex_index(joined.gender_concept_id),
        age=joined.cohort_start_date.year().cast("int64") - joined.year_of_birth,
    )
    return classified.filter(classified.age >= 0)


def first_entry_flag(entries: ir.Table) -> ir.BooleanValue:
    """True on exactly one entry per person: their first (earliest start)."""
    window = ibis.window(group_by=entries.person_id, order_by=[entries.start])
    flag: ir.BooleanValue = ibis.row_number().over(window) == 0
    return flag


class CountsParameters(AnalysisParameters):
    """``strata``: any subset of sex, age_band, calendar_year (each released alone and crossed).

    Calendar years outside ``[first_year, last_year]`` fall into the levels ``<first_year`` and
    ``>last_year`` so that every entry is in exactly one level.
    """

    cohort: CohortSpec | None = None
    strata: list[Stratum] = Field(default_factory=list, max_length=3)
    age_band_edges: AgeBandEdges = Field(default_factory=default_edges)
    first_year: int = Field(default=2000, ge=1800, le=2200)
    last_year: int = Field(default=2025, ge=1800, le=2200)

    @model_validator(mode="after")
    def _consistent(self) -> CountsParameters:
        if len(set(self.strata)) != len(self.strata):
            raise ValueError("strata: each stratum at most once")
        if self.last_year < self.first_year:
            raise ValueError("last_year: must not be before first_year")
        if self.last_year - self.first_year >= MAX_YEARS:
            raise ValueError(f"first_year..last_year: at most {MAX_YEARS} years")
        return self

    def ordered_strata(self) -> list[Stratum]:
        """The requested strata in canonical order (sex, age_band, calendar_year)."""
        return [s for s in STRATA_ORDER if s in self.strata]

    def levels(self, stratum: Stratum) -> list[str]:
        if stratum == "sex":
            return list(SEXES)
        if stratum == "age_band":
            return band_labels(self.age_band_edges)
        years = [str(y) for y in range(self.first_year, self.last_year + 1)]
        return [f"<{self.first_year}", *years, f">{self.last_year}"]


Cell = tuple[tuple[Stratum, ...], tuple[str, ...]]
"""A released cell: the stratification (strata names) and its levels; ``((), ())`` = overall."""


def stratifications(params: CountsParameters) -> list[tuple[Stratum, ...]]:
    """Overall, each single stratum, and (for two or more) their full cross."""
    strata = params.ordered_strata()
    result: list[tuple[Stratum, ...]] = [()]
    result.extend((s,) for s in strata)
    if len(strata) > 1:
        result.append(tuple(strata))
    return result


def grid(params: CountsParameters) -> list[Cell]:
    """Every released cell in output order."""
    cells: list[Cell] = []
    for names in stratifications(params):
        for levels in itertools.product(*(params.levels(s) for s in names)):
            cells.append((names, tuple(levels)))
    return cells


def constraints(params: CountsParameters) -> list[tuple[Cell, list[Cell]]]:
    """The additive relations between released cells: (total, parts)."""
    strata = params.ordered_strata()
    overall: Cell = ((), ())
    relations: list[tuple[Cell, list[Cell]]] = []
    for s in strata:
        relations.append((overall, [((s,), (level,)) for level in params.levels(s)]))
    if len(strata) > 1:
        cross = tuple(strata)
        cross_cells = [
            (cross, tuple(levels))
            for levels in itertools.product(*(params.levels(s) for s in strata))
        ]
        relations.append((overall, cross_cells))
        for position, s in enumerate(strata):
            for level in params.levels(s):
                parts = [cell for cell in cross_cells if cell[1][position] == level]
                relations.append((((s,), (level,)), parts))
    return relations


def count_expression(
    engine: IbisCdm, entries: ir.Table, params: CountsParameters
) -> tuple[ir.Table, int]:
    """The one grouped statement: subjects and records per crossed cell, and its cell count."""
    classified = classified_entries(engine, entries)
    flagged = classified.mutate(first=first_entry_flag(classified))
    year = flagged.start.year().cast("int64")
    year_level = ibis.cases(
        (year < params.first_year, 0),
        (year > params.last_year, params.last_year - params.first_year + 2),
        else_=year - params.first_year + 1,
    )
    keys = {
        "sex": flagged.sex,
        "age_band": band_index(flagged.age, params.age_band_edges),
        "calendar_year": year_level,
    }
    strata = params.ordered_strata()
    metrics = {
        "records": flagged.count(),
        "subjects": flagged.first.ifelse(1, 0).sum(),
    }
    if strata:
        expr = flagged.group_by(**{s: keys[s] for s in strata}).aggregate(**metrics)
    else:
        expr = flagged.aggregate(**metrics)
    cells = math.prod(len(params.levels(s)) for s in strata)
    return expr, cells


def tabulate(
    params: CountsParameters, grouped: list[dict[str, Any]]
) -> dict[Cell, tuple[int, int]]:
    """(subjects, records) of every grid cell, coarser tables summed from the crossed cells."""
    strata = params.ordered_strata()
    levels = {s: params.levels(s) for s in strata}
    crossed: dict[tuple[str, ...], tuple[int, int]] = {}
    for row in grouped:
        key = tuple(levels[s][int(row[s])] for s in strata)
        crossed[key] = (int(row["subjects"] or 0), int(row["records"] or 0))
    table: dict[Cell, tuple[int, int]] = {}
    for names, cell_levels in grid(params):
        positions = [strata.index(s) for s in names]
        subjects = records = 0
        for key, (n_subjects, n_records) in crossed.items():
            if all(key[p] == level for p, level in zip(positions, cell_levels, strict=True)):
                subjects += n_subjects
                records += n_records
        table[(names, cell_levels)] = (subjects, records)
    return table


def strata_name_level(cell: Cell) -> tuple[str, str]:
    names, levels = cell
    if not names:
        return OVERALL, OVERALL
    return SEPARATOR.join(STRATUM_COLUMN[s] for s in names), SEPARATOR.join(levels)


def suppressed_cells(
    params: CountsParameters, table: Mapping[Cell, tuple[int, int]], threshold: int
) -> set[tuple[str, Cell]]:
    """``(variable, cell)`` pairs to release as suppressed.

    Both variables get primary and complementary suppression over the same relations (a cell
    may hold few records and no subject: a person's later entries fall outside the cell of
    their first). A cell whose subject count is suppressed has its record count suppressed too;
    `suppress` cannot be told to hide a cell, so such a record count is handed to it as a small
    (hence suppressed) value, and the whole is repeated until nothing changes.
    """
    values: dict[tuple[str, Cell], int] = {}
    for cell, (subjects, records) in table.items():
        values[(SUBJECTS, cell)] = subjects
        values[(RECORDS, cell)] = records
    relations = [
        ((variable, total), [(variable, part) for part in parts])
        for variable in (SUBJECTS, RECORDS)
        for total, parts in constraints(params)
    ]
    forced: dict[tuple[str, Cell], int] = {}
    while True:
        hidden = suppress({k: forced.get(k, v) for k, v in values.items()}, threshold, relations)
        linked = {
            (RECORDS, cell)
            for variable, cell in hidden
            if variable == SUBJECTS and (RECORDS, cell) not in hidden
        }
        if not linked:
            return hidden
        forced.update(dict.fromkeys(linked, 1))


def release_rows(
    params: CountsParameters, table: Mapping[Cell, tuple[int, int]], threshold: int
) -> list[results.Row]:
    """The released rows: suppression (primary and complementary) applied to every cell."""
    hidden = suppressed_cells(params, table, threshold)
    group = group_of(params.cohort)
    rows: list[results.Row] = []
    for cell in grid(params):
        strata_name, strata_level = strata_name_level(cell)
        for variable, value in zip((SUBJECTS, RECORDS), table[cell], strict=True):
            key = (variable, cell)
            rows.append(
                results.make_row(
                    variable,
                    "count",
                    None if key in hidden else value,
                    estimate_type="integer",
                    group=group,
                    strata=(strata_name, strata_level),
                    suppressed=key in hidden,
                )
            )
    return rows


class Counts(Analysis[CountsParameters]):
    name = "counts"
    version = "1.0.0"
    parameters = CountsParameters
    description = (
        "Persons and records in a cohort (or all persons), overall and by sex, age band and "
        "calendar year, with primary and complementary suppression."
    )

    def compute(self, params: CountsParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        with cohort_entries(engine, params.cohort) as entries:
            classified = classified_entries(engine, entries)
            ctx.check_population(
                classified.select("person_id").distinct(),
                fingerprint=population_fingerprint(params.cohort),
            )
            ctx.check_cancelled()
            expr, cells = count_expression(engine, entries, params)
            grouped = engine.collect(expr, max_rows=cells)
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        rows = release_rows(params, tabulate(params, grouped), ctx.min_cell_count)
        return results.SummarisedResult(min_cell_count=ctx.min_cell_count, rows=rows).to_json()

    def aggregate(
        self, params: CountsParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        expected = _row_keys(params)
        released = results.validated_results(self.ref(), node_results)
        for node, result in released.items():
            if [row.key() for row in result.rows] != expected:
                raise results.InvalidNodeResultError(
                    f"{self.ref()}: result of node {node!r} does not hold the cells these "
                    "parameters define"
                )
        rows = [row for node in released for row in results.label_rows(node, released[node])]
        rows.extend(results.pool_additive(released))
        return results.summarised_document(released, rows)

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return results.summarised_table(aggregate)


def _row_keys(params: CountsParameters) -> list[results.RowKey]:
    group = group_of(params.cohort)
    keys: list[results.RowKey] = []
    for cell in grid(params):
        strata_name, strata_level = strata_name_level(cell)
        keys.extend(
            (*group, strata_name, strata_level, variable, "", "count")
            for variable in (SUBJECTS, RECORDS)
        )
    return keys
