"""Fixtures shared by every connector test (framework, FHIR, SNDS, CSV mapping, Spark).

``synthea_vocab_db`` is made once per session from the vocabulary of the Synthea27Nj CDM
extract (``../shared/data``): concept, concept_relationship (with 'Maps to')... loaded by
``load_vocabulary`` in the CDM dialect, with every CDM table created empty. Tests that write
take a private copy through ``vocab_db``.
"""

from __future__ import annotations

import gc
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES
from ehds.omop.vocabulary import load_vocabulary

# Standard concepts every Athena download has but the Synthea27Nj shard lacks (concept 0, genders,
# races, ethnicities, visit and type concepts the connectors write): added so that the
# data-quality foreign-key checks judge the mapping, not the shard's gaps.
ATHENA_BASICS = (
    (0, "No matching concept", "Metadata", "None", "Undefined", None, "No matching concept"),
    (8507, "MALE", "Gender", "Gender", "Gender", "S", "M"),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
    (8515, "Asian", "Race", "Race", "Race", "S", "2"),
    (8516, "Black or African American", "Race", "Race", "Race", "S", "3"),
    (8527, "White", "Race", "Race", "Race", "S", "5"),
    (8557, "Native Hawaiian or Other Pacific Islander", "Race", "Race", "Race", "S", "4"),
    (8657, "American Indian or Alaska Native", "Race", "Race", "Race", "S", "1"),
    (38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Hispanic"),
    (
        38003564,
        "Not Hispanic or Latino",
        "Ethnicity",
        "Ethnicity",
        "Ethnicity",
        "S",
        "Not Hispanic",
    ),
    (9201, "Inpatient Visit", "Visit", "Visit", "Visit", "S", "IP"),
    (9202, "Outpatient Visit", "Visit", "Visit", "Visit", "S", "OP"),
    (9203, "Emergency Room Visit", "Visit", "Visit", "Visit", "S", "ER"),
    (262, "Emergency Room and Inpatient Visit", "Visit", "Visit", "Visit", "S", "ERIP"),
    (581458, "Pharmacy visit", "Visit", "CMS Place of Service", "Visit", "S", "01"),
    (581476, "Home Visit", "Visit", "CMS Place of Service", "Visit", "S", "12"),
    (722455, "Telehealth", "Visit", "CMS Place of Service", "Visit", "S", "02"),
    (4171756, "<", "Meas Value Operator", "SNOMED", "Qualifier Value", "S", "276139006"),
    (4171754, "<=", "Meas Value Operator", "SNOMED", "Qualifier Value", "S", "276137008"),
    (4171755, ">=", "Meas Value Operator", "SNOMED", "Qualifier Value", "S", "276140008"),
    (4172704, ">", "Meas Value Operator", "SNOMED", "Qualifier Value", "S", "276138003"),
    (32810, "Claim", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890"),
    (
        32815,
        "Death Certificate",
        "Type Concept",
        "Type Concept",
        "Type Concept",
        "S",
        "OMOP4976895",
    ),
    (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976897"),
    (
        32880,
        "Standard algorithm",
        "Type Concept",
        "Type Concept",
        "Type Concept",
        "S",
        "OMOP4976960",
    ),
    (
        32902,
        "Primary diagnosis",
        "Condition Status",
        "Condition Status",
        "Condition Status",
        "S",
        "OMOP4976972",
    ),
    (
        32908,
        "Secondary diagnosis",
        "Condition Status",
        "Condition Status",
        "Condition Status",
        "S",
        "OMOP4976978",
    ),
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SYNTHEA_ZIP_PARTS = ("synthea27nj-omop54", "Synthea27Nj_5.4.zip")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (the test data, never copied into it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthea_vocab_db(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file holding Synthea27Nj's vocabulary tables and every CDM table, empty.
    Read-only by convention: copy it (``vocab_db``) before writing."""
    archive = shared_data.joinpath(*SYNTHEA_ZIP_PARTS)
    if not archive.is_file():
        pytest.skip(f"Synthea27Nj extract not found at {archive}")
    path = tmp_path_factory.mktemp("synthea-vocab") / "synthea.duckdb"
    db = CdmDatabase.parse(str(path))
    with bulk_writer(db) as writer:
        writer.ensure_tables([*CDM_TABLES, *RESULTS_TABLES])
    load_vocabulary(archive, db)
    with duckdb.connect(str(path)) as con:
        con.executemany(
            "INSERT INTO vocab.concept (concept_id, concept_name, domain_id, vocabulary_id, "
            "concept_class_id, standard_concept, concept_code, valid_start_date, valid_end_date) "
            "SELECT ?, ?, ?, ?, ?, ?, ?, DATE '1970-01-01', DATE '2099-12-31' "
            "WHERE NOT EXISTS (SELECT 1 FROM vocab.concept WHERE concept_id = ?)",
            [(*row, row[0]) for row in ATHENA_BASICS],
        )
    return path


def copy_vocab_db(source: Path, directory: Path) -> Path:
    """A writable copy of ``source`` in ``directory`` (same file name)."""
    target = directory / source.name
    shutil.copyfile(source, target)
    return target


@pytest.fixture
def vocab_db(synthea_vocab_db: Path, tmp_path: Path) -> Path:
    """This test's own copy of ``synthea_vocab_db`` (``tmp_path/synthea.duckdb``)."""
    return copy_vocab_db(synthea_vocab_db, tmp_path)


SPARK_TEST_CONF = {"spark.sql.shuffle.partitions": "1", "spark.sql.adaptive.enabled": "false"}
"""Tiny inputs: one shuffle partition and no adaptive re-planning keep the Spark tests fast."""


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One local SparkSession per test module (starting one costs seconds); skipped without
    Java 17+, except in CI (CI=true), where that fails."""
    from ehds.connectors.spark.session import (
        SparkJobSettings,
        SparkUnavailableError,
        local_session,
        require_java,
    )

    try:
        require_java()
    except SparkUnavailableError as error:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{error} (CI=true)")
        pytest.skip(str(error))
    settings = SparkJobSettings(tmp_path_factory.mktemp("spark-session"), conf=SPARK_TEST_CONF)
    with local_session(settings) as session:
        yield session
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        gc.collect()
