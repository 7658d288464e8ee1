"""`ehds study` and `ehds admin` against a real federation: a coordinator and two nodes as
separate processes over mutual TLS (`ehds.cli.local_federation`, the demo's own path).

One federation serves the whole module; the commands run in this process, as a researcher
and an operator would run them from a shell.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ehds.analyses.person_count import PersonCount, PersonCountParameters
from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.cli.main import main as cli_main
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import NodeTaskState, StudyState

pytestmark = pytest.mark.slow

NODES = ("node-fi", "node-fr")
CONNECT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("e2e") / "federation"
    local = prepare(
        root,
        ("fr", "fi"),
        persons=400,
        seed=5,
        node_policies={
            "node-fr": [("person_count", "1.0.0"), ("test.sleep", "1.0.0"), ("counts", "1.0.0")],
            "node-fi": [("person_count", "1.0.0"), ("counts", "1.0.0")],
        },
    )
    with running(local):
        with CoordinatorClient(load_client_config(local.operator_config)) as client:
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while sorted(n.name for n in client.list_nodes() if n.connected) != list(NODES):
                assert time.monotonic() < deadline, "nodes did not connect"
                time.sleep(0.1)
        yield local


def _study_file(folder: Path, name: str, body: str) -> Path:
    """A study file under the local federation's permit (added unless ``body`` names one)."""
    path = folder / name
    if "data_permit_id" not in body:
        body += f"data_permit_id: {PERMIT_ID}\n"
    path.write_text(body, encoding="utf-8")
    return path


def test_submit_wait_then_results_in_every_format(
    federation: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(federation.researcher_config)
    study = _study_file(
        tmp_path,
        "persons.yaml",
        "title: Persons by sex and age band\n"
        "analysis: {name: person_count, version: 1.0.0}\n"
        "parameters: {age_band_edges: [0, 18, 45, 65], reference_year: 2025}\n"
        "min_nodes: 2\n"
        "deadline_seconds: 120\n",
    )
    assert cli_main(["study", "--config", config, "submit", str(study), "--wait"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("study ")
    assert " submitted: Persons by sex and age band" in first
    study_id = first.split()[1]
    assert f"study {study_id}: COMPLETED" in out
    assert "pooled over: node-fi, node-fr" in out

    assert cli_main(["study", "--config", config, "results", study_id, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["study_id"] == study_id
    assert document["contributors"] == list(NODES)
    released = {entry["node"]: entry["result"] for entry in document["nodes"]}
    assert document["pooled"] == PersonCount().aggregate(PersonCountParameters(), released)

    assert cli_main(["study", "--config", config, "results", study_id, "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "sex,age_band,persons,flags"
    assert len(rows) == 13

    assert cli_main(["study", "--config", config, "list"]) == 0
    assert study_id in capsys.readouterr().out


def test_summarised_results_export_node_and_pooled_rows(
    federation: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`counts` produces summarised results: the CLI and the client export its long table,
    every node's rows and the pool's, and each complete pooled count is the nodes' sum."""
    config = str(federation.researcher_config)
    study = _study_file(
        tmp_path,
        "counts.yaml",
        "title: Persons by sex\n"
        "analysis: {name: counts, version: 1.0.0}\n"
        "parameters: {strata: [sex]}\n"
        "min_nodes: 2\n"
        "deadline_seconds: 120\n",
    )
    assert cli_main(["study", "--config", config, "submit", str(study), "--wait"]) == 0
    out = capsys.readouterr().out
    study_id = out.splitlines()[0].split()[1]
    assert "pooled over: node-fi, node-fr" in out
    assert "cdm_name" in out

    target = tmp_path / "counts.parquet"
    args = ["study", "--config", config, "results", study_id]
    assert cli_main([*args, "--format", "parquet", "-o", str(target)]) == 0
    capsys.readouterr()
    table = pq.read_table(target)
    assert set(table.column("result_id").to_pylist()) == {study_id}
    records = table.to_pylist()
    assert {r["cdm_name"] for r in records} == {"node-fi", "node-fr", "pooled"}
    by_place: dict[tuple[str, ...], dict[str, float | None]] = {}
    for r in records:
        key = (r["strata_name"], r["strata_level"], r["variable_name"], r["estimate_name"])
        by_place.setdefault(key, {})[r["cdm_name"]] = r["estimate_value"]
    counts = [
        (key, values)
        for key, values in by_place.items()
        if key[3] == "count" and set(values) == {"node-fi", "node-fr", "pooled"}
    ]
    assert counts
    for _key, values in counts:
        fi, fr = values["node-fi"], values["node-fr"]
        if fi is not None and fr is not None:
            assert values["pooled"] == fi + fr

    assert cli_main([*args, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("result_id,cdm_name,")
    assert len(lines) == 1 + len(records)
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        assert client.results_table(study_id).to_pylist() == records


def test_cancel_reaches_a_running_task(
    federation: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study_file(
        tmp_path,
        "sleep.yaml",
        "title: blocks until cancelled\n"
        "analysis: {name: test.sleep, version: 1.0.0}\n"
        "parameters: {seconds: 120}\n"
        "target_nodes: [node-fr]\n",
    )
    config = str(federation.researcher_config)
    assert cli_main(["study", "--config", config, "submit", str(study)]) == 0
    study_id = capsys.readouterr().out.split()[1]
    with CoordinatorClient(load_client_config(federation.researcher_config)) as client:
        for snapshot in client.watch(study_id, timeout=30):
            if snapshot.nodes[0].state in (NodeTaskState.RECEIVED, NodeTaskState.RUNNING):
                break
        assert cli_main(["study", "--config", config, "cancel", study_id, "--reason", "e2e"]) == 0
        assert capsys.readouterr().out.startswith(f"study {study_id}: ")
        final = client.wait(study_id, timeout=30)
    assert final.state is StudyState.CANCELLED
    assert final.nodes[0].state is NodeTaskState.CANCELLED


def test_coordinator_rejections_and_roles(
    federation: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study_file(
        tmp_path,
        "unknown-node.yaml",
        "title: t\nanalysis: {name: person_count, version: 1.0.0}\ntarget_nodes: [node-xx]\n",
    )
    config = str(federation.researcher_config)
    assert cli_main(["study", "--config", config, "submit", str(study)]) == 2
    err = capsys.readouterr().err
    assert "rejected by the coordinator: spec.data_permit_id: permit.node_not_covered" in err
    assert "node-xx" in err

    # A researcher certificate does not open the admin API; an operator's does.
    assert cli_main(["admin", "--config", config, "nodes"]) == 2
    assert "refused this certificate" in capsys.readouterr().err
    assert cli_main(["admin", "--config", str(federation.operator_config), "nodes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[2:]] == [["node-fi", "yes"], ["node-fr", "yes"]]
