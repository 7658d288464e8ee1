"""Observation periods and deaths.

Every person is observed at least once inside the data window: from the window's start (or
a later entry, or birth) to its end (or an earlier exit). Some persons leave and come back,
which splits their observation into two periods separated by a gap; periods never overlap.

Deaths follow a Gompertz hazard (mortality rising exponentially with age, about 9 % a year),
scaled by the profile and raised by lethal conditions (myocardial infarction, COPD,
Alzheimer's disease, ...). A death falls inside the person's last period and ends it: the
death date *is* the end of observation, as OMOP conventions require.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ehds.omop.synth.conditions import CONDITIONS
from ehds.omop.synth.dates import DAYS_PER_YEAR, Days, Window
from ehds.omop.synth.persons import Bools, Ints, Persons
from ehds.omop.synth.profiles import CountryProfile

LATE_ENTRY_SHARE = 0.30
EARLY_EXIT_SHARE = 0.10
GAP_SHARE = 0.15
MIN_FIRST_PERIOD_DAYS = 180
MIN_SECOND_PERIOD_DAYS = 365
GOMPERTZ_A = 3e-5  # yearly hazard at age 0
GOMPERTZ_B = 0.09  # log-hazard increase per year of age
MAX_YEARLY_HAZARD = 0.7


@dataclass(frozen=True)
class Periods:
    """Periods sorted by person then date; ``first``/``count`` index them per person."""

    person: Ints
    start: Days
    end: Days
    first: Ints
    count: Ints
    death: Days  # per person; -1 when alive at the end of observation

    def __len__(self) -> int:
        return len(self.person)

    @property
    def dead(self) -> Bools:
        dead: Bools = self.death >= 0
        return dead


def draw_periods(
    rng: np.random.Generator, persons: Persons, profile: CountryProfile, window: Window
) -> Periods:
    n = len(persons)
    span = window.end - window.start + 1
    late = rng.random(n) < LATE_ENTRY_SHARE
    entry = np.where(late, window.start + (rng.random(n) * span).astype(np.int64), window.start)
    start = np.maximum(entry, persons.birth)
    leaves = rng.random(n) < EARLY_EXIT_SHARE
    exit_day = start + (rng.random(n) * (window.end - start + 1)).astype(np.int64)
    end = np.where(leaves, exit_day, window.end)

    gap = 30 + (rng.random(n) * 335).astype(np.int64)
    room = end - start - MIN_FIRST_PERIOD_DAYS - MIN_SECOND_PERIOD_DAYS - gap
    split = (rng.random(n) < GAP_SHARE) & (room >= 0)
    gap_start = (
        start + MIN_FIRST_PERIOD_DAYS + (rng.random(n) * (np.maximum(room, 0) + 1)).astype(np.int64)
    )
    last_start = np.where(split, gap_start + gap, start)

    observed_years = (end - start + 1 - np.where(split, gap, 0)) / DAYS_PER_YEAR
    middle = (start + end) / 2
    age_at_middle = persons.age + 0.5 - (window.end - middle) / DAYS_PER_YEAR
    hazard = GOMPERTZ_A * profile.mortality_scale * np.exp(GOMPERTZ_B * age_at_middle)
    for column, spec in enumerate(CONDITIONS):
        if spec.mortality_rr != 1.0:
            hazard *= np.where(persons.conditions[:, column], spec.mortality_rr, 1.0)
    hazard = np.minimum(hazard, MAX_YEARLY_HAZARD)
    dies = rng.random(n) < -np.expm1(-hazard * observed_years)
    death_day = last_start + (rng.random(n) * (end - last_start + 1)).astype(np.int64)
    end = np.where(dies, death_day, end)

    count = 1 + split.astype(np.int64)
    first = np.cumsum(count) - count
    total = int(count.sum())
    period_start = np.empty(total, dtype=np.int64)
    period_end = np.empty(total, dtype=np.int64)
    period_start[first] = start
    period_end[first] = np.where(split, gap_start - 1, end)
    second = first[split] + 1
    period_start[second] = last_start[split]
    period_end[second] = end[split]
    return Periods(
        person=np.repeat(np.arange(n, dtype=np.int64), count),
        start=period_start,
        end=period_end,
        first=first,
        count=count,
        death=np.where(dies, death_day, -1),
    )
