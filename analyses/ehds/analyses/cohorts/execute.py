"""Run a cohort on a node's engine with circe's Ibis executor; leave one table, nothing else.

Why circe's executor: one execution path for YAML and ATLAS cohorts, compiled by Ibis for
DuckDB, PostgreSQL and Spark (identical counts verified on DuckDB and Spark).

Why our own session prefix: circe stages intermediate results in tables named
``<prefix>__staging_*`` and ``<prefix>__codesets`` in the results schema and, left to
choose the prefix itself, also records it in a ``_circe_session`` table. Passing a prefix
skips that registry; the prefix carries its creation time (``__c_ehds_<unix seconds>_<hex>_``),
so :func:`drop_stale_staging` can reclaim the tables of a crashed task without a registry
that concurrent tasks would have to share.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
import warnings

import ibis.expr.operations as ops
import ibis.expr.types as ir
from circe.execution.api import build_cohort
from circe.execution.engine.cohort import _drop_staging_tables
from circe.execution.errors import (
    ExecutionError,
    UnsupportedCriterionError,
    UnsupportedFeatureError,
)

from ehds.analyses.engine import IbisCdm

from .errors import UnsupportedCohortError
from .spec import CohortSpec, to_circe

logger = logging.getLogger(__name__)

COHORT_COLUMNS = ("person_id", "cohort_start_date", "cohort_end_date")
_STAGING = re.compile(r"^__c_ehds_(\d+)_[0-9a-f]+_")


class CohortExecutionError(RuntimeError):
    """circe failed to run a validated cohort on this engine (a bug or an engine problem,
    not the researcher's input)."""


def materialize(engine: IbisCdm, spec: CohortSpec) -> ir.Table:
    """The cohort's entries, materialised as a table in the engine's results place.

    Columns ``person_id`` (int64), ``cohort_start_date``, ``cohort_end_date`` (date), one row
    per cohort entry. The caller owns the table: :func:`drop` it when done. circe's staging
    tables are dropped before this returns, whether it succeeds or not.
    """
    expression = to_circe(spec)
    prefix = f"__c_ehds_{int(time.time())}_{uuid.uuid4().hex[:8]}_"
    name = engine.scratch_name("cohort")
    try:
        relation = build_cohort(
            expression,
            backend=engine.backend,
            cdm_schema=engine.cdm_database,
            vocabulary_schema=engine.vocab_database,
            results_schema=engine.results_database,
            cohort_id=1,
            session_prefix=prefix,
        )
        entries = relation.select(
            relation.person_id.cast("int64").name("person_id"),
            relation.start_date.cast("date").name("cohort_start_date"),
            relation.end_date.cast("date").name("cohort_end_date"),
        )
        return engine.create_results_table(name, entries)
    except (UnsupportedCriterionError, UnsupportedFeatureError) as exc:
        raise UnsupportedCohortError(f"cohort {spec.name!r}: not supported: {exc}") from None
    except ExecutionError as exc:
        raise CohortExecutionError(f"cohort {spec.name!r}: circe failed: {exc}") from exc
    finally:
        _drop_staging_tables(engine.backend, engine.results_database, prefix)


def drop(engine: IbisCdm, table: ir.Table) -> None:
    """Drop a table returned by :func:`materialize` (no error if it is already gone)."""
    op = table.op()
    if not isinstance(op, ops.DatabaseTable):
        raise TypeError("drop() takes a table returned by materialize()")
    engine.drop_results_table(op.name)


def results_tables(engine: IbisCdm) -> list[str]:
    """Names of the tables in the engine's results place.

    ibis 12's DuckDB ``list_tables`` calls a method DuckDB 1.5 deprecates; the warning is
    about ibis' internals, not ours, so it is silenced for this one call.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(engine.backend.list_tables(database=engine.results_database))


def drop_stale_staging(engine: IbisCdm, *, older_than_seconds: float = 86_400.0) -> list[str]:
    """Drop circe staging tables this module left behind (a task killed mid-build) that are
    older than ``older_than_seconds``; younger ones may belong to a running task."""
    cutoff = time.time() - older_than_seconds
    dropped = []
    for table in results_tables(engine):
        match = _STAGING.match(table)
        if match and int(match.group(1)) < cutoff:
            with contextlib.suppress(Exception):
                engine.backend.drop_table(table, database=engine.results_database, force=True)
                dropped.append(table)
    if dropped:
        logger.info("dropped %d stale cohort staging tables", len(dropped))
    return dropped
