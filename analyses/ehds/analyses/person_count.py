"""Persons by sex and age band: the demo's analysis, and the model for every count analysis.

Node side (:meth:`PersonCount.compute`): one ``GROUP BY`` query, written once in Ibis, runs
inside the node's engine (DuckDB, PostgreSQL or Spark); Python only ever sees the grouped
counts (at most one row per cell of the grid), never a person row. The population it describes
(persons born by the reference year) goes through the node's release guard first.

Disclosure control, applied before anything leaves the node:

* A cell with ``0 < count < min_cell_count`` is suppressed: released as
  ``{"count": null, "suppressed": true}``.
* A cell with count 0 is released as 0. A zero is not a small cell (it identifies nobody), and
  leaving absent groups out would make the table's shape depend on the data; every sex x age
  band combination is therefore always present, in a fixed order, so that a reader cannot tell
  a suppressed cell from a missing one by its absence. The residual risk of a zero is group
  attribute disclosure (e.g. "every child at this site is female"), which is accepted here as
  it is by the OHDSI network tools that this mirrors.
* No totals, margins or row counts are released: a total beside its cells would give back
  every suppressed cell by subtraction.

Known limit: suppression protects one table. Two studies whose age bands differ by one year
can be differenced to recover a small group; limiting repeated queries is the job of the data
permit and audit layers, not of this analysis.

Coordinator side (:meth:`PersonCount.aggregate`): a pooled cell is the sum of the released
counts. Where a node suppressed the cell, its persons are missing from the sum, so the cell is
flagged ``complete: false`` with the nodes in ``suppressed_at``; only complete cells are equal
to a ``GROUP BY`` over the pooled rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import ibis
import ibis.expr.types as ir
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ehds.analyses.age_bands import MAX_EDGES, band_labels, check_age_edges
from ehds.analyses.base import (
    Analysis,
    AnalysisParameters,
    ComputeContext,
    JsonObject,
    canonical_json,
)
from ehds.analyses.engine import IbisCdm
from ehds.core.errors import InputError
from ehds.federation.model import TaskStage

MALE_CONCEPT_ID: Final = 8507
FEMALE_CONCEPT_ID: Final = 8532

SEXES: Final = ("FEMALE", "MALE", "OTHER/UNKNOWN")
"""Sex categories in output order. OMOP's other gender concepts (8521 OTHER, 8551 UNKNOWN, 0 no
matching concept, local codes) are pooled into one category: alone, each is usually a small
cell that suppression would hide at every node."""


class PersonCountParameters(AnalysisParameters):
    """Age bands ``[edge_i, edge_{i+1})`` and a last open band ``edge_k+``."""

    age_band_edges: list[int] = Field(
        default_factory=lambda: [0, 18, 45, 65], min_length=1, max_length=MAX_EDGES
    )
    reference_year: int = Field(default=2025, ge=1800, le=2200)

    @field_validator("age_band_edges")
    @classmethod
    def _edges(cls, edges: list[int]) -> list[int]:
        return check_age_edges(edges)

    def band_labels(self) -> list[str]:
        """``["0-17", "18-44", "45-64", "65+"]`` for the default edges."""
        return band_labels(self.age_band_edges)


class InvalidNodeResultError(InputError):
    """A node's released result does not have the shape this analysis version produces."""


