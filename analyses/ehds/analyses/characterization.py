"""Characterization of a cohort: demographics and the most frequent concepts per domain.

Node side (:meth:`Characterization.compute`), inside the node's engine:

* The subjects are the cohort's persons, each at their *index* date (the start of their first
  entry); without a cohort, every person with an observation period at its first start.
* Demographics: number of subjects, counts by sex and by age band at index
  (``year(index) - year_of_birth``), and the sum and sum of squares of the age at index, from
  which the coordinator derives mean and standard deviation. One grouped statement.
* Per domain (conditions, drugs, procedures, measurements, observations, visits: their standard
  concept column, concept 0 "no matching concept" left out), the number of distinct subjects
  with each concept on a date in the window ``[index + start, index + end]`` days. One
  statement for all domains, which ranks the concepts inside the engine and returns only those
  with at least threshold subjects (at most ``max_concepts_per_domain`` of them, by count), with
  two counts of concepts: those suppressed (1 to threshold-1 subjects; counted, never listed,
  as their ids would be a list of rare conditions) and those beyond the cap.

Disclosure control: subject, sex and age-band counts get primary suppression plus complementary
suppression over ``subjects = sum(sex levels) = sum(age bands)``; the age sums are released
only when the subject count is (they describe the same persons). A concept count is released
only at threshold or above, so it has no complementary relation to protect (persons have
several concepts; the counts add up to nothing released).

Coordinator side (:meth:`Characterization.aggregate`): demographic counts and sums are pooled,
and percentages, mean and sd are derived for every node and for the pool. Concept counts are
pooled over the nodes that listed them, ranked, and the pooled top ``top_n`` per domain are
reported with their percentage of the pooled subjects. A node that did not list a concept
contributes nothing: if it suppressed some concepts or cut its list at the cap, the concept may
be one of them, so the pooled count is a lower bound (``complete: false``, the node in
``suppressed_at``); if it did neither, its count is known to be 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import ibis
import ibis.expr.types as ir
from pydantic import Field, model_validator

from ehds.analyses import results
from ehds.analyses.age_bands import AgeBandEdges, band_labels, default_edges
from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.counts import (
    SUBJECTS,
    band_index,
    classified_entries,
    cohort_entries,
    first_entry_flag,
    group_of,
    population_fingerprint,
)
from ehds.analyses.disclosure import suppress
from ehds.analyses.person_count import SEXES
from ehds.federation.model import TaskStage

if TYPE_CHECKING:
    from ehds.analyses.engine import IbisCdm

Domain = Literal[
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "visit_occurrence",
]


@dataclass(frozen=True)
class DomainColumns:
    concept: str
    date: str


DOMAINS: Final[Mapping[Domain, DomainColumns]] = {
    "condition_occurrence": DomainColumns("condition_concept_id", "condition_start_date"),
    "drug_exposure": DomainColumns("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": DomainColumns("procedure_concept_id", "procedure_date"),
    "measurement": DomainColumns("measurement_concept_id", "measurement_date"),
    "observation": DomainColumns("observation_concept_id", "observation_date"),
    "visit_occurrence": DomainColumns("visit_concept_id", "visit_start_date"),
}

SEX: Final = "sex"
AGE_GROUP: Final = "age_group"
AGE: Final = "age"
CONCEPTS_SUPPRESSED: Final = "concepts_suppressed"
"""Per domain: how many concepts had 1 to threshold-1 subjects (not listed)."""
CONCEPTS_NOT_LISTED: Final = "concepts_beyond_cap"
"""Per domain: how many concepts had threshold or more subjects but fell beyond the cap."""
MAX_WINDOW_DAYS: Final = 36_500
MAX_CAP: Final = 5_000


class CharacterizationParameters(AnalysisParameters):
    """``window``: ``[start, end]`` days relative to index, both included (``[-365, 0]``: the
    year before index and the index day). ``max_concepts_per_domain``: the most concepts a node
    lists per domain; ``top_n``: how many pooled concepts per domain the result reports."""

    cohort: CohortSpec | None = None
    age_band_edges: AgeBandEdges = Field(default_factory=default_edges)
    domains: list[Domain] = Field(default_factory=lambda: list(DOMAINS), min_length=1)
    window: list[int] = Field(default_factory=lambda: [-365, 0], min_length=2, max_length=2)
    max_concepts_per_domain: int = Field(default=500, ge=1, le=MAX_CAP)
    top_n: int = Field(default=10, ge=1, le=MAX_CAP)

    @model_validator(mode="after")
    def _consistent(self) -> CharacterizationParameters:
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("domains: each domain at most once")
        start, end = self.window
        if start > end:
            raise ValueError("window: start must not be after end")
        if max(abs(start), abs(end)) > MAX_WINDOW_DAYS:
            raise ValueError(f"window: at most {MAX_WINDOW_DAYS} days from index")
        return self


def subjects_expression(engine: IbisCdm, entries: ir.Table) -> ir.Table:
    """One row per subject: ``person_id``, ``index_date``, ``sex`` (index into SEXES), ``age``."""
    classified = classified_entries(engine, entries)
    flagged = classified.mutate(first=first_entry_flag(classified))
    first = flagged.filter(flagged.first)
    return first.select(
        person_id=first.person_id, index_date=first.start, sex=first.sex, age=first.age
    )


def demographics_expression(subjects: ir.Table, edges: Sequence[int]) -> ir.Table:
    """Subjects, age sum and sum of squares per (sex, age band) cell."""
    cells = subjects.mutate(band=band_index(subjects.age, edges))
    return cells.group_by(["sex", "band"]).aggregate(
        subjects=cells.count(),
        age_sum=cells.age.sum(),
        age_squares=(cells.age * cells.age).sum(),
    )


def concepts_expression(
    engine: IbisCdm, subjects: ir.Table, params: CharacterizationParameters, threshold: int
) -> ir.Table:
    """Per domain, the releasable concepts (count >= threshold, ranked, at most the cap) and the
    domain's numbers of suppressed and releasable concepts.

    Concept id and count are nulled inside the engine below the threshold, so that only the
    first-ranked row of a domain without releasable concepts reaches Python (for the two
    numbers), carrying no concept.
    """
    start, end = params.window
    index = subjects.select("person_id", "index_date")
    parts = []
    for domain in params.domains:
        columns = DOMAINS[domain]
        table = engine.table(domain)
        events = table.select(
            person_id=table.person_id.cast("int64"),
            concept_id=table[columns.concept].cast("int64"),
            event_date=table[columns.date].cast("date"),
        )
        joined = events.join(index, "person_id")
        in_window = joined.filter(
            joined.concept_id.notnull(),
            joined.concept_id != 0,
            joined.event_date >= joined.index_date + ibis.interval(days=start),
            joined.event_date <= joined.index_date + ibis.interval(days=end),
        )
        grouped = in_window.group_by("concept_id").aggregate(subjects=in_window.person_id.nunique())
        parts.append(grouped.mutate(domain=ibis.literal(domain, "string")))
    counts = ibis.union(*parts, distinct=False) if len(parts) > 1 else parts[0]
    releasable = counts.subjects >= threshold
    by_domain = ibis.window(group_by=counts.domain)
    ranked = counts.mutate(
        rank=ibis.row_number().over(
            ibis.window(
                group_by=counts.domain, order_by=[counts.subjects.desc(), counts.concept_id]
            )
        ),
        suppressed=(~releasable).ifelse(1, 0).sum().over(by_domain),
        releasable=releasable.ifelse(1, 0).sum().over(by_domain),
    )
    kept = ranked.filter(
        ranked.rank < params.max_concepts_per_domain,
        (ranked.subjects >= threshold) | (ranked.rank == 0),
    )
    listed = kept.subjects >= threshold
    return kept.select(
        domain=kept.domain,
        concept_id=listed.ifelse(kept.concept_id, ibis.null("int64")),
        subjects=listed.ifelse(kept.subjects, ibis.null("int64")),
        suppressed=kept.suppressed,
        releasable=kept.releasable,
    )


def demographic_rows(
    params: CharacterizationParameters, grouped: list[dict[str, Any]], threshold: int
) -> list[results.Row]:
    """Subjects, sex and age-band counts (suppressed with their complements) and age sums."""
    labels = band_labels(params.age_band_edges)
    sexes = dict.fromkeys(SEXES, 0)
    bands = dict.fromkeys(labels, 0)
    age_sum = age_squares = 0
    for row in grouped:
        n = int(row["subjects"])
        sexes[SEXES[int(row["sex"])]] += n
        bands[labels[int(row["band"])]] += n
        age_sum += int(row["age_sum"] or 0)
        age_squares += int(row["age_squares"] or 0)
    total = sum(sexes.values())
    values: dict[tuple[str, str], int] = {(SUBJECTS, ""): total}
    values.update({(SEX, sex): n for sex, n in sexes.items()})
    values.update({(AGE_GROUP, band): n for band, n in bands.items()})
    relations = [
        ((SUBJECTS, ""), [(SEX, sex) for sex in SEXES]),
        ((SUBJECTS, ""), [(AGE_GROUP, band) for band in labels]),
    ]
    hidden = suppress(values, threshold, relations)
    group = group_of(params.cohort)
    rows = [
        results.make_row(
            variable,
            "count",
            None if (variable, level) in hidden else n,
            estimate_type="integer",
            variable_level=level,
            group=group,
            suppressed=(variable, level) in hidden,
        )
        for (variable, level), n in values.items()
    ]
    sums_hidden = (SUBJECTS, "") in hidden or total == 0
    for name, value in (("sum", age_sum), ("sum_squares", age_squares)):
        rows.append(
            results.make_row(
                AGE,
                name,
                None if sums_hidden else value,
                estimate_type="numeric",
                group=group,
                suppressed=sums_hidden,
            )
        )
    return rows


def concept_rows(
    params: CharacterizationParameters, collected: list[dict[str, Any]]
) -> list[results.Row]:
    """Listed concepts (count) and, per domain, the numbers of concepts not listed."""
    group = group_of(params.cohort)
    rows: list[results.Row] = []
    for domain in params.domains:
        mine = [row for row in collected if row["domain"] == domain]
        suppressed = int(mine[0]["suppressed"]) if mine else 0
        releasable = int(mine[0]["releasable"]) if mine else 0
        listed = sorted(
            (row for row in mine if row["concept_id"] is not None),
            key=lambda row: (-int(row["subjects"]), int(row["concept_id"])),
        )
        for row in listed:
            rows.append(
                results.make_row(
                    domain,
                    "count",
                    int(row["subjects"]),
                    estimate_type="integer",
                    variable_level=str(int(row["concept_id"])),
                    group=group,
                )
            )
        for name, value in (
            (CONCEPTS_SUPPRESSED, suppressed),
            (CONCEPTS_NOT_LISTED, releasable - len(listed)),
        ):
            rows.append(results.make_row(domain, name, value, estimate_type="integer", group=group))
    return rows


class Characterization(Analysis[CharacterizationParameters]):
    name = "characterization"
    version = "1.0.0"
    parameters = CharacterizationParameters
    description = (
        "Cohort demographics (sex, age band, mean and sd of age) and the most frequent concepts "
        "per domain in a window around index, with proportions."
    )

    def compute(self, params: CharacterizationParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        threshold = ctx.min_cell_count
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        with cohort_entries(engine, params.cohort) as entries:
            name = engine.scratch_name("characterization")
            subjects = engine.create_results_table(name, subjects_expression(engine, entries))
            try:
                ctx.check_population(
                    subjects.select("person_id"),
                    fingerprint=population_fingerprint(params.cohort),
                )
                ctx.check_cancelled()
                bands = len(params.age_band_edges)
                demographics = engine.collect(
                    demographics_expression(subjects, params.age_band_edges),
                    max_rows=len(SEXES) * bands,
                )
                ctx.check_cancelled()
                ctx.report(TaskStage.QUERYING, 0.3)
                concepts = engine.collect(
                    concepts_expression(engine, subjects, params, threshold),
                    max_rows=len(params.domains) * params.max_concepts_per_domain,
                )
            finally:
                engine.drop_results_table(name)
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        rows = demographic_rows(params, demographics, threshold)
        rows.extend(concept_rows(params, concepts))
        return results.SummarisedResult(min_cell_count=threshold, rows=rows).to_json()

    def aggregate(
        self, params: CharacterizationParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        released = results.validated_results(self.ref(), node_results)
        pooled = results.pool_additive(
            released,
            select=lambda row: row.variable_name not in params.domains,
        )
        pooled_concepts = results.pool_additive(
            released,
            select=lambda row: row.variable_name in params.domains and row.estimate_name == "count",
            absent_is_zero=_lists_everything(params, released),
        )
        top = _top_concepts(params, pooled_concepts)
        in_top = set(top)
        rows: list[results.Row] = []
        for node, result in released.items():
            mine = [
                row
                for row in results.label_rows(node, result)
                if row.variable_name not in params.domains
                or row.estimate_name != "count"
                or (row.variable_name, row.variable_level) in in_top
            ]
            rows.extend(_with_derived(mine, node))
        by_concept = {(row.variable_name, row.variable_level): row for row in pooled_concepts}
        pooled.extend(by_concept[concept] for concept in top)
        rows.extend(_with_derived(pooled, results.POOLED))
        return results.summarised_document(released, rows)

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        return results.summarised_table(aggregate)


def _lists_everything(
    params: CharacterizationParameters, released: Mapping[str, results.SummarisedResult]
) -> Callable[[str, results.RowKey], bool]:
    """Whether a concept a node did not list is known to be 0 there: the node suppressed no
    concept of that domain and listed all its releasable ones."""
    complete: set[tuple[str, str]] = set()
    for node, result in released.items():
        for domain in params.domains:
            key = (*group_of(params.cohort), "overall", "overall", domain, "")
            if (
                result.value((*key, CONCEPTS_SUPPRESSED)) == 0
                and result.value((*key, CONCEPTS_NOT_LISTED)) == 0
            ):
                complete.add((node, domain))
    return lambda node, key: (node, key[4]) in complete


def _top_concepts(
    params: CharacterizationParameters, pooled: Sequence[results.Row]
) -> list[tuple[str, str]]:
    """(domain, concept) of the pooled top ``top_n`` per domain, ranked by pooled count, then
    concept id."""
    top: list[tuple[str, str]] = []
    for domain in params.domains:
        ranked = sorted(
            (row for row in pooled if row.variable_name == domain),
            key=lambda row: (-(row.estimate_value or 0), int(row.variable_level)),
        )
        top.extend((domain, row.variable_level) for row in ranked[: params.top_n])
    return top


def _with_derived(rows: Sequence[results.Row], cdm_name: str) -> list[results.Row]:
    """``rows`` plus percentages (of the subjects), and mean and sd of age, at one place.

    A derived value is suppressed (null) if one of its inputs is, complete only if all its
    inputs are, and left out where it is undefined (no subjects; sd of one subject).
    """
    by_key = {(row.variable_name, row.variable_level, row.estimate_name): row for row in rows}
    subjects = by_key.get((SUBJECTS, "", "count"))
    out: list[results.Row] = []

    def add(like: results.Row, name: str, inputs: Sequence[results.Row], fn: Derivation) -> None:
        derived = _derived(like, name, inputs, fn, cdm_name)
        if derived is not None:
            out.append(derived)

    for row in rows:
        out.append(row)
        if subjects is None:
            continue
        if row.estimate_name == "count" and row.variable_name != SUBJECTS:
            add(row, "percentage", [row, subjects], _percentage)
        if row.variable_name == AGE and row.estimate_name == "sum_squares":
            age_sum = by_key.get((AGE, "", "sum"))
            if age_sum is not None:
                add(row, "mean", [subjects, age_sum, row], _mean)
                add(row, "sd", [subjects, age_sum, row], _sd)
    return out


Derivation = Callable[[Sequence[float]], float | None]


def _derived(
    like: results.Row,
    estimate_name: str,
    inputs: Sequence[results.Row],
    compute: Derivation,
    cdm_name: str,
) -> results.Row | None:
    values = [row.estimate_value for row in inputs]
    suppressed = any(v is None for v in values)
    value = None
    if not suppressed:
        value = compute([float(v) for v in values if v is not None])
        if value is None:
            return None
    pooled = cdm_name == results.POOLED
    missing = sorted({node for row in inputs for node in (row.suppressed_at or [])})
    return results.make_row(
        like.variable_name,
        estimate_name,
        value,
        estimate_type="percentage" if estimate_name == "percentage" else "numeric",
        variable_level=like.variable_level,
        group=(like.group_name, like.group_level),
        strata=(like.strata_name, like.strata_level),
        suppressed=suppressed,
        cdm_name=cdm_name,
        complete=(not missing) if pooled else None,
        suppressed_at=missing if pooled else None,
    )


def _percentage(values: Sequence[float]) -> float | None:
    count, subjects = values
    return None if subjects == 0 else 100.0 * count / subjects


def _mean(values: Sequence[float]) -> float | None:
    n, total, _ = values
    return None if n == 0 else total / n


def _sd(values: Sequence[float]) -> float | None:
    n, total, squares = values
    if n < 2:
        return None
    variance = (squares - total * total / n) / (n - 1)
    return math.sqrt(max(variance, 0.0))
