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

Differential privacy (parameter ``privacy``, see `ehds.analyses.privacy`): each person is in
exactly one sex x age band cell, so adding or removing a person changes the vector of cell
counts by 1 in one place (L2 sensitivity 1), and the whole ``rho`` goes to that one vector.
The node adds OpenDP's discrete Gaussian to every cell (zeros included), clamps at 0, and
applies the threshold to the noisy count. Its result carries a ``privacy`` block; pooled cells
are sums of noisy counts, flagged ``noisy: true``, and the pooled result reports each node's
``epsilon``.
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
from ehds.analyses.privacy import (
    CountVector,
    PrivacyRequest,
    ReleasedPrivacy,
    encode_without_unset_privacy,
    node_privacy_summary,
    privacy_mismatch,
    release,
    thresholded,
)
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
    privacy: PrivacyRequest | None = None

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
    privacy: ReleasedPrivacy | None = None


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


COUNTS_VECTOR: Final = "counts"


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
        grid = _grid(params)
        exact = [counts.get(key, 0) for key in grid]
        if params.privacy is None:
            released: list[int | None] = [None if 0 < c < threshold else c for c in exact]
            privacy: JsonObject | None = None
        else:
            # One vector, every person in exactly one cell: L2 sensitivity 1, whole rho.
            noisy = release(
                params.privacy,
                ctx.require_privacy(),
                [CountVector(COUNTS_VECTOR, exact, sensitivity=1.0, share=1.0)],
            )
            released = [thresholded(v, threshold) for v in noisy.vectors[COUNTS_VECTOR].values]
            privacy = noisy.as_json()
        cells: list[JsonObject] = [
            {"sex": sex, "age_band": band, "count": count, "suppressed": count is None}
            for (sex, band), count in zip(grid, released, strict=True)
        ]
        result: JsonObject = {"cells": cells, "min_cell_count": threshold}
        if privacy is not None:
            result["privacy"] = privacy
        return result

    def aggregate(
        self, params: PersonCountParameters, node_results: Mapping[str, JsonObject]
    ) -> JsonObject:
        grid = _grid(params)
        totals = dict.fromkeys(grid, 0)
        suppressed_at: dict[tuple[str, str], list[str]] = {key: [] for key in grid}
        privacy: dict[str, ReleasedPrivacy] = {}
        for node in sorted(node_results):
            table = self._released_table(node, node_results[node], grid, params)
            if table.privacy is not None:
                privacy[node] = table.privacy
            for released in table.cells:
                key = (released.sex, released.age_band)
                if released.suppressed:
                    suppressed_at[key].append(node)
                else:
                    totals[key] += released.count or 0
        noisy = params.privacy is not None
        cells: list[JsonObject] = []
        for sex, band in grid:
            cell: JsonObject = {
                "sex": sex,
                "age_band": band,
                "count": totals[(sex, band)],
                "complete": not suppressed_at[(sex, band)],
                "suppressed_at": suppressed_at[(sex, band)],
            }
            if noisy:
                cell["noisy"] = True
            cells.append(cell)
        pooled: JsonObject = {"cells": cells}
        if noisy:
            pooled["privacy"] = node_privacy_summary(privacy)
        return pooled

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        rows: list[list[Any]] = []
        for cell in aggregate.get("cells", []):
            flags = []
            if cell.get("noisy"):
                flags.append("noisy (differential privacy)")
            if not cell.get("complete", True):
                nodes = ", ".join(cell.get("suppressed_at", []))
                flags.append(f"incomplete: suppressed at {nodes}")
            rows.append([cell["sex"], cell["age_band"], cell["count"], "; ".join(flags)])
        return ["sex", "age_band", "persons", "flags"], rows

    def encode_parameters(self, params: PersonCountParameters) -> bytes:
        """Without ``privacy`` when it is not requested: a study without differential privacy
        travels as the same bytes as before the parameter existed."""
        return encode_without_unset_privacy(params)

    def _released_table(
        self,
        node: str,
        result: JsonObject,
        grid: list[tuple[str, str]],
        params: PersonCountParameters,
    ) -> _ReleasedTable:
        """The node's table, checked against the grid and privacy request of these parameters.

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
        problem = privacy_mismatch(table.privacy, params.privacy)
        if problem is not None:
            raise InvalidNodeResultError(f"{self.ref()}: result of node {node!r} {problem}")
        return table
