"""The design table of a `glm` study: one row per person, ``person_id, y, log_exposure, x_*``.

Why built once per study, in the study's workspace: every round of the federated fit evaluates
the score and information at new coefficients, and rebuilding the cohorts and features every
round would make a round cost a cohort run. The table lives in the node's results place under
the name its workspace gives (`Workspace.table_name`), never in the CDM, and the node drops it
once the study has been idle for its time-to-live. It is rebuilt when missing (a restart, an
expiry), from the same parameters, so a later round sees the same rows.

Definitions (see `GlmOutcome` and :mod:`ehds.analyses.features`): the population is the
target cohort's persons, index = each person's first entry start.
"""

from __future__ import annotations

from typing import Final

import ibis
import ibis.expr.types as ir
from ibis.common.exceptions import TableNotFound

from ehds.analyses.base import ComputeContext
from ehds.analyses.engine import IbisCdm
from ehds.analyses.features import ConceptWindow, latest_value, with_features
from ehds.analyses.person_time import (
    DAYS_PER_YEAR,
    add_days,
    cohort_table,
    inclusive_days,
    index_dates,
    observed_at_index,
)

from .parameters import GlmParameters

WORKSPACE_PURPOSE: Final = "glm_design"
Y: Final = "y"
LOG_EXPOSURE: Final = "log_exposure"
COVARIATE_PREFIX: Final = "x_"


def covariate_columns(params: GlmParameters) -> list[str]:
    return [COVARIATE_PREFIX + c.name for c in params.covariates]


def _binomial(index: ir.Table, outcome: ir.Table, params: GlmParameters) -> ir.Table:
    entries = outcome.select(
        o_person_id=outcome.person_id.cast("int64"), o_start=outcome.cohort_start_date
    )
    hits = (
        index.join(
            entries,
            [
                index.person_id == entries.o_person_id,
                entries.o_start >= add_days(index.index_date, params.outcome.start_day),
                entries.o_start <= add_days(index.index_date, params.outcome.end_day),
            ],
        )
        .select(h_person_id="person_id")
        .distinct()
    )
    joined = index.left_join(hits, index.person_id == hits.h_person_id)
    return joined.select(
        "person_id",
        "index_date",
        **{
            Y: ibis.ifelse(joined.h_person_id.notnull(), 1.0, 0.0),
            LOG_EXPOSURE: ibis.literal(0.0, type="float64"),
        },
    )


def _poisson(
    engine: IbisCdm, index: ir.Table, outcome: ir.Table, params: GlmParameters
) -> ir.Table:
    holding = observed_at_index(engine, index)
    risk = holding.select(
        "person_id",
        "index_date",
        risk_start=add_days(holding.index_date, params.outcome.start_day),
        risk_end=ibis.least(add_days(holding.index_date, params.outcome.end_day), holding.op_end),
    )
    risk = risk.filter(risk.risk_start <= risk.risk_end)
    entries = outcome.select(
        o_person_id=outcome.person_id.cast("int64"), o_start=outcome.cohort_start_date
    )
    joined = risk.left_join(
        entries,
        [
            risk.person_id == entries.o_person_id,
            entries.o_start >= risk.risk_start,
            entries.o_start <= risk.risk_end,
        ],
    )
    counted = joined.group_by(["person_id", "index_date", "risk_start", "risk_end"]).agg(
        events=joined.o_person_id.count()
    )
    years = inclusive_days(counted.risk_start, counted.risk_end).cast("float64") / DAYS_PER_YEAR
    return counted.select(
        "person_id",
        "index_date",
        **{Y: counted.events.cast("float64"), LOG_EXPOSURE: years.ln()},
    )


def _gaussian(engine: IbisCdm, index: ir.Table, params: GlmParameters) -> ir.Table:
    assert params.outcome.measurement_concept_ids is not None  # validated per family
    window = ConceptWindow(
        concept_ids=params.outcome.measurement_concept_ids,
        include_descendants=params.outcome.include_descendants,
        start_day=params.outcome.start_day,
        end_day=params.outcome.end_day,
    )
    values = latest_value(engine, index, window).rename(v_person_id="person_id")
    joined = index.join(values, index.person_id == values.v_person_id)
    return joined.select(
        "person_id",
        "index_date",
        **{Y: joined.value, LOG_EXPOSURE: ibis.literal(0.0, type="float64")},
    )


def design_expression(
    engine: IbisCdm, params: GlmParameters, target: ir.Table, outcome: ir.Table | None
) -> ir.Table:
    """The design rows as an expression over the materialised cohorts."""
    index = index_dates(target)
    if params.family == "binomial":
        assert outcome is not None
        base = _binomial(index, outcome, params)
    elif params.family == "poisson":
        assert outcome is not None
        base = _poisson(engine, index, outcome, params)
    else:
        base = _gaussian(engine, index, params)
    full = with_features(engine, base, params.covariates, prefix=COVARIATE_PREFIX)
    return full.select("person_id", Y, LOG_EXPOSURE, *covariate_columns(params))


def _existing(engine: IbisCdm, name: str) -> ir.Table | None:
    """The results table ``name`` if it exists (Ibis raises `TableNotFound` on all three
    engines; listing tables would scan the catalog and, on DuckDB, warns)."""
    try:
        return engine.results_table(name)
    except TableNotFound:
        return None


def design_table(ctx: ComputeContext, params: GlmParameters) -> tuple[ir.Table, bool]:
    """The study's design table and whether it was built now (it is reused when present)."""
    engine = ctx.require_engine()
    name = ctx.require_workspace().table_name(WORKSPACE_PURPOSE)
    existing = _existing(engine, name)
    if existing is not None:
        return existing, False
    with (
        cohort_table(engine, params.target) as target,
        cohort_table(engine, params.outcome.cohort) as outcome,
    ):
        assert target is not None
        ctx.check_cancelled()
        table = engine.create_results_table(
            name, design_expression(engine, params, target, outcome)
        )
    return table, True
