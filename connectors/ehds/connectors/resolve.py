"""SQL that turns staged rows into OMOP rows: source keys into ids, source codes into concepts.

The same text runs in DuckDB (the commit) and in Spark SQL (the Spark jobs), so it is
generated here, over *named relations* the caller provides, for ``dialect`` ``"duckdb"`` or
``"spark"``. Relation names are pasted as given (qualify or quote them yourself).

Signatures (stable; helper E builds on them)::

    normalize_sql(table, relation, present, dialect) -> str
        every staged_schema(table) column from `relation` (absent ones as typed NULLs, the
        others cast to the staged type) plus `_rank` (1 for the first row of a `_key`, ordered
        by `_source`; duplicates are quarantined as `key.duplicate`).
    staged_codes_sql(table, staged, dialect) -> str | None
        (vocabulary_id, code): the distinct source codes of a normalized relation.
    code_map_sql(codes, *, concept, concept_relationship, source_to_concept_map, dialect) -> str
        (vocabulary_id, code, source_concept_id, concept_id, mapped_by) per distinct code of
        `codes` (a relation of (vocabulary_id, code), duplicates allowed).
    new_ids_sql(table, staged, id_map, id_offset, dialect) -> str
        (table_name, source_key, id) for the keys of `staged` not yet in `id_map`.
    resolve_sql(table, *, staged, ids, fk_ids, code_map, dialect) -> str
        the OMOP columns of `table` (model order, typed as the model) + `_key`, `_source`,
        `_rank`, `_reason`, `_detail` (NULL for a row to write) + `_unresolved__<fk>` booleans +
        the `X__vocab`/`X__code` pairs (for the mapping report).
    omop_columns(table) -> list[str]          the columns to insert, model order.

Relations: ``id_map``/``ids``/``fk_ids`` have columns (table_name, source_key, id);
``ids`` must hold every key of ``staged`` (run ``new_ids_sql`` first); ``fk_ids`` holds the
keys foreign keys may resolve to (this run's keys, plus the persistent map in incremental mode).

Concept rule, per concept column X given as ``X__vocab``/``X__code``:
``X_source_concept_id`` = the concept with that vocabulary_id and concept_code (else the
``source_concept_id`` of a matching ``source_to_concept_map`` row, else 0);
X = the target of a valid ``source_to_concept_map`` row (source_vocabulary_id, source_code;
invalid_reason NULL; a target 0 is ignored), else the standard concept the source concept
'Maps to' (relationship valid, target standard 'S'), else the source concept itself when it
is standard, else 0. Several candidates: the smallest concept_id, so that a run is
deterministic. Ids: a new key gets ``max(id of the table in id_map, id_offset) +
row_number() over (order by source_key)``.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import Literal

import pyarrow as pa

from ehds.connectors.ids import (
    CODE_SUFFIX,
    FK_TARGETS,
    KEY,
    KEY_SUFFIX,
    REQUIRED_FK,
    SOURCE,
    VOCAB_SUFFIX,
    concept_columns,
    fk_columns,
    fk_reason,
    id_column,
    omop_table,
    source_partner,
)
from ehds.connectors.staging import arrow_type, staged_schema

Dialect = Literal["duckdb", "spark"]
RANK = "_rank"
REASON = "_reason"
DETAIL = "_detail"
UNRESOLVED_PREFIX = "_unresolved__"

_TYPES: dict[Dialect, dict[str, str]] = {
    "duckdb": {
        "int32": "INTEGER",
        "int64": "BIGINT",
        "double": "DOUBLE",
        "date32[day]": "DATE",
        "timestamp[us]": "TIMESTAMP",
        "string": "VARCHAR",
    },
    "spark": {
        "int32": "INT",
        "int64": "BIGINT",
        "double": "DOUBLE",
        "date32[day]": "DATE",
        "timestamp[us]": "TIMESTAMP",
        "string": "STRING",
    },
}


def sql_type(arrow: pa.DataType, dialect: Dialect) -> str:
    return _TYPES[dialect][str(arrow)]


def quote(name: str, dialect: Dialect) -> str:
    """A column name quoted for ``dialect`` (OMOP has ``offset``, a reserved word)."""
    if dialect == "spark":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def omop_columns(table: str) -> list[str]:
    return [c.name for c in omop_table(table).columns]


def normalize_sql(table: str, relation: str, present: Collection[str], dialect: Dialect) -> str:
    q = partial(quote, dialect=dialect)
    parts = []
    for field_ in staged_schema(table):
        kind = sql_type(field_.type, dialect)
        value = f"s.{q(field_.name)}" if field_.name in present else "NULL"
        parts.append(f"CAST({value} AS {kind}) AS {q(field_.name)}")
    key = f"s.{q(KEY)}" if KEY in present else "NULL"
    source = f"s.{q(SOURCE)}" if SOURCE in present else "NULL"
    parts.append(f"ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {source}) AS {q(RANK)}")
    return f"SELECT {', '.join(parts)} FROM {relation} AS s"


def staged_codes_sql(table: str, staged: str, dialect: Dialect) -> str | None:
    q = partial(quote, dialect=dialect)
    selects = [
        f"SELECT {q(c + VOCAB_SUFFIX)} AS vocabulary_id, {q(c + CODE_SUFFIX)} AS code "
        f"FROM {staged} WHERE {q(c + CODE_SUFFIX)} IS NOT NULL"
        for c in concept_columns(table)
    ]
    if not selects:
        return None
    return "SELECT DISTINCT vocabulary_id, code FROM (" + " UNION ALL ".join(selects) + ") AS c"


def code_map_sql(
    codes: str,
    *,
    concept: str,
    concept_relationship: str,
    source_to_concept_map: str,
    dialect: Dialect,
) -> str:
    integer = sql_type(pa.int32(), dialect)
    return f"""
