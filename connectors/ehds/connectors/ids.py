"""Which staged columns carry source keys, and which table each key names.

A connector never computes OMOP ids: a row carries its own source key (``_key``) and the
keys of the rows it points to (``person_id__key``...). The commit turns keys into ids through
the persistent id map (``etl.id_map``), so that the same key gets the same id on every run.
"""

from __future__ import annotations

import sqlalchemy as sa

from ehds.core.errors import InputError
from ehds.omop.schema.models import metadata


class UnknownTableError(InputError):
    """A table name that is not an OMOP CDM v5.4 table."""


_TABLES: dict[str, sa.Table] = {t.name: t for t in metadata.sorted_tables}

KEY = "_key"
SOURCE = "_source"
KEY_SUFFIX = "__key"
VOCAB_SUFFIX = "__vocab"
CODE_SUFFIX = "__code"

FK_TARGETS: dict[str, str] = {
    "person_id": "person",
    "visit_occurrence_id": "visit_occurrence",
    "preceding_visit_occurrence_id": "visit_occurrence",
    "visit_detail_id": "visit_detail",
    "preceding_visit_detail_id": "visit_detail",
    "parent_visit_detail_id": "visit_detail",
    "provider_id": "provider",
    "care_site_id": "care_site",
    "location_id": "location",
}
"""Foreign-key columns a staged row may give as a source key, and the table they name."""

_FK_NAMES = {
    "person_id": "person",
    "visit_occurrence_id": "visit",
    "preceding_visit_occurrence_id": "preceding_visit",
    "visit_detail_id": "visit_detail",
    "preceding_visit_detail_id": "preceding_visit_detail",
    "parent_visit_detail_id": "parent_visit_detail",
    "provider_id": "provider",
    "care_site_id": "care_site",
    "location_id": "location",
}
REQUIRED_FK = frozenset({"person_id"})
"""A row whose required FK resolves to nothing is quarantined (``fk.person_missing``);
the other FKs become NULL and are counted (``fk.visit_missing``...)."""


def omop_table(table: str) -> sa.Table:
    """The model of ``table`` (any CDM v5.4 table); a typed error for an unknown name."""
    found = _TABLES.get(table)
    if found is None:
        raise UnknownTableError(f"{table!r} is not an OMOP CDM v5.4 table")
    return found


def id_column(table: str) -> str | None:
    """The primary id column of ``table`` (``condition_occurrence_id``), None for tables
    without a single-column key (``death``)."""
    keys = [c.name for c in omop_table(table).primary_key.columns]
    return keys[0] if len(keys) == 1 else None


def fk_columns(table: str) -> list[str]:
    """The FK columns of ``table`` that a staged row may give as source keys."""
    own = id_column(table)
    return [c.name for c in omop_table(table).columns if c.name in FK_TARGETS and c.name != own]


def fk_reason(column: str) -> str:
    """The reason code of an FK that resolves to nothing (``fk.person_missing``...)."""
    return f"fk.{_FK_NAMES[column]}_missing"


def concept_columns(table: str) -> list[str]:
    """Concept columns that a staged row may give as a source code (``X__vocab``/``X__code``):
    every ``*_concept_id`` but the ``*_source_concept_id`` partners, which the commit fills."""
    return [
        c.name
        for c in omop_table(table).columns
        if c.name.endswith("_concept_id") and not c.name.endswith("_source_concept_id")
    ]


def source_partner(table: str, column: str) -> str | None:
    """``condition_source_concept_id`` for ``condition_concept_id`` when the table has it."""
    partner = column.removesuffix("_concept_id") + "_source_concept_id"
    return partner if partner in omop_table(table).columns else None
