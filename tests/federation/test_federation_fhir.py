"""A node fed from FHIR instead of the synthetic generator, through the live federation.

node-dk's CDM is built by the FHIR connector from a bulk export (the Synthea 10-patient sample
from ``../shared/data``, replicated with new ids so that cells are not all small), exactly as
`ehds demo --fhir DIR` builds it. A `person_count` study over the running federation must
give, for every cell no node suppressed, the count made by hand from the export's Patient
resources (gender and birth year read with json, no code of ours).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.connectors.fhir.scaleup import replicate
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, StudySpec, StudyState

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fhir-synthea-10"
COPIES = 12
T = 5
REFERENCE_YEAR = 2025
EDGES = [0, 18, 45, 65]
BANDS = ["0-17", "18-44", "45-64", "65+"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"the Synthea FHIR sample is not at {SAMPLE}")
    out = tmp_path_factory.mktemp("fhir-export")
    replicate(SAMPLE, out, COPIES)
    return out


@pytest.fixture(scope="module")
def federation(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("fed-fhir")
    fed = prepare(
        root / "fed",
        ("dk",),
        analyses=[("person_count", "1.0.0")],
        min_cell_count=T,
        fhir_sources={"node-dk": export},
    )
    with running(fed) as started:
        wait_for_nodes(started.operator_config, list(started.nodes), 60)
        yield started


def _patients_by_cell(export: Path) -> Counter[tuple[str, str]]:
    """Persons by sex and age band at the reference year, from the Patient resources."""
    cells: Counter[tuple[str, str]] = Counter()
    for path in sorted(export.glob("Patient*.ndjson*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                patient = json.loads(line)
                age = REFERENCE_YEAR - int(patient["birthDate"][:4])
                if age < 0:
                    continue
                sex = {"female": "FEMALE", "male": "MALE"}.get(patient.get("gender", ""))
                band = BANDS[sum(1 for edge in EDGES[1:] if age >= edge)]
                cells[(sex or "OTHER/UNKNOWN", band)] += 1
    return cells


def test_fhir_fed_node_counts_equal_the_export(federation: LocalFederation, export: Path) -> None:
    parameters = {"age_band_edges": EDGES, "reference_year": REFERENCE_YEAR}
    spec = StudySpec(
        title="persons at the FHIR-fed node",
        analysis=AnalysisRef("person_count", "1.0.0"),
        parameters=json.dumps(parameters, sort_keys=True).encode(),
        min_nodes=1,
        deadline_seconds=120,
        data_permit_id=PERMIT_ID,
    )
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        study = client.submit(spec)
        assert client.wait(study.id, timeout=120).state == StudyState.COMPLETED
        document: dict[str, Any] = client.results(study.id)
    truth = _patients_by_cell(export)
    assert sum(truth.values()) == 13 * COPIES
    compared = 0
    for cell in document["pooled"]["cells"]:
        key = (cell["sex"], cell["age_band"])
        if not cell["complete"]:
            assert 0 < truth[key] < T, key
            continue
        assert cell["count"] == truth[key], key
        compared += truth[key]
    assert compared >= 10 * COPIES, "too few persons in unsuppressed cells to mean anything"
