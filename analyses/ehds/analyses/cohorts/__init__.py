"""Cohorts: a YAML cohort language and ATLAS/Circe JSON, executed by circe through Ibis.

language.py  the YAML language (typed, strict; errors name their path)
compile.py   YAML -> ATLAS JSON (the language's semantics, construct by construct)
atlas.py     ATLAS JSON -> circe expression: the supported subset, the rest rejected by name
spec.py      CohortSpec (what analyses take), loading files, fingerprint
execute.py   materialise a cohort in the engine's results place; cleanup
render.py    a readable summary (``ehds cohort check``)

Public API (what analyses and the CLI call)::

    spec = load_cohort_file("t2dm.yaml")           # or CohortSpec(name=..., yaml={...})
    table = materialize(engine, spec)             # person_id, cohort_start_date, cohort_end_date
    ctx.check_population(table.select("person_id").distinct(), fingerprint=fingerprint(spec))
    ...
    drop(engine, table)
"""

from .atlas import REJECTED_CRITERIA, SUPPORTED_CRITERIA, parse_atlas
from .errors import CohortDefinitionError, UnsupportedCohortError
from .execute import (
    COHORT_COLUMNS,
    CohortExecutionError,
    drop,
    drop_stale_staging,
    materialize,
)
from .language import CohortDocument
from .render import describe
from .spec import CohortSpec, atlas_json, fingerprint, load_cohort_file, make_spec, to_circe

__all__ = [
    "COHORT_COLUMNS",
    "REJECTED_CRITERIA",
    "SUPPORTED_CRITERIA",
    "CohortDefinitionError",
    "CohortDocument",
    "CohortExecutionError",
    "CohortSpec",
    "UnsupportedCohortError",
    "atlas_json",
    "describe",
    "drop",
    "drop_stale_staging",
    "fingerprint",
    "load_cohort_file",
    "make_spec",
    "materialize",
    "parse_atlas",
    "to_circe",
]