WITH codes AS (
    SELECT DISTINCT vocabulary_id, code FROM {codes} WHERE code IS NOT NULL
), src AS (
    SELECT c.vocabulary_id, c.code, MIN(co.concept_id) AS concept_id
    FROM codes AS c
    JOIN {concept} AS co ON co.vocabulary_id = c.vocabulary_id AND co.concept_code = c.code
    GROUP BY c.vocabulary_id, c.code
), stcm AS (
    SELECT m.source_vocabulary_id AS vocabulary_id, m.source_code AS code,
           MIN(NULLIF(m.target_concept_id, 0)) AS target,
           MIN(NULLIF(m.source_concept_id, 0)) AS source_concept_id
    FROM {source_to_concept_map} AS m
    JOIN codes AS c ON m.source_vocabulary_id = c.vocabulary_id AND m.source_code = c.code
    WHERE m.invalid_reason IS NULL
    GROUP BY m.source_vocabulary_id, m.source_code
), maps AS (
    SELECT r.concept_id_1 AS concept_id, MIN(r.concept_id_2) AS target
    FROM {concept_relationship} AS r
    JOIN (SELECT DISTINCT concept_id FROM src) AS f ON f.concept_id = r.concept_id_1
    JOIN {concept} AS t ON t.concept_id = r.concept_id_2
    WHERE r.relationship_id = 'Maps to' AND r.invalid_reason IS NULL
      AND t.standard_concept = 'S'
    GROUP BY r.concept_id_1
)
SELECT c.vocabulary_id, c.code,
       CAST(COALESCE(src.concept_id, stcm.source_concept_id, 0) AS {integer})
           AS source_concept_id,
       CAST(COALESCE(stcm.target, maps.target,
                     CASE WHEN sc.standard_concept = 'S' THEN sc.concept_id END, 0)
            AS {integer}) AS concept_id,
       CASE WHEN stcm.target IS NOT NULL THEN 'source_to_concept_map'
            WHEN maps.target IS NOT NULL THEN 'maps_to'
            WHEN sc.standard_concept = 'S' THEN 'standard'
            ELSE 'unmapped' END AS mapped_by
FROM codes AS c
LEFT JOIN src ON src.vocabulary_id = c.vocabulary_id AND src.code = c.code
LEFT JOIN stcm ON stcm.vocabulary_id = c.vocabulary_id AND stcm.code = c.code
LEFT JOIN maps ON maps.concept_id = src.concept_id
LEFT JOIN {concept} AS sc ON sc.concept_id = src.concept_id
"""


def new_ids_sql(table: str, staged: str, id_map: str, id_offset: int, dialect: Dialect) -> str:
    q = partial(quote, dialect=dialect)
    bigint = sql_type(pa.int64(), dialect)
    name = _literal(table)
    return f"""
SELECT {name} AS table_name, k.source_key,
       CAST(b.base + ROW_NUMBER() OVER (ORDER BY k.source_key) AS {bigint}) AS id
FROM (SELECT DISTINCT {q(KEY)} AS source_key FROM {staged} WHERE {q(KEY)} IS NOT NULL) AS k
LEFT JOIN (SELECT source_key FROM {id_map} WHERE table_name = {name}) AS m
    ON m.source_key = k.source_key
