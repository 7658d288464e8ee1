"""Each construct of the YAML cohort language against hand-written DuckDB SQL on a synthetic CDM.

The reference is independent of circe: plain SQL over the CDM that states the construct's
documented meaning (docs/cohorts.md). Every comparison is on the full set of cohort rows
(person, start, end), not only on counts, and each reference is checked to be non-empty.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ehds.analyses.cohorts import COHORT_COLUMNS, drop, make_spec, materialize
from ehds.analyses.cohorts.execute import results_tables
from ehds.analyses.engine import IbisCdm

C = "ehds_cdm.cdm"
V = "ehds_cdm.vocab"
T2DM, HYPERTENSION, SINUSITIS, VIRAL_SINUSITIS = 201826, 320128, 4283893, 40481087
METFORMIN, BMI, ECG, INPATIENT = 40163924, 3038553, 4163951, 9201
OBSERVATION_CONCEPT = 4275495  # the observation rows conftest.synth_cdm adds

Row = tuple[int, dt.date, dt.date]


def cohort(engine: IbisCdm, document: dict[str, Any]) -> list[Row]:
    table = materialize(engine, make_spec("test", yaml=document))
    try:
        assert tuple(table.columns) == COHORT_COLUMNS
        rows = engine.backend.to_pyarrow(table).to_pylist()
    finally:
        drop(engine, table)
    return sorted((r["person_id"], r["cohort_start_date"], r["cohort_end_date"]) for r in rows)


def reference(engine: IbisCdm, sql: str) -> list[Row]:
    rows = engine.backend.con.execute(sql).fetchall()
    assert rows, "the reference cohort is empty: the test would prove nothing"
    return sorted((int(p), s, e) for p, s, e in rows)


def concepts(*ids: int) -> dict[str, Any]:
    return {"include": [{"concept": i} for i in ids]}


def events(table: str, concept_column: str, date_column: str, where: str) -> str:
    return f"SELECT person_id, {date_column} AS d FROM {C}.{table} WHERE {concept_column} {where}"


def all_events_to_end_of_observation(event_sql: str) -> str:
    """Every event inside an observation period enters; entries run to the end of the period
    and overlapping ones merge: one row per person and period, from the earliest event."""
    return f"""
        WITH ev AS ({event_sql})
        SELECT ev.person_id, min(ev.d), op.observation_period_end_date
        FROM ev JOIN {C}.observation_period op ON op.person_id = ev.person_id
         AND ev.d BETWEEN op.observation_period_start_date AND op.observation_period_end_date
        GROUP BY ev.person_id, op.observation_period_id, op.observation_period_end_date
    """


def first_t2dm_index(prior_days: int = 0) -> str:
    """Each person's first-ever T2DM diagnosis, if it lies in an observation period with
    ``prior_days`` of observation before it: (person_id, d, op_start, op_end)."""
    return f"""
        WITH first AS (
            SELECT person_id, min(condition_start_date) AS d FROM {C}.condition_occurrence
            WHERE condition_concept_id = {T2DM} GROUP BY person_id)
        SELECT f.person_id, f.d, op.observation_period_start_date AS op_start,
               op.observation_period_end_date AS op_end
        FROM first f JOIN {C}.observation_period op ON op.person_id = f.person_id
         AND f.d BETWEEN op.observation_period_start_date + INTERVAL {prior_days} DAY
                     AND op.observation_period_end_date
    """


T2DM_INCIDENT: dict[str, Any] = {
    "events": [{"condition": "t2dm"}],
    "first_occurrence": True,
}


def test_condition_with_descendants(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"sinusitis": {"include": [{"concept": SINUSITIS, "descendants": True}]}},
        "entry": {"events": [{"condition": "sinusitis"}]},
    }
    expected = reference(
        engine,
        all_events_to_end_of_observation(
            events(
                "condition_occurrence",
                "condition_concept_id",
                "condition_start_date",
                f"IN (SELECT descendant_concept_id FROM {V}.concept_ancestor "
                f"WHERE ancestor_concept_id = {SINUSITIS} UNION SELECT {SINUSITIS})",
            )
        ),
    )
    assert cohort(engine, document) == expected


def test_excluded_concept(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {
            "sinusitis": {
                "include": [{"concept": SINUSITIS, "descendants": True}],
                "exclude": [{"concept": VIRAL_SINUSITIS}],
            }
        },
        "entry": {"events": [{"condition": "sinusitis"}]},
    }
    expected = reference(
        engine,
        all_events_to_end_of_observation(
            events(
                "condition_occurrence",
                "condition_concept_id",
                "condition_start_date",
                f"IN (SELECT descendant_concept_id FROM {V}.concept_ancestor "
                f"WHERE ancestor_concept_id = {SINUSITIS} UNION SELECT {SINUSITIS}) "
                f"AND condition_concept_id <> {VIRAL_SINUSITIS}",
            )
        ),
    )
    assert cohort(engine, document) == expected


def test_first_occurrence_with_prior_observation(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM)},
        "entry": {**T2DM_INCIDENT, "prior_observation_days": 365},
    }
    expected = reference(engine, f"SELECT person_id, d, op_end FROM ({first_t2dm_index(365)})")
    assert cohort(engine, document) == expected


def test_drug_first_event_per_person_with_post_observation(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"metformin": concepts(METFORMIN)},
        "entry": {
            "events": [{"drug": "metformin"}],
            "events_per_person": "first",
            "post_observation_days": 30,
        },
    }
    expected = reference(
        engine,
        f"""
        WITH q AS (
            SELECT x.person_id, x.drug_exposure_start_date AS d, op.observation_period_end_date e
            FROM {C}.drug_exposure x JOIN {C}.observation_period op ON op.person_id = x.person_id
             AND x.drug_exposure_start_date BETWEEN op.observation_period_start_date
                 AND op.observation_period_end_date - INTERVAL 30 DAY
            WHERE x.drug_concept_id = {METFORMIN})
        SELECT person_id, min(d), arg_min(e, d) FROM q GROUP BY person_id
        """,
    )
    assert cohort(engine, document) == expected


def test_procedure(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"ecg": concepts(ECG)},
        "entry": {"events": [{"procedure": "ecg"}]},
    }
    expected = reference(
        engine,
        all_events_to_end_of_observation(
            events("procedure_occurrence", "procedure_concept_id", "procedure_date", f"= {ECG}")
        ),
    )
    assert cohort(engine, document) == expected


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"min": 30}, "value_as_number >= 30"),
        ({"max": 18.5}, "value_as_number <= 18.5"),
        ({"min": 25, "max": 29.9}, "value_as_number BETWEEN 25 AND 29.9"),
    ],
)
def test_measurement_value_range(engine: IbisCdm, value: dict[str, float], where: str) -> None:
    document = {
        "concept_sets": {"bmi": concepts(BMI)},
        "entry": {"events": [{"measurement": "bmi", "value": value}]},
    }
    expected = reference(
        engine,
        all_events_to_end_of_observation(
            events("measurement", "measurement_concept_id", "measurement_date", f"= {BMI}")
            + f" AND {where}"
        ),
    )
    assert cohort(engine, document) == expected


def test_observation_with_value(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"obs": concepts(OBSERVATION_CONCEPT)},
        "entry": {"events": [{"observation": "obs", "value": {"min": 7}}]},
    }
    expected = reference(
        engine,
        all_events_to_end_of_observation(
            events(
                "observation",
                "observation_concept_id",
                "observation_date",
                f"= {OBSERVATION_CONCEPT} AND value_as_number >= 7",
            )
        ),
    )
    assert cohort(engine, document) == expected


def test_visit(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"inpatient": concepts(INPATIENT)},
        "entry": {"events": [{"visit": "inpatient"}]},
    }
    expected = reference(
        engine,
        all_events_to_end_of_observation(
            events("visit_occurrence", "visit_concept_id", "visit_start_date", f"= {INPATIENT}")
        ),
    )
    assert cohort(engine, document) == expected


@pytest.mark.parametrize(("at_least", "start", "end"), [(1, -365, 0), (2, 0, 365)])
def test_inclusion_at_least_in_window(engine: IbisCdm, at_least: int, start: int, end: int) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM), "metformin": concepts(METFORMIN)},
        "entry": T2DM_INCIDENT,
        "inclusion": [
            {
                "name": "metformin in the window",
                "drug": "metformin",
                "window": {"from": start, "to": end},
                "at_least": at_least,
            }
        ],
    }
    expected = reference(
        engine,
        f"""
        SELECT i.person_id, i.d, i.op_end FROM ({first_t2dm_index()}) i
        WHERE (SELECT count(*) FROM {C}.drug_exposure x
               WHERE x.person_id = i.person_id AND x.drug_concept_id = {METFORMIN}
                 AND x.drug_exposure_start_date
                     BETWEEN i.d + INTERVAL ({start}) DAY AND i.d + INTERVAL ({end}) DAY
                 AND x.drug_exposure_start_date BETWEEN i.op_start AND i.op_end) >= {at_least}
        """,
    )
    assert cohort(engine, document) == expected


@pytest.mark.parametrize("anytime_in_history", [False, True])
def test_inclusion_none_ever_before(engine: IbisCdm, anytime_in_history: bool) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM), "hypertension": concepts(HYPERTENSION)},
        "entry": T2DM_INCIDENT,
        "inclusion": [
            {
                "name": "no hypertension before",
                "condition": "hypertension",
                "window": {"to": -1},
                "exactly": 0,
                "anytime_in_history": anytime_in_history,
            }
        ],
    }
    in_period = "" if anytime_in_history else "AND c.condition_start_date >= i.op_start"
    expected = reference(
        engine,
        f"""
        SELECT i.person_id, i.d, i.op_end FROM ({first_t2dm_index()}) i
        WHERE NOT EXISTS (
            SELECT 1 FROM {C}.condition_occurrence c
            WHERE c.person_id = i.person_id AND c.condition_concept_id = {HYPERTENSION}
              AND c.condition_start_date <= i.d - INTERVAL 1 DAY {in_period})
        """,
    )
    assert cohort(engine, document) == expected


def test_inclusion_at_most(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM), "metformin": concepts(METFORMIN)},
        "entry": T2DM_INCIDENT,
        "inclusion": [
            {"name": "few", "drug": "metformin", "window": {"from": 0}, "at_most": 3},
        ],
    }
    expected = reference(
        engine,
        f"""
        SELECT i.person_id, i.d, i.op_end FROM ({first_t2dm_index()}) i
        WHERE (SELECT count(*) FROM {C}.drug_exposure x
               WHERE x.person_id = i.person_id AND x.drug_concept_id = {METFORMIN}
                 AND x.drug_exposure_start_date BETWEEN i.d AND i.op_end) <= 3
        """,
    )
    assert cohort(engine, document) == expected


@pytest.mark.parametrize(
    ("demographics", "where"),
    [
        ({"age": {"min": 60}, "sex": ["female"]}, "age >= 60 AND p.gender_concept_id = 8532"),
        ({"age": {"min": 40, "max": 64}}, "age BETWEEN 40 AND 64"),
        ({"age": {"max": 49}, "sex": ["male"]}, "age <= 49 AND p.gender_concept_id = 8507"),
        ({"sex": ["male", "female"]}, "p.gender_concept_id IN (8507, 8532)"),
    ],
)
def test_age_at_index_and_sex(engine: IbisCdm, demographics: dict[str, Any], where: str) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM)},
        "entry": T2DM_INCIDENT,
        "demographics": demographics,
    }
    expected = reference(
        engine,
        f"""
        SELECT i.person_id, i.d, i.op_end
        FROM (SELECT *, year(d) - p.year_of_birth AS age FROM ({first_t2dm_index()}) i0
              JOIN {C}.person p USING (person_id)) i
        JOIN {C}.person p USING (person_id) WHERE {where}
        """,
    )
    assert cohort(engine, document) == expected


def test_exit_fixed_duration(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM)},
        "entry": T2DM_INCIDENT,
        "exit": {"days_after_start": 30},
    }
    expected = reference(
        engine,
        f"SELECT person_id, d, least(d + INTERVAL 30 DAY, op_end)::DATE "
        f"FROM ({first_t2dm_index()})",
    )
    assert cohort(engine, document) == expected


def test_exit_on_event(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM), "metformin": concepts(METFORMIN)},
        "entry": T2DM_INCIDENT,
        "exit": {"on_events": [{"drug": "metformin"}]},
    }
    expected = reference(
        engine,
        f"""
        SELECT i.person_id, i.d, least(i.op_end, (
            SELECT min(x.drug_exposure_start_date) FROM {C}.drug_exposure x
            WHERE x.person_id = i.person_id AND x.drug_concept_id = {METFORMIN}
              AND x.drug_exposure_start_date BETWEEN i.d AND i.op_end))
        FROM ({first_t2dm_index()}) i
        """,
    )
    rows = cohort(engine, document)
    assert rows == expected
    assert any(
        end < op_end
        for (_, _, end), (_, _, op_end) in zip(
            rows,
            reference(engine, f"SELECT person_id, d, op_end FROM ({first_t2dm_index()})"),
            strict=True,
        )
    )


def test_exit_end_of_observation_is_the_default(engine: IbisCdm) -> None:
    base = {"concept_sets": {"t2dm": concepts(T2DM)}, "entry": T2DM_INCIDENT}
    assert cohort(engine, base) == cohort(engine, {**base, "exit": {"end_of_observation": True}})


def test_no_staging_tables_are_left(engine: IbisCdm) -> None:
    document = {
        "concept_sets": {"t2dm": concepts(T2DM), "metformin": concepts(METFORMIN)},
        "entry": T2DM_INCIDENT,
        "inclusion": [{"name": "m", "drug": "metformin"}],
        "exit": {"on_events": [{"drug": "metformin"}]},
    }
    before = set(results_tables(engine))
    table = materialize(engine, make_spec("t", yaml=document))
    after = set(results_tables(engine))
    assert after - before == {table.op().name}
    drop(engine, table)
    assert set(results_tables(engine)) == before
