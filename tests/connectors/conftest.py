"""Fixtures shared by every connector test (framework, FHIR, SNDS, CSV mapping, Spark).

``synthea_vocab_db`` is made once per session from the vocabulary of the Synthea27Nj CDM
extract (``../shared/data``): concept, concept_relationship (with 'Maps to')... loaded by
``load_vocabulary`` in the CDM dialect, with every CDM table created empty. Tests that write
take a private copy through ``vocab_db``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES
from ehds.omop.vocabulary import load_vocabulary

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
