"""The named checks: what each measures, where DQD files it, and its default threshold.

Names, levels and the Kahn categories (Conformance, Completeness, Plausibility; contexts
Verification and Validation) are those of the OHDSI Data Quality Dashboard (DQD, Apache-2.0),
so that OHDSI's results viewer groups our results as it groups its own. Thresholds are
percentages of violating rows a check tolerates (``0``: any violating row fails the check);
they follow DQD's defaults for CDM v5.4 where DQD has one, and each deviation is written next
to the check and in ``docs/dq.md``. ``withinObservationPeriod`` is ours: DQD has no check for
events outside every observation period, which hides them from most analyses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Level(enum.StrEnum):
    TABLE = "TABLE"
    FIELD = "FIELD"
    CONCEPT = "CONCEPT"


class Category(enum.StrEnum):
    CONFORMANCE = "Conformance"
    COMPLETENESS = "Completeness"
    PLAUSIBILITY = "Plausibility"


@dataclass(frozen=True)
class CheckKind:
    """A named check; ``description`` is a template over ``{table}``, ``{field}`` and the
    check's parameters (``{threshold_value}`` ...), rendered per instance."""

    name: str
    level: Level
    category: Category
    subcategory: str
    context: str
    description: str
    sql_file: str  # the DQD SQL template this check reproduces, for cross-reference

    @property
    def is_conformance(self) -> bool:
        return self.category is Category.CONFORMANCE


C, K, P = Category.CONFORMANCE, Category.COMPLETENESS, Category.PLAUSIBILITY
T, F, X = Level.TABLE, Level.FIELD, Level.CONCEPT
VER, VAL = "Verification", "Validation"

KINDS: dict[str, CheckKind] = {
    k.name: k
    for k in (
        CheckKind("cdmTable", T, C, "Relational", VER,
              "Table {table} exists as the specification requires.", "table_cdm_table.sql"),
        CheckKind("cdmField", F, C, "Relational", VER,
              "Field {field} exists in table {table} as the specification requires.",
              "field_cdm_field.sql"),
        CheckKind("isRequired", F, C, "Relational", VAL,
              "Records of {table} whose required field {field} is NULL.",
              "field_is_not_nullable.sql"),
        CheckKind("cdmDatatype", F, C, "Value", VER,
              "Values of {table}.{field} that are not of the specification's type "
              "({datatype}).", "field_cdm_datatype.sql"),
        CheckKind("isPrimaryKey", F, C, "Relational", VER,
              "Records of {table} whose primary key {field} repeats another record's.",
              "field_is_primary_key.sql"),
        CheckKind("isForeignKey", F, C, "Relational", VER,
              "Records of {table} whose {field} has no match in {fk_table}.{fk_field}.",
              "is_foreign_key.sql"),
        CheckKind("fkDomain", F, C, "Value", VER,
              "Records of {table} whose {field} is a concept outside the domain {fk_domain} "
              "(concept 0 excepted).", "field_fk_domain.sql"),
        CheckKind("fkClass", F, C, "Computational", VER,
              "Records of {table} whose {field} is a concept outside the class {fk_class}.",
              "field_fk_class.sql"),
        CheckKind("isStandardValidConcept", F, C, "Value", VER,
              "Records of {table} whose {field} is not a standard, valid concept "
              "(concept 0 excepted).", "field_is_standard_valid_concept.sql"),
        CheckKind("measurePersonCompleteness", T, K, "", VAL,
              "Persons with no record in {table}.", "table_person_completeness.sql"),
        CheckKind("measureValueCompleteness", F, K, "", VER,
              "Records of {table} with a NULL {field}.", "field_measure_value_completeness.sql"),
        CheckKind("standardConceptRecordCompleteness", F, K, "", VER,
              "Records of {table} whose standard concept field {field} is 0 (unmapped).",
              "field_concept_record_completeness.sql"),
        CheckKind("sourceValueCompleteness", F, K, "", VER,
              "Distinct source values of {table}.{field} whose records are mapped to concept 0 "
              "in {concept_field}.", "field_source_value_completeness.sql"),
        CheckKind("plausibleValueLow", F, P, "Atemporal", VER,
              "Records of {table} whose {field} is below {low}.", "field_plausible_value_low.sql"),
        CheckKind("plausibleValueHigh", F, P, "Atemporal", VER,
              "Records of {table} whose {field} is above {high}.",
              "field_plausible_value_high.sql"),
        CheckKind("plausibleStartBeforeEnd", F, P, "Temporal", VER,
              "Records of {table} whose {field} comes after {end_field}.",
              "field_plausible_start_before_end.sql"),
        CheckKind("plausibleAfterBirth", F, P, "Temporal", VER,
              "Records of {table} whose {field} comes before the person's birth.",
              "field_plausible_after_birth.sql"),
        CheckKind("plausibleDuringLife", F, P, "Temporal", VER,
              "Records of {table} whose {field} comes more than 60 days after the person's "
              "death.", "field_plausible_before_death.sql"),
        CheckKind("withinVisitDates", F, P, "Temporal", VER,
              "Records of {table} whose {field} is more than a week outside their visit's "
              "start and end dates.", "field_within_visit_dates.sql"),
        CheckKind("withinObservationPeriod", F, P, "Temporal", VER,
              "Records of {table} whose {field} lies in none of the person's observation "
              "periods.", "(ehds) field_within_observation_period.sql"),
        CheckKind("measureObservationPeriodOverlap", T, P, "Temporal", VER,
              "Persons whose observation periods overlap or are back to back.",
              "table_observation_period_overlap.sql"),
        CheckKind("conceptPlausibleValueLow", X, P, "Atemporal", VER,
              "Records of {table} with concept {concept_id} ({concept_name}) in unit "
              "{unit_concept_id} ({unit_name}) whose value is below {low}.",
              "concept_plausible_value_low.sql"),
        CheckKind("conceptPlausibleValueHigh", X, P, "Atemporal", VER,
              "Records of {table} with concept {concept_id} ({concept_name}) in unit "
              "{unit_concept_id} ({unit_name}) whose value is above {high}.",
              "concept_plausible_value_high.sql"),
    )
}  # fmt: skip

