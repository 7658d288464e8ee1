"""Domain routing: the domain of a row's standard concept decides its OMOP table.

OHDSI's convention: a source record goes to the event table of its *standard concept's
domain*, not of the source table it came from. A FHIR Condition coded SNOMED "Full-time
employment" (domain Observation) is an ``observation`` row; a Synthea procedure whose concept
is in the Measurement domain is a ``measurement`` row. Connectors stage by source type; the
commit moves such rows after the codes are mapped and before ids are assigned, so that the
moved row gets an id of its new table (its key prefixed with the origin table, e.g.
``condition_occurrence:Condition/3f1c``: unique there, and the same on every run).

A moved row's columns are translated **by role** (``ROLES``: person, visit, start date, type
concept, quantity, value...), source keys (``__key``) and source codes (``__vocab``/``__code``)
with their column, so the resolution of the new table computes its concepts (and
``*_source_concept_id``) itself. A required column of the new table that the origin lacks gets
the OHDSI default (``DEFAULTS``: an end date that must be given is the start date). Rows whose
concept is unmapped (0), not standard, or of a domain none of these tables hold (Visit, Spec
Anatomic Site...) stay where they are.

SQL, generated for ``dialect`` ``"duckdb"`` or ``"spark"`` over named relations, like
``resolve``::

    route_sql(table, *, staged, code_map, concept, dialect) -> str
        every column of `staged` (a normalized relation of `table`, see resolve.normalize_sql)
        plus `_route`: the table the row moves to, NULL when it stays.
    kept_sql(table, routed, dialect) -> str
        the rows of `routed` that stay, as normalized staged rows of `table`.
    moved_sql(origin, target, routed, dialect) -> str
        the rows of `routed` (route_sql of `origin`) that move to `target`, as normalized
        staged rows of `target` (every staged_schema(target) column, typed, plus `_rank`).

``concept`` needs the columns concept_id, domain_id, standard_concept; ``code_map`` is the
output of ``resolve.code_map_sql``.
"""

from __future__ import annotations

from functools import partial
from typing import Final

from ehds.connectors.ids import CODE_SUFFIX, KEY, KEY_SUFFIX, SOURCE, VOCAB_SUFFIX, omop_table
from ehds.connectors.resolve import RANK, Dialect, quote, sql_type
from ehds.connectors.staging import staged_schema

ROUTE = "_route"

DOMAIN_TABLES: Final[dict[str, str]] = {
    "Condition": "condition_occurrence",
    "Procedure": "procedure_occurrence",
    "Measurement": "measurement",
    "Observation": "observation",
    "Drug": "drug_exposure",
    "Device": "device_exposure",
}
"""The concept domains that have an event table, and that table."""

ROUTED_TABLES: Final = tuple(DOMAIN_TABLES.values())

_COMMON: Final = {
    "person": "person_id",
    "visit": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "provider": "provider_id",
}

ROLES: Final[dict[str, dict[str, str]]] = {
    "condition_occurrence": {
        **_COMMON,
        "concept": "condition_concept_id",
        "source_concept": "condition_source_concept_id",
        "source_value": "condition_source_value",
        "start_date": "condition_start_date",
        "start_datetime": "condition_start_datetime",
        "end_date": "condition_end_date",
        "end_datetime": "condition_end_datetime",
        "type_concept": "condition_type_concept_id",
        "stop_reason": "stop_reason",
    },
    "procedure_occurrence": {
        **_COMMON,
        "concept": "procedure_concept_id",
        "source_concept": "procedure_source_concept_id",
        "source_value": "procedure_source_value",
        "start_date": "procedure_date",
        "start_datetime": "procedure_datetime",
        "end_date": "procedure_end_date",
        "end_datetime": "procedure_end_datetime",
        "type_concept": "procedure_type_concept_id",
        "quantity": "quantity",
    },
    "measurement": {
        **_COMMON,
        "concept": "measurement_concept_id",
        "source_concept": "measurement_source_concept_id",
        "source_value": "measurement_source_value",
        "start_date": "measurement_date",
        "start_datetime": "measurement_datetime",
        "type_concept": "measurement_type_concept_id",
        "value_as_number": "value_as_number",
        "value_as_concept": "value_as_concept_id",
        "unit": "unit_concept_id",
        "unit_source_value": "unit_source_value",
        "value_source_value": "value_source_value",
    },
    "observation": {
        **_COMMON,
        "concept": "observation_concept_id",
        "source_concept": "observation_source_concept_id",
        "source_value": "observation_source_value",
        "start_date": "observation_date",
        "start_datetime": "observation_datetime",
        "type_concept": "observation_type_concept_id",
        "value_as_number": "value_as_number",
        "value_as_string": "value_as_string",
        "value_as_concept": "value_as_concept_id",
        "unit": "unit_concept_id",
        "unit_source_value": "unit_source_value",
        "value_source_value": "value_source_value",
    },
    "drug_exposure": {
        **_COMMON,
        "concept": "drug_concept_id",
        "source_concept": "drug_source_concept_id",
        "source_value": "drug_source_value",
        "start_date": "drug_exposure_start_date",
        "start_datetime": "drug_exposure_start_datetime",
        "end_date": "drug_exposure_end_date",
        "end_datetime": "drug_exposure_end_datetime",
        "type_concept": "drug_type_concept_id",
        "quantity": "quantity",
        "stop_reason": "stop_reason",
    },
    "device_exposure": {
        **_COMMON,
        "concept": "device_concept_id",
        "source_concept": "device_source_concept_id",
        "source_value": "device_source_value",
        "start_date": "device_exposure_start_date",
        "start_datetime": "device_exposure_start_datetime",
        "end_date": "device_exposure_end_date",
        "end_datetime": "device_exposure_end_datetime",
        "type_concept": "device_type_concept_id",
        "quantity": "quantity",
        "unit": "unit_concept_id",
        "unit_source_value": "unit_source_value",
    },
}
"""Per event table, the column that plays each role. A role the target has and the origin
lacks is NULL (or its default); a role the origin has and the target lacks is dropped
(a condition's status, a measurement's range: no equivalent in the other table)."""

