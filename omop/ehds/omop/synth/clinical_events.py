"""Condition occurrences, drug exposures and procedures, all recorded at visits.

For each catalogue condition (a loop over the dozen conditions, each step vectorised over
the persons who have it), a person with the condition gets one or more occurrences at
randomly chosen visits of theirs (never twice at the same visit). The code written is drawn
once per person among the condition's codes (or the childhood code for children), so a person
keeps one diagnosis code. At each occurrence the condition's treatment may be prescribed:
one drug per person (a patient stays on the same NSAID), starting that day, ending after its
days' supply or with the observation period; its procedures may be done the same day.
Because every event sits on a visit, it lies inside an observation period by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ehds.omop.synth.concepts import ROUTINE_PROCEDURES
from ehds.omop.synth.conditions import CONDITIONS, Choice, ConditionSpec
from ehds.omop.synth.dates import Days
from ehds.omop.synth.persons import Ints, Persons
from ehds.omop.synth.visits import Visits

CHILD_AGE = 18
CHRONIC_RENEWALS_MEAN = 1.5
ACUTE_DAYS = (7, 21)


@dataclass(frozen=True)
class Events:
    """Events of one table: the person and visit (indexes into the chunk's persons and
    visits; visit -1 for none) and the concept; ``end`` is -1 where the end date stays empty."""

    person: Ints
    visit: Ints
    concept: Ints
    start: Days
    end: Days
    days_supply: Ints

    def __len__(self) -> int:
        return len(self.visit)

    @classmethod
    def concat(cls, parts: Sequence[Events]) -> Events:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty, empty, empty)
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )


@dataclass(frozen=True)
class ClinicalEvents:
    conditions: Events
    drugs: Events
    procedures: Events


def _choose(rng: np.random.Generator, choices: Sequence[Choice], size: int) -> Ints:
    weights = np.asarray([c.weight for c in choices], dtype=np.float64)
    cumulative = np.cumsum(weights / weights.sum())
    cumulative[-1] = 1.0
    index = np.searchsorted(cumulative, rng.random(size), side="right")
    return np.asarray([c.concept_id for c in choices], dtype=np.int64)[index]


def _prescriptions(
    rng: np.random.Generator,
    spec: ConditionSpec,
    *,
    person: Ints,
    visit: Ints,
    drug: Ints,
    start: Days,
    period_end: Days,
) -> Events:
    """Prescriptions at visits and, for chronic conditions, their renewals every
    ``days_supply`` days (outside visits) while the person stays observed."""
    if spec.chronic:
        renewals = rng.poisson(CHRONIC_RENEWALS_MEAN, size=len(visit))
        source = np.repeat(np.arange(len(visit)), renewals + 1)
        rank = np.arange(len(source)) - np.repeat(
            np.cumsum(renewals + 1) - renewals - 1, renewals + 1
        )
        start = start[source] + rank * spec.days_supply
        kept = start <= period_end[source]
        source, rank, start = source[kept], rank[kept], start[kept]
        person = person[source]
        visit = np.where(rank == 0, visit[source], -1)  # renewals happen outside visits
        period_end = period_end[source]
    size = len(start)
    return Events(
        person,
        visit,
        drug[person],
        start,
        np.minimum(start + spec.days_supply - 1, period_end),
        np.full(size, spec.days_supply, dtype=np.int64),
    )


def _condition_events(
    rng: np.random.Generator, spec: ConditionSpec, holders: Ints, persons: Persons, visits: Visits
) -> tuple[Events, Events, list[Events]]:
    occurrences = 1 + rng.poisson(spec.extra_occurrences, size=len(holders))
    person = np.repeat(holders, occurrences)
    visit = np.unique(
        visits.first[person] + (rng.random(len(person)) * visits.count[person]).astype(np.int64)
    )
    person = visits.person[visit]
    start = visits.start[visit]
    period_end = visits.period_end[visit]

    code = np.zeros(len(persons), dtype=np.int64)
    code[holders] = _choose(rng, spec.codes, len(holders))
    if spec.child_code is not None:
        child = holders[persons.age[holders] < CHILD_AGE]
        code[child] = spec.child_code
    if spec.chronic:
        end = np.full(len(visit), -1, dtype=np.int64)
    else:
        low, high = ACUTE_DAYS
        duration = low + (rng.random(len(visit)) * (high - low + 1)).astype(np.int64)
        end = np.minimum(start + duration, period_end)
    no_supply = np.zeros(len(visit), dtype=np.int64)
    conditions = Events(person, visit, code[person], start, end, no_supply)

    drugs = Events.concat([])
    if spec.drugs:
        drug = np.zeros(len(persons), dtype=np.int64)
        drug[holders] = _choose(rng, spec.drugs, len(holders))
        given = np.flatnonzero(rng.random(len(visit)) < spec.drug_probability)
        drugs = _prescriptions(
            rng,
            spec,
            person=person[given],
            visit=visit[given],
            drug=drug,
            start=start[given],
            period_end=period_end[given],
        )
    procedures = []
    for rule in spec.procedures:
        done = rng.random(len(visit)) < rule.probability
        procedures.append(
            Events(
                person[done],
                visit[done],
                np.full(int(done.sum()), rule.concept_id, dtype=np.int64),
                start[done],
                np.full(int(done.sum()), -1, dtype=np.int64),
                np.zeros(int(done.sum()), dtype=np.int64),
            )
        )
    return conditions, drugs, procedures


def _routine_procedures(rng: np.random.Generator, visits: Visits) -> list[Events]:
    parts = []
    for rule in ROUTINE_PROCEDURES:
        done = np.flatnonzero(
            (visits.concept == rule.visit_concept_id) & (rng.random(len(visits)) < rule.share)
        )
        none = np.full(len(done), -1, dtype=np.int64)
        concept = np.full(len(done), rule.concept_id, dtype=np.int64)
        parts.append(Events(visits.person[done], done, concept, visits.start[done], none, none))
    return parts


def draw_clinical_events(
    rng: np.random.Generator, persons: Persons, visits: Visits
) -> ClinicalEvents:
    conditions: list[Events] = []
    drugs: list[Events] = []
    procedures: list[Events] = _routine_procedures(rng, visits)
    for column, spec in enumerate(CONDITIONS):
        holders = np.flatnonzero(persons.conditions[:, column]).astype(np.int64)
        condition, drug, procedure = _condition_events(rng, spec, holders, persons, visits)
        conditions.append(condition)
        drugs.append(drug)
        procedures.extend(procedure)
    return ClinicalEvents(
        conditions=Events.concat(conditions),
        drugs=Events.concat(drugs),
        procedures=Events.concat(procedures),
    )
