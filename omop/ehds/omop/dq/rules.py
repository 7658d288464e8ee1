"""What the OMOP CDM v5.4 specification says about each field, as the checks need it.

The rows live in :mod:`ehds.omop.dq.field_rules`, generated from the official field-level
specification CSV (``isRequired``, ``cdmDatatype``, ``isPrimaryKey``, ``fkTableName``,
``fkFieldName``, ``fkDomain``, ``fkClass``) by :mod:`ehds.omop.dq.generate_rules`. The checks
read these rules rather than hand-written lists, so a field the specification adds is checked
without code changes; the derived notions below (concept fields, event dates) are naming
conventions of the specification, written once here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldRule:
    """One field of a CDM-tier table. Table and field names are lower case; ``fk_domain`` holds
    the allowed ``concept.domain_id`` values (the specification writes several as a list)."""

    table: str
    field: str
    datatype: str  # integer, float, date, datetime or varchar
    required: bool = False
    primary_key: bool = False
    fk_table: str | None = None
    fk_field: str | None = None
    fk_domain: tuple[str, ...] = ()
    fk_class: str | None = None

    @property
    def is_concept(self) -> bool:
        """A foreign key into ``concept`` (standard and source concept fields alike)."""
        return self.fk_table == "concept"

    @property
    def is_source_concept(self) -> bool:
        return self.is_concept and self.field.endswith("_source_concept_id")

    @property
    def is_standard_concept(self) -> bool:
        """A concept field meant to hold a standard concept (or 0): DQD's
        ``isStandardValidConcept`` and ``standardConceptRecordCompleteness`` fields."""
        return self.is_concept and not self.is_source_concept

    @property
    def is_temporal(self) -> bool:
        return self.datatype in ("date", "datetime")
