"""A federated result equals the pooled result, through the live federation.

Three nodes with their own synthetic CDMs (disjoint person ids) run `person_count` as separate
processes; the pooled table the researcher receives must equal a hand-written SQL query over the
three CDMs attached in one DuckDB session, wherever no node suppressed the cell. Suppression is
checked on its own: every cell a node released is at least the threshold, and every cell it
withheld is below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState

pytestmark = pytest.mark.slow

MIN_CELL = 5
EDGES = [0, 18, 45, 65]
BAND_SQL = """CASE WHEN age >= 65 THEN '65+' WHEN age >= 45 THEN '45-64'
                   WHEN age >= 18 THEN '18-44' ELSE '0-17' END"""
SEX_SQL = """CASE gender_concept_id WHEN 8507 THEN 'MALE' WHEN 8532 THEN 'FEMALE'
                   ELSE 'OTHER/UNKNOWN' END"""


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    fed = prepare(tmp_path / "fed", persons=3000, min_cell_count=MIN_CELL)
    with running(fed) as started:
        yield started


def _counts(cdm_files: list[Path]) -> dict[tuple[str, str], int]:
    with duckdb.connect() as db:
        selects = []
        for i, path in enumerate(cdm_files):
            db.execute(f"ATTACH '{path}' AS n{i} (READ_ONLY)")
            selects.append(
                f"SELECT gender_concept_id, 2025 - year_of_birth AS age FROM n{i}.cdm.person"
            )
        rows = db.execute(
            f"SELECT {SEX_SQL} AS sex, {BAND_SQL} AS band, count(*) FROM "
            f"({' UNION ALL '.join(selects)}) WHERE age >= 0 GROUP BY ALL"
        ).fetchall()
    return {(sex, band): n for sex, band, n in rows}


def test_federated_person_count_equals_pooled_sql(federation: LocalFederation) -> None:
    from ehds.cli.demo_command import wait_for_nodes

    wait_for_nodes(federation.operator_config, list(federation.nodes), 60)
    spec = StudySpec(
        title="persons by sex and age band",
        analysis=AnalysisRef("person_count", "1.0.0"),
        parameters=b'{"age_band_edges":[0,18,45,65],"reference_year":2025}',
        min_nodes=3,
        deadline_seconds=120,
        data_permit_id=PERMIT_ID,
    )
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        study = client.submit(spec)
        assert client.wait(study.id, timeout=120).state == StudyState.COMPLETED
        document = client.results(study.id)

    pooled = _counts([node.cdm for node in federation.nodes.values()])
    compared = 0
    for cell in document["pooled"]["cells"]:
        if cell["complete"]:
            assert cell["count"] == pooled.get((cell["sex"], cell["age_band"]), 0), cell
            compared += 1
    assert compared >= 6, "too few complete cells for the comparison to mean anything"

    for entry in document["nodes"]:
        node = federation.nodes[entry["node"]]
        own = _counts([node.cdm])
        for cell in entry["result"]["cells"]:
            true_count = own.get((cell["sex"], cell["age_band"]), 0)
            if cell["suppressed"]:
                assert cell["count"] is None
                assert 0 < true_count < MIN_CELL
            else:
                assert cell["count"] == true_count
                assert true_count == 0 or true_count >= MIN_CELL