DEFAULTS: Final[dict[str, tuple[str, ...]]] = {
    "start_date": ("start_datetime",),
    "end_date": ("end_datetime", "start_date", "start_datetime"),
}
"""When a role the target *requires* (``drug_exposure_end_date``...) is missing: the first
of these roles that the origin has, in order (dates taken from datetimes). OHDSI's default
for a drug exposure without an end is its start."""


def main_concept(table: str) -> str:
    """The concept column whose domain decides the table (``condition_concept_id``)."""
    return ROLES[table]["concept"]


def _required(table: str, column: str) -> bool:
    return not omop_table(table).columns[column].nullable


def route_sql(table: str, *, staged: str, code_map: str, concept: str, dialect: Dialect) -> str:
    q = partial(quote, dialect=dialect)
    main = main_concept(table)
    vocab, code = q(main + VOCAB_SUFFIX), q(main + CODE_SUFFIX)
    resolved = f"CASE WHEN s.{code} IS NOT NULL THEN cm.concept_id ELSE s.{q(main)} END"
    routes = " ".join(
        f"WHEN '{domain}' THEN '{target}'"
        for domain, target in DOMAIN_TABLES.items()
        if target != table
    )
    return (
        f"SELECT s.*, CASE WHEN d.standard_concept = 'S' THEN CASE d.domain_id {routes} END "
        f"END AS {q(ROUTE)} FROM {staged} AS s "
        f"LEFT JOIN {code_map} AS cm ON cm.vocabulary_id = s.{vocab} AND cm.code = s.{code} "
        f"LEFT JOIN {concept} AS d ON d.concept_id = {resolved} AND d.concept_id <> 0"
    )


def kept_sql(table: str, routed: str, dialect: Dialect) -> str:
    q = partial(quote, dialect=dialect)
    columns = [f.name for f in staged_schema(table)] + [RANK]
    return f"SELECT {', '.join(q(c) for c in columns)} FROM {routed} WHERE {q(ROUTE)} IS NULL"


def _translation(origin: str, target: str) -> dict[str, str]:
    """Target staged column -> origin staged column, by role (with keys and codes)."""
    source_roles, target_roles = ROLES[origin], ROLES[target]
    pairs = {
        target_roles[role]: column for role, column in source_roles.items() if role in target_roles
    }
    origin_columns = set(staged_schema(origin).names)
    out: dict[str, str] = {}
    for to, frm in pairs.items():
        for suffix in ("", KEY_SUFFIX, VOCAB_SUFFIX, CODE_SUFFIX):
            if frm + suffix in origin_columns and to + suffix in staged_schema(target).names:
                out[to + suffix] = frm + suffix
    return out


def _defaults(origin: str, role: str, dialect: Dialect) -> list[str]:
    """Expressions (over the origin's row) that fill required role ``role`` when NULL."""
    q = partial(quote, dialect=dialect)
    out = []
    for fallback in DEFAULTS.get(role, ()):
        column = ROLES[origin].get(fallback)
        if column is not None:
            value = f"r.{q(column)}"
            out.append(value if fallback.endswith("date") else f"CAST({value} AS DATE)")
    return out


def moved_sql(origin: str, target: str, routed: str, dialect: Dialect) -> str:
    q = partial(quote, dialect=dialect)
    translation = _translation(origin, target)
    roles = {column: role for role, column in ROLES[target].items()}
    parts = []
    for field_ in staged_schema(target):
        name = field_.name
        kind = sql_type(field_.type, dialect)
        if name == KEY:
            value = f"'{routed_key_prefix(origin)}' || r.{q(KEY)}"
        elif name == SOURCE:
            value = f"r.{q(SOURCE)}"
        elif name in translation:
            value = f"r.{q(translation[name])}"
        else:
            value = "NULL"
        role = roles.get(name)
        if role is not None and role in DEFAULTS and _required(target, name):
            candidates = ([] if value == "NULL" else [value]) + _defaults(origin, role, dialect)
            if candidates:
                value = f"COALESCE({', '.join(candidates)})"
        parts.append(f"CAST({value} AS {kind}) AS {q(name)}")
    parts.append(f"r.{q(RANK)} AS {q(RANK)}")
    return f"SELECT {', '.join(parts)} FROM {routed} AS r WHERE r.{q(ROUTE)} = '{target}'"


def routed_key_prefix(origin: str) -> str:
    """What a moved row's ``_key`` starts with: its origin table (``condition_occurrence:``),
    so that it is unique in its new table and the same on every run."""
    return origin + ":"
