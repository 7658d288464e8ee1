"""Fixtures for cohort tests: a small synthetic CDM (with observation rows added, since the
generator writes none) and an engine session on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ehds.analyses.engine import IbisCdm, duckdb_session
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate

OBSERVATION_CONCEPT = 4275495
"""The concept of the observation rows the fixture adds (any id: observation rows are ours)."""


@pytest.fixture(scope="session")
def synth_cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cohorts") / "synth.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=3000, seed=7))
    con = duckdb.connect(str(path))
    try:
        # one observation per HbA1c measurement, with its value: exercises observation
        # events and observation value ranges
        con.execute(
            f"""
            INSERT INTO cdm.observation (observation_id, person_id, observation_concept_id,
                observation_date, observation_type_concept_id, value_as_number)
            SELECT measurement_id, person_id, {OBSERVATION_CONCEPT}, measurement_date, 32817,
                value_as_number
            FROM cdm.measurement WHERE measurement_concept_id = 3004410
            """
        )
    finally:
        con.close()
    return path


@pytest.fixture
def engine(synth_cdm: Path, tmp_path: Path) -> Iterator[IbisCdm]:
    with duckdb_session(synth_cdm, tmp_path / "node_results.duckdb") as cdm:
        yield cdm
