"""Fixtures of the node agent tests: one PKI and one synthetic CDM shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from node_harness import Pki

from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate
from ehds.pki import Role, init_authority, issue_certificate


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("node-pki") / "pki"
    init_authority(root, "node-tests")
    issue_certificate(root, Role.COORDINATOR, "central")
    for name in ("hospital-a", "hospital-b"):
        issue_certificate(root, Role.NODE, name)
    issue_certificate(root, Role.RESEARCHER, "alice")
    return Pki(root)


@pytest.fixture(scope="session")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 500-person synthetic CDM (DuckDB), opened read-only by every node of the session."""
    path = tmp_path_factory.mktemp("node-cdm") / "synthetic.duckdb"
    generate(CdmDatabase.parse(str(path)), SynthOptions(persons=500, seed=7, profile="fr"))
    return path
