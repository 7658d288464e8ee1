"""The fl feature extract (`ehds.analyses.fl.extract`) against hand-written SQL on a synthetic
CDM: the same rows as the GLM reference (`tests/support/glm_reference.py`), y and features
only, and the ``aggregate: count`` feature against its own SQL."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from ehds.analyses.base import ComputeContext, TaskCancelledError
from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.analyses.fl.extract import build_extract
from ehds.analyses.fl.parameters import FlParameters
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate
from glm_reference import (
    AGE,
    FEMALE,
    LOGISTIC,
    PERSONS,
    SBP,
    SINUSITIS,
    pooled_sql,
    reference_logistic,
)

SINUSITIS_COUNT = {
    "kind": "condition",
    "name": "sinusitis_n",
    "concept_ids": [SINUSITIS],
    "include_descendants": True,
    "start_day": -3650,
    "end_day": 0,
    "aggregate": "count",
}


EMPTY_ZIP = b"PK\x05\x06" + b"\x00" * 18
"""A bundle's bytes are irrelevant to the extract; the parameters need one."""


def fl_parameters(covariates: list[dict[str, Any]]) -> FlParameters:
    return FlParameters.model_validate(
        {
            "app": {
                "name": "ehds-logreg",
                "version": "1.0.0",
                "sha256": hashlib.sha256(EMPTY_ZIP).hexdigest(),
                "fab": base64.b64encode(EMPTY_ZIP).decode(),
            },
            "target": LOGISTIC["target"],
            "outcome": LOGISTIC["outcome"],
            "covariates": covariates,
        }
    )


@pytest.fixture(scope="module")
def cdm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fl_extract") / "fi.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=PERSONS, seed=11, profile="fi"))
    return path


@pytest.fixture
def engine(cdm_file: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(cdm_file, tmp_path / "task.duckdb") as session:
        yield session


def context(engine: IbisCdm) -> ComputeContext:
    return ComputeContext(cdm=None, min_cell_count=5, engine=engine, study_id="fl1")


def test_extract_holds_the_reference_rows_without_ids(
    engine: IbisCdm, cdm_file: Path, tmp_path: Path
) -> None:
    params = fl_parameters([AGE, FEMALE, SBP, SINUSITIS_COUNT])
    path = tmp_path / "study" / "extract.parquet"
    summary = build_extract(context(engine), params, path)
    table = pq.read_table(path)
    assert table.column_names == ["y", "age10", "female", "sbp", "sinusitis_n"]
    assert summary.columns == table.column_names
    assert all(str(t) == "double" for t in table.schema.types)
    frame = table.to_pandas()
    reference = pooled_sql(
        {"fi": cdm_file},
        f"""
        WITH sinusitis AS (
            SELECT t.person_id, count(*) AS n FROM target t JOIN co
              ON co.person_id = t.person_id
             AND co.day BETWEEN t.index_date - 3650 AND t.index_date
             AND co.concept_id IN (SELECT descendant_concept_id FROM ca
                                   WHERE ancestor_concept_id = {SINUSITIS})
            GROUP BY t.person_id)
        SELECT t.person_id, coalesce(s.n, 0)::DOUBLE AS sinusitis_n
        FROM target t LEFT JOIN sinusitis s USING (person_id)
        """,
    )
    rows = reference_logistic({"fi": cdm_file}).merge(reference, on="person_id")
    rows = rows.sort_values("person_id")
    assert summary.rows == len(frame) == len(rows) > 100
    assert summary.events == int(rows.y.sum()) > 0
    for column in ["y", "age10", "female", "sbp", "sinusitis_n"]:
        np.testing.assert_allclose(
            frame[column].to_numpy(float), rows[column].to_numpy(float), rtol=1e-12
        )
    # the count is a count (some persons have several), not the any-flag
    assert frame.sinusitis_n.max() > 1
    # nothing but the extract is left in the study directory
    assert [p.name for p in path.parent.iterdir()] == ["extract.parquet"]


def test_extract_is_deterministic(engine: IbisCdm, tmp_path: Path) -> None:
    params = fl_parameters([AGE, FEMALE])
    first = build_extract(context(engine), params, tmp_path / "a.parquet")
    second = build_extract(context(engine), params, tmp_path / "b.parquet")
    assert first == second
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


def test_cancelled_extract_leaves_no_file(engine: IbisCdm, tmp_path: Path) -> None:
    ctx = context(engine)
    ctx.cancelled.set()
    path = tmp_path / "x" / "extract.parquet"
    with pytest.raises(TaskCancelledError):
        build_extract(ctx, fl_parameters([AGE]), path)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_a_feature_called_y_is_refused(engine: IbisCdm, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may not be called 'y'"):
        build_extract(
            context(engine), fl_parameters([{"kind": "sex", "name": "y"}]), tmp_path / "e.pq"
        )
