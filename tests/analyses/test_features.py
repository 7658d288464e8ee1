"""Features at index (`ehds.analyses.features`) against hand-written SQL on a synthetic CDM,
and the validation of feature definitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.features import Feature, Features, with_features
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

HYPERTENSION = 320128
SINUSITIS = 4283893  # never written itself: only its descendants are
SYSTOLIC_BP = 3004249
OSTEOARTHRITIS_DRUGS = [1118084, 1115171, 19078461, 1124300, 1127433]

FEATURES: list[dict[str, Any]] = [
    {"kind": "age", "name": "age", "per_years": 10},
    {"kind": "sex", "name": "female"},
    {
        "kind": "condition",
        "name": "sinusitis_exact",
        "concept_ids": [SINUSITIS],
        "include_descendants": False,
        "start_day": -3650,
        "end_day": 0,
    },
    {
        "kind": "condition",
        "name": "sinusitis",
        "concept_ids": [SINUSITIS],
        "start_day": -3650,
        "end_day": 0,
    },
    {
        "kind": "drug",
        "name": "oa_drug",
        "concept_ids": OSTEOARTHRITIS_DRUGS,
        "include_descendants": False,
        "start_day": -730,
        "end_day": 30,
    },
    {
        "kind": "measurement",
        "name": "sbp",
        "concept_ids": [SYSTOLIC_BP],
        "include_descendants": False,
        "start_day": -365,
        "end_day": 0,
    },
]


class _Holder(BaseModel):
    features: Features


def parse(raw: list[dict[str, Any]]) -> list[Feature]:
    return _Holder.model_validate({"features": raw}).features


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("features") / "fi.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=3000, seed=5, profile="fi"))
    return path


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "task.duckdb") as session:
        yield session


REFERENCE = f"""
WITH idx AS (SELECT person_id, min(condition_start_date) AS d FROM cdm.condition_occurrence
             WHERE condition_concept_id = {HYPERTENSION} GROUP BY person_id),
sbp_rows AS (SELECT i.person_id, m.measurement_date AS day, m.value_as_number AS v
             FROM idx i JOIN cdm.measurement m ON m.person_id = i.person_id
             AND m.measurement_concept_id = {SYSTOLIC_BP} AND m.value_as_number IS NOT NULL
             AND m.measurement_date BETWEEN i.d - 365 AND i.d),
sbp AS (SELECT person_id, avg(v) AS v FROM sbp_rows
        WHERE (person_id, day) IN (SELECT person_id, max(day) FROM sbp_rows GROUP BY 1)
        GROUP BY 1)
SELECT i.person_id,
       (year(i.d) - p.year_of_birth) / 10.0 AS age,
       CASE WHEN p.gender_concept_id = 8532 THEN 1.0 ELSE 0.0 END AS female,
       0.0 AS sinusitis_exact,
       CASE WHEN EXISTS (SELECT 1 FROM cdm.condition_occurrence c
            WHERE c.person_id = i.person_id AND c.condition_start_date BETWEEN i.d - 3650 AND i.d
            AND c.condition_concept_id IN (SELECT descendant_concept_id FROM vocab.concept_ancestor
                                           WHERE ancestor_concept_id = {SINUSITIS}))
            THEN 1.0 ELSE 0.0 END AS sinusitis,
       CASE WHEN EXISTS (SELECT 1 FROM cdm.drug_exposure x
            WHERE x.person_id = i.person_id
            AND x.drug_exposure_start_date BETWEEN i.d - 730 AND i.d + 30
            AND x.drug_concept_id IN ({", ".join(map(str, OSTEOARTHRITIS_DRUGS))}))
            THEN 1.0 ELSE 0.0 END AS oa_drug,
       s.v AS sbp
FROM idx i JOIN cdm.person p USING (person_id) JOIN sbp s USING (person_id)
ORDER BY i.person_id
"""


def test_features_equal_hand_written_sql(engine: IbisCdm, cdm_file: Path) -> None:
    co = engine.table("condition_occurrence")
    index = (
        co.filter(co.condition_concept_id == HYPERTENSION)
        .group_by(person_id=co.person_id.cast("int64"))
        .agg(index_date=co.condition_start_date.min())
    )
    table = with_features(engine, index, parse(FEATURES), prefix="f_")
    got = pd.DataFrame(engine.collect(table, max_rows=10_000)).sort_values("person_id")
    with duckdb.connect(str(cdm_file), read_only=True) as con:
        expected = con.execute(REFERENCE).df()
    assert len(got) == len(expected) > 100
    assert list(got.person_id) == list(expected.person_id)
    for feature in FEATURES:
        name = feature["name"]
        np.testing.assert_allclose(
            got[f"f_{name}"].to_numpy(float), expected[name].to_numpy(float), rtol=1e-12
        )
    # the descendants are what find the cases, and the binary features vary
    assert expected.sinusitis.sum() > 0
    assert expected.oa_drug.sum() > 0
    assert set(got.columns) == {"person_id", "index_date", *(f"f_{f['name']}" for f in FEATURES)}


def test_a_person_without_the_measurement_is_dropped(engine: IbisCdm) -> None:
    co = engine.table("condition_occurrence")
    index = (
        co.filter(co.condition_concept_id == HYPERTENSION)
        .group_by(person_id=co.person_id.cast("int64"))
        .agg(index_date=co.condition_start_date.min())
    )
    everyone = engine.scalar(with_features(engine, index, parse(FEATURES[:2])).count())
    measured = engine.scalar(with_features(engine, index, parse(FEATURES)).count())
    assert everyone == engine.scalar(index.count())
    assert 0 < measured < everyone


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"kind": "sex", "name": "Female"}], "feature name"),
        ([{"kind": "sex", "name": "intercept"}], "may not be called"),
        ([{"kind": "sex", "name": "a"}, {"kind": "age", "name": "a"}], "used twice"),
        ([{"kind": "bmi", "name": "a"}], "does not match any of the expected tags"),
        ([{"kind": "age", "name": "a", "per_years": 0}], "greater than 0"),
        (
            [
                {
                    "kind": "drug",
                    "name": "a",
                    "concept_ids": [1],
                    "start_day": 10,
                    "end_day": 0,
                }
            ],
            "end_day is before start_day",
        ),
        (
            [{"kind": "condition", "name": "a", "concept_ids": [], "start_day": 0, "end_day": 0}],
            "at least 1 item",
        ),
        ([{"kind": "sex", "name": "a", "extra": 1}], "Extra inputs"),
    ],
)
def test_invalid_definitions_are_refused(raw: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse(raw)


def test_a_feature_list_survives_json() -> None:
    adapter = TypeAdapter(Features)
    features = adapter.validate_python(FEATURES)
    assert adapter.validate_json(adapter.dump_json(features)) == features
