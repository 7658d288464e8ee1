"""Visits: the contacts every other event hangs on.

A person's number of visits is Poisson with a yearly rate that depends on age (infants and
the elderly see doctors most), on the number of chronic conditions and on the profile; every
person has at least one visit, so that every condition can be recorded. Visit days are
uniform over the person's observed days, so visits lie inside observation periods by
construction. Most visits are outpatient; emergency visits are same-day; inpatient stays
last a few days and end, at the latest, with the observation period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ehds.omop.synth.concepts import VISIT_EMERGENCY, VISIT_INPATIENT, VISIT_OUTPATIENT
from ehds.omop.synth.conditions import CONDITIONS
from ehds.omop.synth.dates import DAYS_PER_YEAR, Days, Window
from ehds.omop.synth.periods import Periods
from ehds.omop.synth.persons import Ints, Persons
from ehds.omop.synth.profiles import AGE_BAND_WIDTH, CountryProfile

# Visits a year by five-year age band at the index date (0-4, 5-9, ..., 85+).
YEARLY_VISITS_BY_BAND = (
    2.2, 0.9, 0.7, 0.7, 0.7, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.2,
)  # fmt: skip
EXTRA_RATE_PER_CHRONIC_CONDITION = 0.3
EMERGENCY_SHARE = 0.08
INPATIENT_SHARE_AT_0 = 0.02
INPATIENT_SHARE_PER_YEAR = 0.0004
INPATIENT_DAILY_DISCHARGE = 0.3


@dataclass(frozen=True)
class Visits:
    """Visits sorted by person then start; ``first``/``count`` index them per person."""

    person: Ints
    start: Days
    end: Days
    concept: Ints
    period_end: Days  # end of the observation period holding the visit
    first: Ints
    count: Ints

    def __len__(self) -> int:
        return len(self.person)


def draw_visits(
    rng: np.random.Generator,
    persons: Persons,
    periods: Periods,
    profile: CountryProfile,
    window: Window,
) -> Visits:
    n = len(persons)
    chronic = np.asarray([c.chronic for c in CONDITIONS])
    chronic_count = persons.conditions[:, chronic].sum(axis=1)
    band = np.minimum(persons.age // AGE_BAND_WIDTH, len(YEARLY_VISITS_BY_BAND) - 1)
    rate = (
        np.asarray(YEARLY_VISITS_BY_BAND)[band]
        * (1.0 + EXTRA_RATE_PER_CHRONIC_CONDITION * chronic_count)
        * profile.visit_rate_scale
    )
    length = periods.end - periods.start + 1
    first_length = length[periods.first]
    observed = np.bincount(periods.person, weights=length, minlength=n).astype(np.int64)
    count = np.maximum(rng.poisson(rate * observed / DAYS_PER_YEAR), 1).astype(np.int64)

    person = np.repeat(np.arange(n, dtype=np.int64), count)
    offset = (rng.random(len(person)) * observed[person]).astype(np.int64)
    in_second = offset >= first_length[person]
    period = periods.first[person] + in_second
    start = periods.start[period] + offset - np.where(in_second, first_length[person], 0)
    order = np.argsort(person * (1 << 22) + (start - window.start), kind="stable")
    person, start, period = person[order], start[order], period[order]
    period_end = periods.end[period]

    draw = rng.random(len(person))
    inpatient_share = INPATIENT_SHARE_AT_0 + INPATIENT_SHARE_PER_YEAR * persons.age[person]
    inpatient = draw < inpatient_share
    emergency = ~inpatient & (draw < inpatient_share + EMERGENCY_SHARE)
    concept = np.where(
        inpatient, VISIT_INPATIENT, np.where(emergency, VISIT_EMERGENCY, VISIT_OUTPATIENT)
    )
    stay = rng.geometric(INPATIENT_DAILY_DISCHARGE, size=len(person)).astype(np.int64)
    end = np.where(inpatient, np.minimum(start + stay, period_end), start)
    return Visits(
        person=person,
        start=start,
        end=end,
        concept=concept.astype(np.int64),
        period_end=period_end,
        first=np.cumsum(count) - count,
        count=count,
    )
