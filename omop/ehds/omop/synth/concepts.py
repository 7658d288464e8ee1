"""Fixed concepts the generator writes outside the condition catalogue.

Gender, visit, type, unit and measurement concepts are standard OMOP concepts (the ids every
OMOP tool expects: 8507/8532 gender, 9201/9202/9203 visits, 32817 "EHR" type). Every id here
ends up in the committed vocabulary subset; ``tests/omop/test_synth.py`` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_MATCHING_CONCEPT = 0
GENDER_MALE = 8507
GENDER_FEMALE = 8532
TYPE_EHR = 32817
CDM_VERSION_5_4 = 756265

VISIT_INPATIENT = 9201
VISIT_OUTPATIENT = 9202
VISIT_EMERGENCY = 9203

UNIT_KILOGRAM = 9529
UNIT_CENTIMETER = 8582
UNIT_KG_PER_M2 = 9531
UNIT_MM_HG = 8876
UNIT_PERCENT = 8554


@dataclass(frozen=True)
class MeasurementSpec:
    """One measured quantity: its LOINC concept, its UCUM unit and the codes as sent."""

    key: str
    concept_id: int
    unit_concept_id: int
    source_value: str
    unit_source_value: str


BODY_WEIGHT = MeasurementSpec("body_weight", 3025315, UNIT_KILOGRAM, "29463-7", "kg")
BODY_HEIGHT = MeasurementSpec("body_height", 3036277, UNIT_CENTIMETER, "8302-2", "cm")
BMI = MeasurementSpec("bmi", 3038553, UNIT_KG_PER_M2, "39156-5", "kg/m2")
SYSTOLIC_BP = MeasurementSpec("systolic_bp", 3004249, UNIT_MM_HG, "8480-6", "mm[Hg]")
DIASTOLIC_BP = MeasurementSpec("diastolic_bp", 3012888, UNIT_MM_HG, "8462-4", "mm[Hg]")
HBA1C = MeasurementSpec("hba1c", 3004410, UNIT_PERCENT, "4548-4", "%")

MEASUREMENTS: tuple[MeasurementSpec, ...] = (
    BODY_WEIGHT,
    BODY_HEIGHT,
    BMI,
    SYSTOLIC_BP,
    DIASTOLIC_BP,
    HBA1C,
)


@dataclass(frozen=True)
class RoutineProcedure:
    """A procedure done at this share of visits of a kind, whatever the diagnosis."""

    visit_concept_id: int
    concept_id: int
    share: float


ROUTINE_PROCEDURES: tuple[RoutineProcedure, ...] = (
    RoutineProcedure(VISIT_OUTPATIENT, 4326177, 0.10),  # Medication Reconciliation
    RoutineProcedure(VISIT_EMERGENCY, 4163872, 0.30),  # Plain chest X-ray
    RoutineProcedure(VISIT_INPATIENT, 4163951, 0.50),  # Electrocardiographic procedure
    RoutineProcedure(VISIT_INPATIENT, 4218408, 0.40),  # Collection of blood specimen
)

FIXED_CONCEPT_IDS: frozenset[int] = frozenset(
    {
        NO_MATCHING_CONCEPT,
        GENDER_MALE,
        GENDER_FEMALE,
        TYPE_EHR,
        CDM_VERSION_5_4,
        VISIT_INPATIENT,
        VISIT_OUTPATIENT,
        VISIT_EMERGENCY,
    }
    | {m.concept_id for m in MEASUREMENTS}
    | {m.unit_concept_id for m in MEASUREMENTS}
    | {r.concept_id for r in ROUTINE_PROCEDURES}
)
