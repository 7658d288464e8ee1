"""Which OMOP CDM version a source is, and the 5.3 -> 5.4 upgrade, written as data.

The version comes from ``cdm_source.cdm_version`` ("v5.3.1", "5.3", "5.4"...) when the source
fills it, else from columns only one version has. The upgrade is what the OHDSI
specifications of 5.3.1 and 5.4 differ by: a few renamed columns, two new tables, two dropped
tables and new nullable columns (which simply stay NULL). Nothing else changes, so an upgrade
is a column mapping plus two constants in ``cdm_source``, applied during the load itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ehds.omop.loader.errors import Location, UnsupportedVersionError

CDM_V54_CONCEPT_ID = 756265
"""Concept "OMOP CDM Version 5.4" (vocabulary "CDM")."""

SUPPORTED = ("5.3", "5.4")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


@dataclass(frozen=True)
class Upgrade:
    from_version: str
    to_version: str
    renamed: Mapping[str, Mapping[str, str]]
    """table -> {old column: new column}"""
    added_tables: tuple[str, ...]
    dropped_tables: tuple[str, ...]
    added_columns: Mapping[str, tuple[str, ...]]
    """table -> columns new in 5.4; documentation and report, they load as NULL ..."""
    constants: Mapping[str, Mapping[str, str]]
    """... except these: table -> {column: SQL expression}."""


_VISIT_RENAMES = {
    "admitting_source_concept_id": "admitted_from_concept_id",
    "admitting_source_value": "admitted_from_source_value",
    "discharge_to_concept_id": "discharged_to_concept_id",
    "discharge_to_source_value": "discharged_to_source_value",
}

UPGRADE_53_TO_54 = Upgrade(
    from_version="5.3",
    to_version="5.4",
    renamed=MappingProxyType(
        {
            "visit_occurrence": MappingProxyType(dict(_VISIT_RENAMES)),
            "visit_detail": MappingProxyType(
                {**_VISIT_RENAMES, "visit_detail_parent_id": "parent_visit_detail_id"}
            ),
        }
    ),
    added_tables=("episode", "episode_event"),
    dropped_tables=("attribute_definition", "cohort_attribute"),
    added_columns=MappingProxyType(
        {
            "procedure_occurrence": ("procedure_end_date", "procedure_end_datetime"),
            "device_exposure": (
                "production_id",
                "unit_concept_id",
                "unit_source_value",
                "unit_source_concept_id",
            ),
            "measurement": (
                "unit_source_concept_id",
                "measurement_event_id",
                "meas_event_field_concept_id",
            ),
            "observation": (
                "value_source_value",
                "observation_event_id",
                "obs_event_field_concept_id",
            ),
            "note": ("note_event_id", "note_event_field_concept_id"),
            "location": ("country_concept_id", "country_source_value", "latitude", "longitude"),
            "metadata": ("metadata_id", "value_as_number"),
            "cdm_source": ("cdm_version_concept_id",),
        }
    ),
    constants=MappingProxyType(
        {
            "cdm_source": MappingProxyType(
                {"cdm_version": "'5.4'", "cdm_version_concept_id": str(CDM_V54_CONCEPT_ID)}
            ),
            # 5.4 made metadata_id the (required) key; 5.3 rows have none: number them.
            "metadata": MappingProxyType({"metadata_id": "CAST(row_number() OVER () AS INTEGER)"}),
        }
    ),
)

_MARKERS_53: Mapping[str, frozenset[str]] = {
    "visit_occurrence": frozenset(_VISIT_RENAMES),
    "visit_detail": frozenset([*_VISIT_RENAMES, "visit_detail_parent_id"]),
}
_MARKERS_54: Mapping[str, frozenset[str]] = {
    "visit_occurrence": frozenset(_VISIT_RENAMES.values()),
    "visit_detail": frozenset([*_VISIT_RENAMES.values(), "parent_visit_detail_id"]),
    "procedure_occurrence": frozenset(["procedure_end_date"]),
    "cdm_source": frozenset(["cdm_version_concept_id"]),
}


@dataclass(frozen=True)
class DetectedVersion:
    version: str
    """"5.3" or "5.4"."""
    declared: str | None
    """cdm_source.cdm_version as the source wrote it, if it did."""
    evidence: str

    @property
    def upgrade(self) -> Upgrade | None:
        return UPGRADE_53_TO_54 if self.version == "5.3" else None


def parse_version(text: str, where: Location) -> str:
    """ "v5.3.1" -> "5.3". The declared text is not quoted in the error (it is data)."""
    match = _VERSION.match(text.strip().lower())
    version = f"{match.group(1)}.{match.group(2)}" if match else None
    if version not in SUPPORTED:
        raise UnsupportedVersionError(
            "cdm_source.cdm_version names a CDM version this loader does not read",
            location=where,
            expected="5.3 or 5.4",
        )
    return version


def detect_version(
    declared: str | None,
    declared_at: Location | None,
    columns: Mapping[str, frozenset[str]],
    tables: frozenset[str],
) -> DetectedVersion:
    """``columns``: lower-case column names per table present in the source."""
    if declared and declared.strip() and declared_at is not None:
        version = parse_version(declared, declared_at)
        return DetectedVersion(version, declared.strip(), "cdm_source.cdm_version")
    old = _has_markers(columns, _MARKERS_53) or any(
        t in tables for t in UPGRADE_53_TO_54.dropped_tables
    )
    new = _has_markers(columns, _MARKERS_54) or any(
        t in tables for t in UPGRADE_53_TO_54.added_tables
    )
    if old and not new:
        return DetectedVersion("5.3", None, "columns and tables only CDM 5.3 has")
    if new and not old:
        return DetectedVersion("5.4", None, "columns and tables only CDM 5.4 has")
    if old and new:
        raise UnsupportedVersionError(
            "the source mixes CDM 5.3 and 5.4 columns and has no cdm_source.cdm_version",
            expected="one CDM version",
        )
    return DetectedVersion("5.4", None, "no version marker: assumed 5.4")


def _has_markers(
    columns: Mapping[str, frozenset[str]], markers: Mapping[str, frozenset[str]]
) -> bool:
    return any(columns.get(table, frozenset()) & names for table, names in markers.items())