CROSS JOIN (
    SELECT GREATEST(COALESCE(MAX(id), 0), {int(id_offset)}) AS base
    FROM {id_map} WHERE table_name = {name}
) AS b
WHERE m.source_key IS NULL
"""


def resolve_sql(
    table: str, *, staged: str, ids: str, fk_ids: str, code_map: str, dialect: Dialect
) -> str:
    q = partial(quote, dialect=dialect)
    model = omop_table(table)
    own = id_column(table)
    joins: list[str] = []
    values: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    conditions: list[tuple[str, str, str]] = [
        (f"s.{q(KEY)} IS NULL", "key.missing", f"{KEY} is required"),
        (f"s.{q(RANK)} > 1", "key.duplicate", f"another staged {table} row has the same {KEY}"),
    ]
    if own is not None:
        joins.append(
            f"LEFT JOIN {ids} AS own ON own.table_name = {_literal(table)} "
            f"AND own.source_key = s.{q(KEY)}"
        )
        values[own] = "own.id"
    for index, fk in enumerate(fk_columns(table)):
        alias = f"fk{index}"
        key = f"s.{q(fk + KEY_SUFFIX)}"
        if table == "death" and fk == "person_id":
            key = f"COALESCE({key}, s.{q(KEY)})"
        joins.append(
            f"LEFT JOIN {fk_ids} AS {alias} ON {alias}.table_name = "
            f"{_literal(FK_TARGETS[fk])} AND {alias}.source_key = {key}"
        )
        values[fk] = f"CASE WHEN {key} IS NOT NULL THEN {alias}.id ELSE s.{q(fk)} END"
        missing = f"({key} IS NOT NULL AND {alias}.id IS NULL)"
        if fk in REQUIRED_FK:
            conditions.append(
                (
                    f"({missing} OR ({key} IS NULL AND s.{q(fk)} IS NULL))",
                    fk_reason(fk),
                    f"{fk + KEY_SUFFIX} names no {FK_TARGETS[fk]} of this run or the id map",
                )
            )
        else:
            unresolved[fk] = missing
    for index, concept in enumerate(concept_columns(table)):
        alias = f"cm{index}"
        vocab, code = q(concept + VOCAB_SUFFIX), q(concept + CODE_SUFFIX)
        joins.append(
            f"LEFT JOIN {code_map} AS {alias} ON {alias}.vocabulary_id = s.{vocab} "
            f"AND {alias}.code = s.{code}"
        )
        values[concept] = (
            f"CASE WHEN s.{code} IS NOT NULL THEN COALESCE({alias}.concept_id, 0) "
            f"ELSE s.{q(concept)} END"
        )
        partner = source_partner(table, concept)
        if partner is not None:
            values[partner] = (
                f"CASE WHEN s.{code} IS NOT NULL THEN COALESCE({alias}.source_concept_id, 0) "
                f"ELSE s.{q(partner)} END"
            )
    selects: list[str] = []
    for column in model.columns:
        kind = sql_type(arrow_type(column), dialect)
        value = values.get(column.name, f"s.{q(column.name)}")
        length = getattr(column.type, "length", None)
        if length and kind in ("VARCHAR", "STRING"):
            value = f"SUBSTR({value}, 1, {int(length)})"
        if not column.nullable and column.name.endswith("_concept_id"):
            value = f"COALESCE({value}, 0)"
        elif not column.nullable and column.name != own and column.name not in REQUIRED_FK:
            conditions.append(
                (f"({value}) IS NULL", "omop.required_missing", f"{column.name} is required")
            )
        selects.append(f"CAST({value} AS {kind}) AS {q(column.name)}")
    reason = " ".join(f"WHEN {cond} THEN {_literal(code)}" for cond, code, _ in conditions)
    detail = " ".join(f"WHEN {cond} THEN {_literal(text)}" for cond, _, text in conditions)
    selects += [
        f"s.{q(KEY)} AS {q(KEY)}",
        f"s.{q(SOURCE)} AS {q(SOURCE)}",
        f"s.{q(RANK)} AS {q(RANK)}",
        f"CASE {reason} END AS {q(REASON)}",
        f"CASE {detail} END AS {q(DETAIL)}",
    ]
    selects += [f"{cond} AS {q(UNRESOLVED_PREFIX + fk)}" for fk, cond in unresolved.items()]
    for concept in concept_columns(table):
        selects += [f"s.{q(concept + VOCAB_SUFFIX)}", f"s.{q(concept + CODE_SUFFIX)}"]
    return f"SELECT {', '.join(selects)} FROM {staged} AS s " + " ".join(joins)
