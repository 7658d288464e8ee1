"""Persons: sex, age and birth date from the profile's pyramid, and which conditions they have.

Everything is drawn for a whole chunk of persons at once (numpy arrays indexed by the person's
position in the chunk); nothing loops over persons.

Condition status follows the profile's prevalence *exactly in expectation*: each person's
probability is the prevalence times their relative risk (age curve, sex, comorbidities)
divided by the chunk's mean relative risk, so that the expected number of cases in the chunk
is prevalence x persons whatever the chunk's age mix. The risk shape lives in the catalogue,
the level in the profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ehds.omop.synth.conditions import CONDITION_KEYS, CONDITIONS
from ehds.omop.synth.dates import Days, Window, year_starts
from ehds.omop.synth.profiles import AGE_BAND_STARTS, AGE_BAND_WIDTH, MAX_AGE, CountryProfile

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Persons:
    female: Bools
    age: Ints  # age on 31 December of the index year
    birth: Days
    conditions: Bools  # (persons, len(CONDITIONS)): has the condition during the window

    def __len__(self) -> int:
        return len(self.age)

    def has(self, key: str) -> Bools:
        column: Bools = self.conditions[:, CONDITION_KEYS.index(key)]
        return column


def draw_persons(
    rng: np.random.Generator, count: int, profile: CountryProfile, window: Window
) -> Persons:
    bands = len(AGE_BAND_STARTS)
    band = rng.choice(bands, size=count, p=np.asarray(profile.age_band_shares))
    width = np.where(band == bands - 1, MAX_AGE + 1 - AGE_BAND_STARTS[-1], AGE_BAND_WIDTH)
    age = np.asarray(AGE_BAND_STARTS, dtype=np.int64)[band] + (rng.random(count) * width).astype(
        np.int64
    )
    female = rng.random(count) < np.asarray(profile.female_share_by_band)[band]
    year = window.index_year - age
    first_day = year_starts(year)
    year_length = year_starts(year + 1) - first_day
    birth = first_day + (rng.random(count) * year_length).astype(np.int64)
    birth = np.minimum(birth, window.end)
    conditions = _draw_conditions(rng, age, female, profile)
    return Persons(female=female, age=age, birth=birth, conditions=conditions)


def _draw_conditions(
    rng: np.random.Generator, age: Ints, female: Bools, profile: CountryProfile
) -> Bools:
    flags = np.zeros((len(age), len(CONDITIONS)), dtype=np.bool_)
    age_mid = age.astype(np.float64) + 0.5
    for column, spec in enumerate(CONDITIONS):
        risk = spec.age_curve.weight(age_mid) * np.where(female, spec.female_rr, 1.0)
        for other, relative_risk in spec.comorbidity_rr:
            risk *= np.where(flags[:, CONDITION_KEYS.index(other)], relative_risk, 1.0)
        probability = np.minimum(profile.prevalence[spec.key] * risk / risk.mean(), 1.0)
        flags[:, column] = rng.random(len(age)) < probability
    return flags