# DQD names the concept-level range checks plausibleValueLow/High as the field-level ones and
# tells them apart by CHECK_LEVEL; ours have distinct keys here and DQD's name in the report.
DQD_NAME = {"conceptPlausibleValueLow": "plausibleValueLow",
            "conceptPlausibleValueHigh": "plausibleValueHigh"}  # fmt: skip


@dataclass(frozen=True)
class MeasurementRange:
    """A plausible range for a measurement concept in one unit (the unit matters: a weight in
    pounds is not checked against kilograms)."""

    concept_id: int
    concept_name: str
    unit_concept_id: int
    unit_name: str
    low: float
    high: float


# Ranges wide enough for any living person, children included; a value outside is a unit or
# an entry error. Concepts are the standard LOINC ones, units UCUM.
MEASUREMENT_RANGES: tuple[MeasurementRange, ...] = (
    MeasurementRange(3025315, "Body weight", 9529, "kilogram", 0.3, 450.0),
    MeasurementRange(3036277, "Body height", 8582, "centimeter", 20.0, 260.0),
    MeasurementRange(3038553, "Body mass index", 9531, "kilogram per square meter", 7.0, 120.0),
    MeasurementRange(3004249, "Systolic blood pressure", 8876, "millimeter mercury column",
                     40.0, 300.0),
    MeasurementRange(3012888, "Diastolic blood pressure", 8876, "millimeter mercury column",
                     10.0, 200.0),
    MeasurementRange(3027018, "Heart rate", 8541, "per minute", 20.0, 300.0),
    MeasurementRange(3004410, "Hemoglobin A1c", 8554, "percent", 2.0, 25.0),
)  # fmt: skip

# Default thresholds (percent of violating rows tolerated).
ZERO = 0.0
PLAUSIBILITY = 1.0  # DQD's default for plausibleValueLow/High, AfterBirth, BeforeDeath...
WITHIN_VISIT = 5.0  # DQD's withinVisitDates default
WITHIN_OBSERVATION = 5.0  # ours, aligned with withinVisitDates
MAPPED_EVENT_CONCEPT = 5.0  # DQD: standardConceptRecordCompleteness of an event's main concept
SOURCE_VALUE = 10.0  # DQD: sourceValueCompleteness of an event's main source value
PERSON_COMPLETENESS = 95.0  # see measurePersonCompleteness in docs/dq.md
ALWAYS_PASSES = 100.0  # DQD's value for optional fields: the figure is reported, never failed
EARLIEST_EVENT = "1950-01-01"  # DQD's plausibleValueLow for event dates
EARLIEST_BIRTH = "1850-01-01"  # DQD's plausibleValueLow for birth dates
