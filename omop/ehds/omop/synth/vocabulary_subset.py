"""The small vocabulary the synthetic CDM ships with: every concept it writes, and their real
hierarchy.

The rows live in ``vocabulary_subset.json`` beside this module, extracted by
``omop/scripts/extract_synth_vocabulary.py`` from the OHDSI Eunomia GiBleed CDM (concepts and
the real SNOMED/RxNorm ``concept_ancestor`` hierarchy; OHDSI vocabulary v5.0 18-JAN-19), from
the OHDSI Synthea27Nj CDM for concepts GiBleed lacks (vital signs, units, type 2 diabetes,
hypertension) and, for five concepts in neither, rows copied from the OMOP standardized
vocabularies (Athena). The file's ``about`` header lists which concept came from where.

Shipping the vocabulary with the data makes a synthetic node self-contained: cohort
definitions that say "concept X and its descendants" run on it as on a real node.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pyarrow as pa

from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase, tables_of
from ehds.omop.schema.layout import Tier

DATA_FILE = "vocabulary_subset.json"

_SCHEMAS: Mapping[str, pa.Schema] = {
    "concept": pa.schema(
        [
            ("concept_id", pa.int32()),
            ("concept_name", pa.string()),
            ("domain_id", pa.string()),
            ("vocabulary_id", pa.string()),
            ("concept_class_id", pa.string()),
            ("standard_concept", pa.string()),
            ("concept_code", pa.string()),
            ("valid_start_date", pa.date32()),
            ("valid_end_date", pa.date32()),
            ("invalid_reason", pa.string()),
        ]
    ),
    "concept_ancestor": pa.schema(
        [
            ("ancestor_concept_id", pa.int32()),
            ("descendant_concept_id", pa.int32()),
            ("min_levels_of_separation", pa.int32()),
            ("max_levels_of_separation", pa.int32()),
        ]
    ),
    "vocabulary": pa.schema(
        [
            ("vocabulary_id", pa.string()),
            ("vocabulary_name", pa.string()),
            ("vocabulary_reference", pa.string()),
            ("vocabulary_version", pa.string()),
            ("vocabulary_concept_id", pa.int32()),
        ]
    ),
    "domain": pa.schema(
        [
            ("domain_id", pa.string()),
            ("domain_name", pa.string()),
            ("domain_concept_id", pa.int32()),
        ]
    ),
}


@dataclass(frozen=True)
class VocabularySubset:
    """The subset's tables as Arrow, ready for ``BulkWriter.insert_arrow``."""

    tables: Mapping[str, pa.Table]
    vocabulary_version: str

    @property
    def concept_ids(self) -> frozenset[int]:
        return frozenset(self.tables["concept"].column("concept_id").to_pylist())


def _convert(value: Any, field: pa.Field) -> Any:
    if value is not None and pa.types.is_date32(field.type):
        return dt.date.fromisoformat(value)
    return value


def _table(name: str, columns: list[str], rows: list[list[Any]]) -> pa.Table:
    schema = _SCHEMAS[name]
    if columns != schema.names:
        raise ValueError(
            f"{DATA_FILE}: table {name} has columns {columns}, expected {schema.names}"
        )
    arrays = [
        pa.array([_convert(row[i], field) for row in rows], type=field.type)
        for i, field in enumerate(schema)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def load_vocabulary_subset() -> VocabularySubset:
    text = resources.files("ehds.omop.synth").joinpath(DATA_FILE).read_text(encoding="utf-8")
    document = json.loads(text)
    tables = {
        name: _table(name, body["columns"], body["rows"])
        for name, body in document["tables"].items()
    }
    return VocabularySubset(tables, str(document["about"]["vocabulary_version"]))


def install_vocabulary_subset(db: CdmDatabase) -> dict[str, int]:
    """Replace ``db``'s vocabulary tier with the subset; create the other tables if missing.

    For a CDM built by a connector rather than by the generator (the demo's FHIR-fed node):
    the subset's standard SNOMED and RxNorm concepts map the source codes they cover, and its
    hierarchy lets the demo's cohorts run there as on a synthetic node. One transaction."""
    subset = load_vocabulary_subset()
    rows: dict[str, int] = {}
    with bulk_writer(db) as writer:
        writer.replace_tables(tables_of([Tier.VOCAB]))
        writer.ensure_tables(tables_of([Tier.CDM, Tier.RESULTS]))
        for name, table in subset.tables.items():
            writer.insert_arrow(name, table)
            rows[name] = table.num_rows
    return rows
