"""The pooled-rows reference of the Kaplan-Meier tests: hand-written SQL over the union of the
node CDMs, durations coarsened to the agreed grid, and lifelines on those rows (used by
tests/analyses and tests/federation). Nothing here imports `ehds.analyses.survival`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

JsonObject = dict[str, Any]
TOLERANCE = 1e-9
OUTPATIENT_VISIT = 9202
HYPERTENSION = 320128

TARGET = {
    "name": "first outpatient visit",
    "yaml": {
        "concept_sets": {"outpatient": {"include": [{"concept": OUTPATIENT_VISIT}]}},
        "entry": {"events": [{"visit": "outpatient"}], "first_occurrence": True},
        "exit": {"days_after_start": 0},
    },
}
OUTCOME = {
    "name": "hypertension",
    "yaml": {
        "concept_sets": {"hypertension": {"include": [{"concept": HYPERTENSION}]}},
        "entry": {"events": [{"condition": "hypertension"}], "first_occurrence": True},
        "exit": {"days_after_start": 0},
    },
}


def pooled_person_times(files: Mapping[str, Path]) -> pd.DataFrame:
    """One row per person of the pooled population: ``node, person_id, sex, age, time
    (days from index to event or end of follow-up, before max_days), event, followed``."""
    parts = []
    with duckdb.connect() as con:
        for node, path in files.items():
            con.execute(f"ATTACH '{path}' AS n_{node} (READ_ONLY)")
            parts.append(f"SELECT * FROM ({reference_sql(f'n_{node}', node)})")
        frame = con.execute(" UNION ALL ".join(parts)).df()
    assert frame.person_id.is_unique, "the node CDMs must not share persons"
    return frame


def reference_sql(db: str, node: str) -> str:
    """Index: the first outpatient visit ever, kept if it lies in an observation period;
    outcome: the first hypertension ever, kept if it lies in an observation period (circe's
    first-occurrence cohorts); the event is that outcome if on or after the index date."""
    return f"""
    WITH first_visit AS (
        SELECT person_id, min(visit_start_date) AS day FROM {db}.cdm.visit_occurrence
        WHERE visit_concept_id = {OUTPATIENT_VISIT} GROUP BY person_id
    ), target AS (
        SELECT v.person_id, v.day AS index_date, o.observation_period_end_date AS op_end
        FROM first_visit v JOIN {db}.cdm.observation_period o
          ON o.person_id = v.person_id
         AND v.day BETWEEN o.observation_period_start_date AND o.observation_period_end_date
    ), first_outcome AS (
        SELECT person_id, min(condition_start_date) AS day FROM {db}.cdm.condition_occurrence
        WHERE condition_concept_id = {HYPERTENSION} GROUP BY person_id
    ), outcome AS (
        SELECT f.person_id, f.day FROM first_outcome f
        WHERE EXISTS (
            SELECT 1 FROM {db}.cdm.observation_period o WHERE o.person_id = f.person_id
            AND f.day BETWEEN o.observation_period_start_date AND o.observation_period_end_date)
    )
    SELECT '{node}' AS node, t.person_id,
           CASE p.gender_concept_id WHEN 8532 THEN 'FEMALE' WHEN 8507 THEN 'MALE'
                ELSE 'OTHER/UNKNOWN' END AS sex,
           year(t.index_date) - p.year_of_birth AS age,
           date_diff('day', t.index_date, t.op_end) AS followed,
           CASE WHEN oc.day >= t.index_date THEN date_diff('day', t.index_date, oc.day) END
               AS event_day
    FROM target t JOIN {db}.cdm.person p ON p.person_id = t.person_id
    LEFT JOIN outcome oc ON oc.person_id = t.person_id
    """


def coarsened(frame: pd.DataFrame, cuts: list[int], max_days: int) -> pd.DataFrame:
    """Durations and events on the grid: censoring at the end of the observation period or at
    ``max_days``; each time moved to the end of its grid interval; beyond the last cut,
    censored at the last cut."""
    followed = np.minimum(frame.followed.to_numpy(), max_days)
    event_day = frame.event_day.to_numpy(dtype=float, na_value=np.nan)
    event = ~np.isnan(event_day) & (event_day <= followed)
    time = np.where(event, event_day, followed)
    grid = np.asarray(cuts)
    index = np.searchsorted(grid, time, side="left")  # first cut >= time
    beyond = index >= len(grid)
    out = frame.copy()
    out["duration"] = np.where(beyond, grid[-1], grid[np.minimum(index, len(grid) - 1)])
    out["event"] = event & ~beyond
    return out


def band(age: int, edges: list[int]) -> str:
    for lo, hi in itertools.pairwise(edges):
        if age < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def strata_column(frame: pd.DataFrame, strata: str, age_band_edges: list[int]) -> pd.Series:
    if strata == "sex":
        return frame.sex
    if strata == "age_group":
        return frame.age.map(lambda a: band(int(a), list(age_band_edges)))
    return pd.Series("overall", index=frame.index)


# --------------------------------------------------------------------------- comparisons


def assert_curve_equals_lifelines(
    got: JsonObject, rows: pd.DataFrame, confidence: float, cuts: list[int]
) -> None:
    kmf = KaplanMeierFitter(alpha=1 - confidence).fit(rows.duration, rows.event)
    assert got["time"] == cuts
    survival = kmf.survival_function_.iloc[:, 0]
    bands = kmf.confidence_interval_
    table = kmf.event_table
    for k, cut in enumerate(cuts):
        assert got["at_risk"][k] == table.at_risk.get(cut, 0)
        assert got["events"][k] == table.observed.get(cut, 0)
        assert got["censored"][k] == table.censored.get(cut, 0)
        assert got["survival"][k] == pytest.approx(survival.loc[cut], rel=TOLERANCE, abs=1e-12)
        assert got["ci_lower"][k] == pytest.approx(bands.iloc[:, 0].loc[cut], rel=TOLERANCE)
        assert got["ci_upper"][k] == pytest.approx(bands.iloc[:, 1].loc[cut], rel=TOLERANCE)
    # Greenwood from lifelines' own risk table.
    upto = table.loc[table.index > 0]
    terms = upto.observed / (upto.at_risk * (upto.at_risk - upto.observed))
    greenwood = terms.cumsum()
    for k, cut in enumerate(cuts):
        expected = survival.loc[cut] ** 2 * greenwood.loc[cut]
        assert got["variance"][k] == pytest.approx(expected, rel=TOLERANCE)
