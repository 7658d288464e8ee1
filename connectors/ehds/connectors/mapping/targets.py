"""What a table mapping may write: the OMOP columns of a table, sorted by how they are staged.

Derived from the generated models (themselves generated from the official CDM v5.4 CSV) and
from the framework's key rules (``ehds.connectors.ids``), so a mapping is checked against the
same specification the database is created from:

- the table's own id column is never mapped: the commit assigns it from the source key;
- FK columns (``person_id``, ``visit_occurrence_id``...) are given as the *source key* of the
  row they point to, under ``references``;
- concept columns may be given as an integer (``columns``) or as vocabulary + source code
  (``concepts``), which the commit resolves;
- everything else is a typed value under ``columns``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import sqlalchemy as sa

from ehds.connectors.ids import concept_columns, fk_columns, id_column, omop_table
from ehds.omop.schema.layout import CDM_TABLES

ValueKind = Literal["integer", "float", "date", "datetime", "text"]

SQL_TYPES: dict[ValueKind, str] = {
    "integer": "INTEGER",
    "float": "DOUBLE",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "text": "VARCHAR",
}
"""The DuckDB type each kind is cast to (sqlglot writes the Spark equivalents)."""

NOT_MAPPABLE = frozenset({"cdm_source", "metadata"})
"""CDM tables that describe the database rather than hold source records."""


@dataclass(frozen=True)
class TargetColumn:
    name: str
    kind: ValueKind
    length: int | None  # the varchar length of text columns, None for unbounded
    required: bool

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.kind]


@dataclass(frozen=True)
class TargetTable:
    name: str
    id_column: str | None
    columns: dict[str, TargetColumn]  # every OMOP column but the id column
    references: tuple[str, ...]  # FK columns given as source keys
    concepts: tuple[str, ...]  # concept columns that may be given by code

    def value_column(self, name: str) -> TargetColumn | None:
        """A column that ``columns`` may set (any but the id and the FK columns)."""
        if name == self.id_column or name in self.references:
            return None
        return self.columns.get(name)

    @property
    def required_values(self) -> list[str]:
        """NOT NULL columns a row cannot do without (concepts default to 0, FKs are keys)."""
        return [
            c.name
            for c in self.columns.values()
            if c.required and c.name not in self.references and c.name not in self.concepts
        ]

    def source_value_partner(self, concept: str) -> str | None:
        """``condition_source_value`` for ``condition_concept_id``: filled with the code of a
        concept lookup unless mapped explicitly."""
        partner = concept.removesuffix("_concept_id") + "_source_value"
        column = self.columns.get(partner)
        return None if column is None or column.kind != "text" else partner


def mappable_tables() -> list[str]:
    return [t for t in CDM_TABLES if t not in NOT_MAPPABLE]


def _kind(column: sa.Column[object]) -> tuple[ValueKind, int | None]:
    type_ = column.type
    if isinstance(type_, sa.Integer):
        return "integer", None
    if isinstance(type_, sa.Float):
        return "float", None
    if isinstance(type_, sa.DateTime):
        return "datetime", None
    if isinstance(type_, sa.Date):
        return "date", None
    if isinstance(type_, sa.String):
        return "text", type_.length
    raise TypeError(f"{column.table.name}.{column.name}: unexpected model type {type_!r}")


@cache
def target_table(name: str) -> TargetTable | None:
    """The mapping view of OMOP table ``name``; None when it cannot be mapped."""
    if name not in mappable_tables():
        return None
    model = omop_table(name)
    own = id_column(name)
    columns: dict[str, TargetColumn] = {}
    for column in model.columns:
        if column.name == own:
            continue
        kind, length = _kind(column)
        columns[column.name] = TargetColumn(column.name, kind, length, not column.nullable)
    return TargetTable(name, own, columns, tuple(fk_columns(name)), tuple(concept_columns(name)))
