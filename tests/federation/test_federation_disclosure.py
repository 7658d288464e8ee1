"""The differencing guard through the live federation.

A researcher counts a hypertension cohort, then the same cohort with an upper age limit that
removes a few persons at some node. Subtracting the two results would describe those persons,
so that node refuses the second study with DISCLOSURE_REFUSED; the result document names the
code and the rule (and the threshold), never how many persons the cohorts differ by. Nodes
where the age limit removes nobody (an identical population) or at least the threshold still
contribute, and re-running the first study unchanged is allowed everywhere.

The age limit is chosen from the nodes' own CDMs before the federation starts, so the test
knows which node must refuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ehds.analyses.cohorts import drop, make_spec, materialize
from ehds.analyses.engine import duckdb_session
from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, ErrorCode, Study, StudySpec, StudyState

pytestmark = pytest.mark.slow

T = 5
PERSONS = 600
COUNTS = AnalysisRef("counts", "1.0.0")
HYPERTENSION: dict[str, Any] = {
    "concept_sets": {"hypertension": {"include": [{"concept": 320128, "descendants": True}]}},
    "entry": {"events": [{"condition": "hypertension"}], "first_occurrence": True},
}


def _cohort(age_max: int | None) -> dict[str, Any]:
    if age_max is None:
        return {"name": "hypertension", "yaml": HYPERTENSION}
    return {
        "name": f"hypertension to {age_max}",
        "yaml": {**HYPERTENSION, "demographics": {"age": {"max": age_max}}},
    }


def _ages_at_index(cdm: Path, scratch: Path) -> list[int]:
    """Age at index (year of index minus year of birth, as the cohort language defines it) of
    every person in the hypertension cohort of one node's CDM."""
    with duckdb_session(cdm, scratch) as engine:
        table = materialize(engine, make_spec("hypertension", yaml=HYPERTENSION))
        try:
            person = engine.table("person")
            joined = table.join(
                person.select(person_id=person.person_id.cast("int64"), born=person.year_of_birth),
                "person_id",
            )
            ages = joined.group_by(age=joined.cohort_start_date.year() - joined.born).aggregate(
                n=joined.count()
            )
            rows = engine.collect(ages, max_rows=200)
        finally:
            drop(engine, table)
    return [int(row["age"]) for row in rows for _ in range(int(row["n"]))]


def _choose_age_limit(ages: dict[str, list[int]]) -> tuple[int, dict[str, int]]:
    """An age limit that removes 1..T-1 persons at some node and at least T at another (which
    then contributes, so the study completes and has a result document); failing that, none at
    another (an identical population, which contributes too)."""
    candidates = []
    for limit in range(110, 40, -1):
        removed = {node: sum(1 for age in own if age > limit) for node, own in ages.items()}
        if any(0 < n < T for n in removed.values()):
            candidates.append((limit, removed))
    for passing in (range(T, PERSONS + 1), range(1)):
        for limit, removed in candidates:
            if any(n in passing for n in removed.values()):
                return limit, removed
    raise AssertionError("no age limit separates the nodes; change PERSONS or the cohort")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    fed = prepare(
        tmp_path / "fed", persons=PERSONS, min_cell_count=T, analyses=[(COUNTS.name, "1.0.0")]
    )
    with running(fed, nodes=False) as started:
        yield started


def _submit(client: CoordinatorClient, title: str, cohort: dict[str, Any]) -> Study:
    spec = StudySpec(
        title=title,
        analysis=COUNTS,
        parameters=json.dumps({"cohort": cohort}).encode(),
        min_nodes=1,
        deadline_seconds=120,
        data_permit_id=PERMIT_ID,
    )
    study = client.submit(spec)
    return client.wait(study.id, timeout=120)


def test_a_cohort_a_few_persons_apart_from_a_released_one_is_refused(
    federation: LocalFederation, tmp_path: Path
) -> None:
    ages = {
        name: _ages_at_index(node.cdm, tmp_path / f"scratch-{name}.duckdb")
        for name, node in federation.nodes.items()
    }
    limit, removed = _choose_age_limit(ages)
    refusing = {node for node, n in removed.items() if 0 < n < T}

    for name in federation.nodes:
        federation.start_node(name)
    wait_for_nodes(federation.operator_config, list(federation.nodes), 60)
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        first = _submit(client, "hypertension", _cohort(None))
        assert first.state == StudyState.COMPLETED, first.state_reason
        assert len(client.results(first.id)["contributors"]) == len(federation.nodes)

        second = _submit(client, "hypertension, age-limited", _cohort(limit))
        assert second.state == StudyState.COMPLETED, second.state_reason
        document = client.results(second.id)

        # The identical re-run passes everywhere, even after the refusal.
        again = _submit(client, "hypertension again", _cohort(None))
        assert again.state == StudyState.COMPLETED, again.state_reason
        assert len(client.results(again.id)["contributors"]) == len(federation.nodes)

    by_node = {entry["node"]: entry for entry in document["nodes"]}
    assert set(document["contributors"]) == set(federation.nodes) - refusing
    for name in refusing:
        entry = by_node[name]
        assert (entry["state"], entry["error_code"]) == ("REFUSED", "DISCLOSURE_REFUSED")
        assert entry["result"] is None
        reason = entry["reason"]
        assert "differencing" in reason
        assert f"fewer than {T} persons" in reason
        # Rule and threshold only: no count, no size, no difference.
        assert set(re.findall(r"\d+", reason)) == {str(T)}
    # The study's status (what `ehds study status` shows) says the same.
    statuses = {status.node_name: status for status in second.nodes}
    for name in refusing:
        assert statuses[name].error_code is ErrorCode.DISCLOSURE_REFUSED
        assert statuses[name].reason == by_node[name]["reason"]
