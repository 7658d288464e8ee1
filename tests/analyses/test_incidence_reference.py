"""Independent reference for incidence, prevalence and numeric summaries (plain Python and
pandas over tables read with hand-written SQL), and tests of the reference itself on cases
small enough to count by hand.

Written from the definitions in the analyses' docstrings, not from their code: loops over
persons and days, `datetime.date` arithmetic, numpy for quantiles. The unit tests and the
federation test (which loads this file by path) compare the analyses with it.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

Cell = tuple[int, str, str]


def sex_of(gender_concept_id: int) -> str:
    return {8532: "FEMALE", 8507: "MALE"}.get(int(gender_concept_id), "OTHER/UNKNOWN")


def band_of(age: int, edges: Sequence[int]) -> str:
    for lo, hi in itertools.pairwise(edges):
        if age < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


@dataclass
class Cdm:
    """The tables the reference needs, as pandas frames (dates as `datetime.date`)."""

    person: pd.DataFrame
    observation_period: pd.DataFrame
    condition_occurrence: pd.DataFrame
    measurement: pd.DataFrame


def read_cdms(files: Iterable[Path]) -> Cdm:
    """The union of one or more CDM files (disjoint person ids), read with plain SQL."""
    parts: dict[str, list[pd.DataFrame]] = defaultdict(list)
    queries = {
        "person": "SELECT person_id, gender_concept_id, year_of_birth FROM {db}.cdm.person",
        "observation_period": (
            "SELECT person_id, observation_period_start_date AS start, "
            "observation_period_end_date AS stop FROM {db}.cdm.observation_period"
        ),
        "condition_occurrence": (
            "SELECT person_id, condition_concept_id AS concept_id, condition_start_date AS start "
            "FROM {db}.cdm.condition_occurrence"
        ),
        "measurement": (
            "SELECT person_id, measurement_concept_id AS concept_id, unit_concept_id, "
            "measurement_date AS day, value_as_number AS value FROM {db}.cdm.measurement"
        ),
    }
    with duckdb.connect() as db:
        for index, path in enumerate(files):
            db.execute(f"ATTACH '{path}' AS n{index} (READ_ONLY)")
            for name, sql in queries.items():
                parts[name].append(db.execute(sql.format(db=f"n{index}")).df())
    frames = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    for name, column in (
        ("observation_period", "start"),
        ("observation_period", "stop"),
        ("condition_occurrence", "start"),
        ("measurement", "day"),
    ):
        frames[name][column] = pd.to_datetime(frames[name][column]).dt.date
    return Cdm(**frames)


def first_occurrence_cohort(cdm: Cdm, concept_id: int) -> pd.DataFrame:
    """Entries ``person_id, start, stop`` of the cohort "first ever condition ``concept_id``,
    if it falls in an observation period; exit on the same day" (what circe builds from the
    YAML cohort with ``first_occurrence: true`` and ``exit: {days_after_start: 0}``)."""
    conditions = cdm.condition_occurrence
    first = conditions[conditions.concept_id == concept_id].groupby("person_id")["start"].min()
    periods = cdm.observation_period.groupby("person_id")
    rows = []
    for person_id, day in first.items():
        if person_id not in periods.groups:
            continue
        own = periods.get_group(person_id)
        if ((own.start <= day) & (own.stop >= day)).any():
            rows.append((int(person_id), day, day))
    return pd.DataFrame(rows, columns=["person_id", "start", "stop"])


def _entries_by_person(entries: pd.DataFrame | None) -> dict[int, list[tuple[date, date]]]:
    result: dict[int, list[tuple[date, date]]] = defaultdict(list)
    if entries is not None:
        for person_id, start, stop in entries[["person_id", "start", "stop"]].itertuples(
            index=False
        ):
            result[int(person_id)].append((start, stop))
    return result


def _intervals(
    cdm: Cdm,
    start: date,
    end: date,
    washout_days: int,
    denominator: pd.DataFrame | None,
) -> list[tuple[int, date, date]]:
    cohort = _entries_by_person(denominator)
    result: list[tuple[int, date, date]] = []
    for person_id, op_start, op_stop in cdm.observation_period[
        ["person_id", "start", "stop"]
    ].itertuples(index=False):
        lo = max(op_start + timedelta(days=washout_days), start)
        hi = min(op_stop, end)
        pieces = [(lo, hi)]
        if denominator is not None:
            pieces = [(max(lo, s), min(hi, e)) for s, e in cohort.get(int(person_id), [])]
        result.extend((int(person_id), a, b) for a, b in pieces if a <= b)
    return result


def incidence(
    cdm: Cdm,
    outcome: pd.DataFrame,
    *,
    start: date,
    end: date,
    washout_days: int,
    outcome_washout: str | int,
    edges: Sequence[int],
    denominator: pd.DataFrame | None = None,
) -> dict[Cell, tuple[int, int, int]]:
    """(events, person-days, persons) per (year, sex, age band), day by day definitions."""
    people = cdm.person.set_index("person_id")
    outcomes = {p: sorted(s for s, _ in v) for p, v in _entries_by_person(outcome).items()}
    events: dict[Cell, int] = defaultdict(int)
    days: dict[Cell, int] = defaultdict(int)
    persons: dict[Cell, set[int]] = defaultdict(set)
    for person_id, lo, stop in _intervals(cdm, start, end, washout_days, denominator):
        hi = stop
        dates = outcomes.get(person_id, [])
        if outcome_washout == "all_history":
            before = [d for d in dates if d < lo]
        else:
            before = [d for d in dates if lo - timedelta(days=int(outcome_washout)) <= d < lo]
        if before:
            continue
        inside = [d for d in dates if lo <= d <= hi]
        event = inside[0] if inside else None
        if event is not None:
            hi = event
        sex = sex_of(people.at[person_id, "gender_concept_id"])
        born = int(people.at[person_id, "year_of_birth"])
        for year in range(lo.year, hi.year + 1):
            a, b = max(lo, date(year, 1, 1)), min(hi, date(year, 12, 31))
            cell = (year, sex, band_of(year - born, edges))
            days[cell] += (b - a).days + 1
            persons[cell].add(person_id)
            if event is not None and a <= event <= b:
                events[cell] += 1
    return {cell: (events[cell], days[cell], len(persons[cell])) for cell in days}


def prevalence(
    cdm: Cdm,
    outcome: pd.DataFrame,
    *,
    start: date,
    end: date,
    edges: Sequence[int],
    denominator: pd.DataFrame | None = None,
) -> dict[Cell, tuple[int, int]]:
    """(denominator, outcome) per (year, sex, age band)."""
    people = cdm.person.set_index("person_id")
    entries = _entries_by_person(outcome)
    observed: dict[int, set[int]] = defaultdict(set)
    for person_id, lo, hi in _intervals(cdm, start, end, 0, denominator):
        for year in range(lo.year, hi.year + 1):
            observed[year].add(person_id)
    totals: dict[Cell, list[int]] = defaultdict(lambda: [0, 0])
    for year, who in observed.items():
        y_lo, y_hi = max(date(year, 1, 1), start), min(date(year, 12, 31), end)
        for person_id in who:
            sex = sex_of(people.at[person_id, "gender_concept_id"])
            cell = (year, sex, band_of(year - int(people.at[person_id, "year_of_birth"]), edges))
            totals[cell][0] += 1
            if any(s <= y_hi and e >= y_lo for s, e in entries.get(person_id, [])):
                totals[cell][1] += 1
    return {cell: (v[0], v[1]) for cell, v in totals.items()}


def measurement_values(cdm: Cdm, concept_ids: Sequence[int]) -> np.ndarray:
    m = cdm.measurement
    chosen = m[m.concept_id.isin(concept_ids) & m.value.notna()]
    values: np.ndarray = chosen.value.to_numpy(dtype=float)
    return values


def fine_bins(values: np.ndarray, lower: float, width: float, bins: int) -> np.ndarray:
    """Grid bin of each value: floor((v - lower) / width), -1 below, ``bins`` above."""
    position = (values - lower) / width
    index = np.floor(position)
    return np.where(position < 0, -1, np.where(position >= bins, bins, index)).astype(int)


def grouped_quantile(
    values: np.ndarray,
    spans: Sequence[tuple[int, int]],
    q: float,
    *,
    lower: float,
    width: float,
    bins: int,
) -> tuple[float | None, tuple[int, int]]:
    """The grouped-data quantile of ``values`` counted on the partition ``spans``."""
    index = fine_bins(values, lower, width, bins)
    counts = [int(((index >= a) & (index <= b)).sum()) for a, b in spans]
    target = q * len(values)
    below = 0
    for (a, b), count in zip(spans, counts, strict=True):
        if count and below + count >= target:
            if a < 0 or b >= bins:
                return None, (a, b)
            low, high = lower + a * width, lower + (b + 1) * width
            return low + (target - below) / count * (high - low), (a, b)
        below += count
    raise AssertionError("empty")


# --------------------------------------------------------------------------- tests


def _tiny_cdm() -> Cdm:
    person = pd.DataFrame(
        {"person_id": [1, 2], "gender_concept_id": [8532, 8507], "year_of_birth": [1980, 1950]}
    )
    periods = pd.DataFrame(
        {
            "person_id": [1, 2],
            "start": [date(2019, 7, 1), date(2018, 1, 1)],
            "stop": [date(2021, 6, 30), date(2020, 12, 31)],
        }
    )
    empty = pd.DataFrame({"person_id": [], "concept_id": [], "start": []})
    return Cdm(person, periods, empty, pd.DataFrame())


def test_reference_counts_days_inclusively_and_stops_at_the_event() -> None:
    cdm = _tiny_cdm()
    outcome = pd.DataFrame(
        {"person_id": [2], "start": [date(2020, 1, 10)], "stop": [date(2020, 1, 10)]}
    )
    cells = incidence(
        cdm,
        outcome,
        start=date(2020, 1, 1),
        end=date(2020, 12, 31),
        washout_days=0,
        outcome_washout="all_history",
        edges=[0, 65],
    )
    assert cells[(2020, "MALE", "65+")] == (1, 10, 1)
    assert cells[(2020, "FEMALE", "0-64")] == (0, 366, 1)


def test_reference_washout_and_prior_outcome() -> None:
    cdm = _tiny_cdm()
    outcome = pd.DataFrame(
        {"person_id": [2], "start": [date(2019, 3, 1)], "stop": [date(2019, 3, 1)]}
    )
    kwargs: dict[str, Any] = {"start": date(2020, 1, 1), "end": date(2021, 12, 31), "edges": [0]}
    cells = incidence(cdm, outcome, washout_days=365, outcome_washout="all_history", **kwargs)
    assert (2020, "MALE", "0+") not in cells  # an outcome before the at-risk start
    # person 1: observed from 2019-07-01, at risk from 2020-06-30 (365 days later)
    assert cells[(2020, "FEMALE", "0+")] == (
        0,
        (date(2020, 12, 31) - date(2020, 6, 30)).days + 1,
        1,
    )
    cells = incidence(cdm, outcome, washout_days=0, outcome_washout=300, **kwargs)
    assert cells[(2020, "MALE", "0+")] == (0, 366, 1)  # the outcome is 306 days before


def test_reference_prevalence_counts_persons_once_per_year() -> None:
    cdm = _tiny_cdm()
    outcome = pd.DataFrame(
        {"person_id": [1], "start": [date(2019, 12, 1)], "stop": [date(2020, 1, 5)]}
    )
    cells = prevalence(cdm, outcome, start=date(2019, 1, 1), end=date(2021, 12, 31), edges=[0])
    assert cells[(2019, "FEMALE", "0+")] == (1, 1)
    assert cells[(2020, "FEMALE", "0+")] == (1, 1)
    assert cells[(2021, "FEMALE", "0+")] == (1, 0)
    assert (2021, "MALE", "0+") not in cells


def test_reference_grouped_quantile() -> None:
    values = np.array([0.5, 1.5, 1.5, 2.5])
    value, span = grouped_quantile(
        values, [(-1, -1), (0, 1), (2, 3), (4, 4)], 0.5, lower=0.0, width=1.0, bins=4
    )
    assert span == (0, 1)
    assert math.isclose(value or 0.0, 0.0 + (2 - 0) / 3 * 2.0)