class _ReleasedCell(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sex: str
    age_band: str
    count: int | None = Field(ge=0)
    suppressed: bool


class _ReleasedTable(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    cells: list[_ReleasedCell]
    min_cell_count: int = Field(ge=1)


def _sex_index(gender_concept_id: ir.IntegerValue) -> ir.IntegerValue:
    return ibis.cases(
        (gender_concept_id == FEMALE_CONCEPT_ID, SEXES.index("FEMALE")),
        (gender_concept_id == MALE_CONCEPT_ID, SEXES.index("MALE")),
        else_=SEXES.index("OTHER/UNKNOWN"),
    )


def _band_index(age: ir.IntegerValue, edges: Sequence[int]) -> ir.IntegerValue:
    """Index of the band holding ``age`` (ages below 0 are filtered out before)."""
    upper = edges[1:]
    if not upper:
        return ibis.literal(0)
    return ibis.cases(*[(age < hi, index) for index, hi in enumerate(upper)], else_=len(upper))


def counted_persons(engine: IbisCdm, params: PersonCountParameters) -> ir.Table:
    """The persons the table describes: born by the reference year."""
    person = engine.table("person")
    return person.filter(person.year_of_birth <= params.reference_year)


def count_expression(engine: IbisCdm, params: PersonCountParameters) -> ir.Table:
    """The one query the node runs: grouped counts by (sex index, band index)."""
    person = counted_persons(engine, params)
    age = params.reference_year - person.year_of_birth
    categorised = person.select(
        sex=_sex_index(person.gender_concept_id),
        band=_band_index(age, params.age_band_edges),
    )
    return categorised.group_by(["sex", "band"]).aggregate(persons=categorised.count())


def _grid(params: PersonCountParameters) -> list[tuple[str, str]]:
    return [(sex, band) for sex in SEXES for band in params.band_labels()]


class PersonCount(Analysis[PersonCountParameters]):
    name = "person_count"
    version = "1.0.0"
    parameters = PersonCountParameters
    description = "Persons by sex and age band (small cells suppressed at each node)."

    def compute(self, params: PersonCountParameters, ctx: ComputeContext) -> JsonObject:
        ctx.check_cancelled()
        engine = ctx.require_engine()
        labels = params.band_labels()
        ctx.report(TaskStage.QUERYING, 0.0)
        persons = counted_persons(engine, params).select("person_id").distinct()
        population = {"analysis": self.name, "reference_year": params.reference_year}
        ctx.check_population(persons, fingerprint=canonical_json(population).decode())
        ctx.check_cancelled()
        grouped = engine.collect(count_expression(engine, params), max_rows=len(_grid(params)))
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        counts = {
            (SEXES[int(row["sex"])], labels[int(row["band"])]): int(row["persons"])
            for row in grouped
        }
        threshold = ctx.min_cell_count
        cells: list[JsonObject] = []
        for sex, band in _grid(params):
            count = counts.get((sex, band), 0)
            suppressed = 0 < count < threshold
            cells.append(
                {
                    "sex": sex,
                    "age_band": band,
                    "count": None if suppressed else count,
                    "suppressed": suppressed,
                }
            )
        return {"cells": cells, "min_cell_count": threshold}

    def aggregate(
        self, params: PersonCountParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        grid = _grid(params)
        totals = dict.fromkeys(grid, 0)
        suppressed_at: dict[tuple[str, str], list[str]] = {key: [] for key in grid}
        for node in sorted(node_results):
            for cell in self._released_cells(node, node_results[node], grid):
                key = (cell.sex, cell.age_band)
                if cell.suppressed:
                    suppressed_at[key].append(node)
                else:
                    totals[key] += cell.count or 0
        cells = [
            {
                "sex": sex,
                "age_band": band,
                "count": totals[(sex, band)],
                "complete": not suppressed_at[(sex, band)],
                "suppressed_at": suppressed_at[(sex, band)],
            }
            for sex, band in grid
        ]
        return {"cells": cells}

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        rows: list[list[Any]] = []
        for cell in aggregate.get("cells", []):
            flags = ""
            if not cell.get("complete", True):
                nodes = ", ".join(cell.get("suppressed_at", []))
                flags = f"incomplete: suppressed at {nodes}"
            rows.append([cell["sex"], cell["age_band"], cell["count"], flags])
        return ["sex", "age_band", "persons", "flags"], rows

    def _released_cells(
        self, node: str, result: JsonObject, grid: list[tuple[str, str]]
    ) -> list[_ReleasedCell]:
        """The node's cells, checked against the grid these parameters define.

        A result of another shape means the node runs different code under the same name and
        version: pooling it would silently mix incompatible tables, so it is an error.
        """
        try:
            table = _ReleasedTable.model_validate(result)
        except ValidationError as exc:
            where = ", ".join(
                ".".join(str(p) for p in error["loc"]) or "(top level)" for error in exc.errors()
            )
            raise InvalidNodeResultError(
                f"{self.ref()}: result of node {node!r} is malformed at {where}"
            ) from None
        if [(c.sex, c.age_band) for c in table.cells] != grid:
            raise InvalidNodeResultError(
                f"{self.ref()}: result of node {node!r} does not hold the expected "
                "sex x age band cells"
            )
        for cell in table.cells:
            released_small = cell.count is not None and 0 < cell.count < table.min_cell_count
            if cell.suppressed != (cell.count is None) or released_small:
                raise InvalidNodeResultError(
                    f"{self.ref()}: result of node {node!r} has a cell that breaks its own "
                    "disclosure rule (count, suppressed flag and min_cell_count disagree)"
                )
        return table.cells
