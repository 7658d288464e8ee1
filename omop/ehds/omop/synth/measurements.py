"""Measurements: vital signs and HbA1c with plausible values, in UCUM units.

Vital signs (body weight in kg, height in cm, BMI in kg/m2, systolic and diastolic blood
pressure in mm[Hg]) are taken at most visits. Each person carries latent traits (adult
height by sex and country, a BMI and blood-pressure offset), so repeated measurements of a
person agree with each other; children follow a growth curve. BMI is *computed* from the
rounded weight and height, as an EHR does. Blood pressure rises with age, BMI and
hypertension. HbA1c is measured often in persons with type 2 diabetes (values around 7.3 %)
and now and then in other adults (around 5.4 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ehds.omop.synth.concepts import (
    BMI,
    BODY_HEIGHT,
    BODY_WEIGHT,
    DIASTOLIC_BP,
    HBA1C,
    SYSTOLIC_BP,
    VISIT_EMERGENCY,
    VISIT_INPATIENT,
    MeasurementSpec,
)
from ehds.omop.synth.dates import DAYS_PER_YEAR
from ehds.omop.synth.persons import Ints, Persons
from ehds.omop.synth.profiles import CountryProfile
from ehds.omop.synth.visits import Visits

Floats = npt.NDArray[np.float64]

VITALS_SHARE = {"outpatient": 0.6, "emergency": 0.3, "inpatient": 0.9}
ADULT_HEIGHT_SD = (7.0, 6.5)  # men, women
GROWTH_AGES = (0.0, 1.0, 2.0, 5.0, 10.0, 14.0, 18.0)
GROWTH_FRACTION = (0.29, 0.43, 0.50, 0.63, 0.80, 0.93, 1.0)
CHILD_BMI_AGES = (0.0, 1.0, 2.0, 6.0, 10.0, 14.0, 18.0)
CHILD_BMI = (13.5, 17.0, 16.5, 15.5, 17.0, 19.5, 21.5)
BMI_LOG_SD = 0.14
MIN_BP_AGE = 3.0
HBA1C_SHARE = (0.5, 0.03)  # at visits of persons with / adults without type 2 diabetes


@dataclass(frozen=True)
class Measurements:
    visit: Ints
    concept: Ints
    unit: Ints
    value: Floats

    def __len__(self) -> int:
        return len(self.visit)


def _rows(spec: MeasurementSpec, visit: Ints, value: Floats) -> Measurements:
    size = len(visit)
    return Measurements(
        visit,
        np.full(size, spec.concept_id, dtype=np.int64),
        np.full(size, spec.unit_concept_id, dtype=np.int64),
        value,
    )


def _vital_signs(
    rng: np.random.Generator, persons: Persons, visits: Visits, profile: CountryProfile
) -> list[Measurements]:
    n = len(persons)
    share = np.where(
        visits.concept == VISIT_INPATIENT,
        VITALS_SHARE["inpatient"],
        np.where(
            visits.concept == VISIT_EMERGENCY, VITALS_SHARE["emergency"], VITALS_SHARE["outpatient"]
        ),
    )
    visit = np.flatnonzero(rng.random(len(visits)) < share).astype(np.int64)
    person = visits.person[visit]
    age = np.maximum((visits.start[visit] - persons.birth[person]) / DAYS_PER_YEAR, 0.0)
    female = persons.female[person]

    men, women = profile.adult_height_cm
    adult_height = np.where(persons.female, women, men) + rng.standard_normal(n) * np.where(
        persons.female, ADULT_HEIGHT_SD[1], ADULT_HEIGHT_SD[0]
    )
    bmi_offset = rng.standard_normal(n) * BMI_LOG_SD
    pressure_offset = rng.standard_normal(n)

    height = adult_height[person] * np.interp(age, GROWTH_AGES, GROWTH_FRACTION)
    height = np.round(height + rng.standard_normal(len(visit)) * 0.4, 1)
    adult_bmi = profile.bmi_median * np.exp(0.005 * (np.clip(age, 20, 65) - 45))
    adult_bmi = adult_bmi * np.where(persons.has("type_2_diabetes")[person], 1.12, 1.0)
    blend = np.clip((age - 14.0) / 6.0, 0.0, 1.0)
    bmi = (1 - blend) * np.interp(age, CHILD_BMI_AGES, CHILD_BMI) + blend * adult_bmi
    bmi = bmi * np.exp(
        bmi_offset[person] * (0.5 + 0.5 * blend) + rng.standard_normal(len(visit)) * 0.015
    )
    square_metres = (height / 100.0) ** 2
    weight = np.round(bmi * square_metres, 1)
    reported_bmi = np.round(weight / square_metres, 1)

    hypertensive = persons.has("hypertension")[person]
    adult = age >= 18
    male_adult = adult & ~female
    systolic = (
        np.where(adult, 115 + 0.5 * (age - 18), 88 + 1.5 * age)
        + 5.0 * male_adult
        + 12.0 * hypertensive
        + 0.6 * (reported_bmi - 25)
        + 8.0 * pressure_offset[person]
        + rng.standard_normal(len(visit)) * 7.0
    )
    diastolic = (
        np.where(
            adult,
            70 + 0.25 * (np.minimum(age, 60) - 18) - 0.2 * np.maximum(age - 60, 0),
            50 + 1.1 * age,
        )
        + 3.0 * male_adult
        + 7.0 * hypertensive
        + 0.3 * (reported_bmi - 25)
        + 5.0 * pressure_offset[person]
        + rng.standard_normal(len(visit)) * 5.0
    )
    systolic = np.round(np.clip(systolic, 70, 250))
    diastolic = np.round(np.clip(np.minimum(diastolic, systolic - 15), 35, 140))
    with_bp = age >= MIN_BP_AGE
    return [
        _rows(BODY_WEIGHT, visit, weight),
        _rows(BODY_HEIGHT, visit, height),
        _rows(BMI, visit, reported_bmi),
        _rows(SYSTOLIC_BP, visit[with_bp], systolic[with_bp]),
        _rows(DIASTOLIC_BP, visit[with_bp], diastolic[with_bp]),
    ]


def _hba1c(rng: np.random.Generator, persons: Persons, visits: Visits) -> Measurements:
    diabetic = persons.has("type_2_diabetes")[visits.person]
    adult = visits.start - persons.birth[visits.person] >= 18 * DAYS_PER_YEAR
    share = np.where(diabetic, HBA1C_SHARE[0], np.where(adult, HBA1C_SHARE[1], 0.0))
    visit = np.flatnonzero(rng.random(len(visits)) < share).astype(np.int64)
    diabetic = diabetic[visit]
    noise = rng.standard_normal(len(visit))
    value: Floats = np.where(
        diabetic, np.clip(7.3 + 1.1 * noise, 5.7, 14.0), np.clip(5.4 + 0.3 * noise, 4.0, 6.4)
    )
    return _rows(HBA1C, visit, np.round(value, 1))


def draw_measurements(
    rng: np.random.Generator, persons: Persons, visits: Visits, profile: CountryProfile
) -> Measurements:
    parts = [*_vital_signs(rng, persons, visits, profile), _hba1c(rng, persons, visits)]
    return Measurements(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in Measurements.__dataclass_fields__)
    )
