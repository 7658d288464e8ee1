"""The node-side feature extract of an `fl` study: one Parquet file of ``y`` and the features.

Why the GLM's design machinery: a federated model and a pooled regression over the same
definitions must see the same rows and columns (`ehds.analyses.glm.design`, binomial family:
the target cohort's persons, index = first entry, y = 1 if an outcome entry starts in the
window). The extract is what the study's ClientApp reads instead of the CDM, so it holds no
person ids and nothing else: column ``y`` (0/1) and one float64 column per covariate, in the
order of ``covariates``. A row with a missing value is left out (complete case, as the design
does for a missing measurement), so that training code never meets a null.

Rows are ordered by person id inside the engine (the ids are dropped batch by batch before
anything is written) so that the same CDM gives the same file, and the ClientApp's seeded
hold-out draws the same rows on every run. The file is streamed from the engine in Arrow
batches, written beside its target and renamed into place: a reader never sees half a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import EngineKind, IbisCdm
from ehds.analyses.glm.design import Y, covariate_columns, design_expression
from ehds.analyses.glm.parameters import GlmParameters
from ehds.analyses.person_time import cohort_table

from .parameters import FlParameters

OUTCOME: Final = "y"
BATCH_ROWS: Final = 65_536


@dataclass
class ExtractSummary:
    rows: int
    events: int
    columns: list[str]


def glm_parameters(params: FlParameters) -> GlmParameters:
    """The logistic GLM whose design rows are the extract's rows."""
    return GlmParameters(
        family="binomial",
        target=params.target,
        outcome=params.outcome,
        covariates=list(params.covariates),
    )


def _batches(engine: IbisCdm, expr: Any) -> Any:
    """Arrow record batches of ``expr``, streamed where the engine can.

    DuckDB: the query's own Arrow reader (Ibis' batch path calls a cursor method DuckDB 1.5
    deprecates). PostgreSQL: Ibis' batches. Spark: the driver hands the result over as one
    Arrow table (Ibis' batch path goes through pandas).
    """
    backend: Any = engine.backend
    if engine.kind is EngineKind.DUCKDB:
        backend._run_pre_execute_hooks(expr)
        return backend.raw_sql(backend.compile(expr)).to_arrow_reader(BATCH_ROWS)
    if engine.kind is EngineKind.SPARK:
        backend._run_pre_execute_hooks(expr)
        table: pa.Table = backend._session.sql(backend.compile(expr)).toArrow()
        return iter(table.to_batches(max_chunksize=BATCH_ROWS))
    return backend.to_pyarrow_batches(expr, chunk_size=BATCH_ROWS)


def build_extract(ctx: ComputeContext, params: FlParameters, path: Path) -> ExtractSummary:
    names = params.feature_names
    if OUTCOME in names:
        raise ValueError(f"a feature of an fl study may not be called {OUTCOME!r}")
    engine = ctx.require_engine()
    glm = glm_parameters(params)
    source = covariate_columns(glm)
    schema = pa.schema([(OUTCOME, pa.float64()), *((n, pa.float64()) for n in names)])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows = events = 0
    try:
        with (
            cohort_table(engine, glm.target) as target,
            cohort_table(engine, glm.outcome.cohort) as outcome,
        ):
            assert target is not None
            ctx.check_cancelled()
            design = design_expression(engine, glm, target, outcome)
            design = design.drop_null([Y, *source]).order_by("person_id")
            expr = design.select("person_id", Y, *source)
            with pq.ParquetWriter(temporary, schema) as writer:
                for batch in _batches(engine, expr):
                    ctx.check_cancelled()
                    columns = [batch.column(Y).cast(pa.float64())]
                    columns += [batch.column(c).cast(pa.float64()) for c in source]
                    out = pa.RecordBatch.from_arrays(columns, schema=schema)
                    writer.write_batch(out)
                    rows += out.num_rows
                    events += int(pc.sum(columns[0]).as_py() or 0)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return ExtractSummary(rows=rows, events=events, columns=[OUTCOME, *names])


__all__ = ["OUTCOME", "ExtractSummary", "build_extract", "glm_parameters"]
