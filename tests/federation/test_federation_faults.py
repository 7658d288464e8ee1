"""Faults and bad input, each against a real federation: a coordinator and nodes as separate OS
processes started through `ehds`, over mutual TLS, exactly as an operator runs them.

The blocking (`test.sleep`) and large-result (`test.blob`) analyses run only because these
tests' node policies allow them; no example or demo policy does.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import yaml

from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, NodeTaskState, Study, StudySpec, StudyState
from ehds.pki import Role, init_authority, issue_certificate, revoke_certificate

pytestmark = pytest.mark.slow


class ConnectProxy(Protocol):
    """The `connect_proxy` fixture (tests/federation/conftest.py)."""

    url: str
    tunnels_opened: int

    def freeze(self) -> None: ...


PERSONS = 600
WAIT_S = 30.0
POLICY = (("person_count", "1.0.0"), ("test.sleep", "1.0.0"), ("test.blob", "1.0.0"))


@pytest.fixture(scope="session")
def cdm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cdm-cache")


@pytest.fixture
def federation(tmp_path: Path, cdm_cache: Path) -> Iterator[LocalFederation]:
    fed = prepare(
        tmp_path / "fed",
        persons=PERSONS,
        analyses=POLICY,
        heartbeat_interval_seconds=0.5,
        keepalive=(2.0, 2.0),
        cdm_cache=cdm_cache,
    )
    try:
        yield fed
    finally:
        fed.close()
        assert fed.running_pids() == []


def researcher(fed: LocalFederation) -> CoordinatorClient:
    return CoordinatorClient(load_client_config(fed.researcher_config))


def operator(fed: LocalFederation) -> CoordinatorClient:
    return CoordinatorClient(load_client_config(fed.operator_config))


def start_all(fed: LocalFederation) -> None:
    fed.start_coordinator()
    for name in fed.nodes:
        fed.start_node(name)
    wait_connected(fed, set(fed.nodes))


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def connected(fed: LocalFederation) -> set[str]:
    with operator(fed) as client:
        return {n.name for n in client.list_nodes() if n.connected}


def wait_connected(fed: LocalFederation, names: set[str]) -> None:
    wait_until(f"{sorted(names)} connected", lambda: names <= connected(fed))


def spec(
    analysis: str,
    parameters: bytes,
    *,
    targets: tuple[str, ...] = (),
    min_nodes: int = 1,
    deadline: int = 120,
) -> StudySpec:
    return StudySpec(
        title=f"fault test {analysis}",
        analysis=AnalysisRef(analysis, "1.0.0"),
        parameters=parameters,
        min_nodes=min_nodes,
        deadline_seconds=deadline,
        data_permit_id=PERMIT_ID,
        target_nodes=targets,
    )


def node_state(study: Study, node: str) -> NodeTaskState:
    return next(s.state for s in study.nodes if s.node_name == node)


def wait_node_state(fed: LocalFederation, study_id: str, node: str, state: NodeTaskState) -> None:
    def reached() -> bool:
        with researcher(fed) as client:
            return node_state(client.get(study_id), node) == state

    wait_until(f"{node} {state.name}", reached)


def coordinator_db(fed: LocalFederation) -> Path:
    return fed.coordinator_config.parent / "coordinator-state.db"


def results_rows(fed: LocalFederation, study_id: str) -> list[tuple[str, int]]:
    """(node, payload size) of every node result the coordinator stored for the study."""
    with sqlite3.connect(coordinator_db(fed)) as db:
        return db.execute(
            "SELECT t.node_name, length(r.payload) FROM results r JOIN tasks t "
            "ON t.task_id = r.task_id WHERE t.study_id = ? ORDER BY t.node_name",
            (study_id,),
        ).fetchall()


def metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of a Prometheus metric scraped from a process's plain health port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if got == wanted:
            return float(value)
    return 0.0


def ehds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehds.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- bad input


def test_bad_study_files_are_refused_before_anything_is_dispatched(
    federation: LocalFederation, tmp_path: Path
) -> None:
    start_all(federation)
    cases = {
        "malformed.yaml": ("title: [unclosed\n", "not valid YAML"),
        "unknown.yaml": (
            "title: t\nanalysis: {name: no_such_analysis, version: 1.0.0}\nparameters: {}\n",
            "no_such_analysis",
        ),
        "wrong-type.yaml": (
            "title: t\nanalysis: {name: person_count, version: 1.0.0}\n"
            "parameters: {age_band_edges: forty}\n",
            "parameters.age_band_edges",
        ),
    }
    for file_name, (text, expected) in cases.items():
        path = tmp_path / file_name
        path.write_text(text)
        done = ehds("study", "--config", str(federation.researcher_config), "submit", str(path))
        assert done.returncode == 2, done.stderr
        assert file_name in done.stderr, done.stderr
        assert expected in done.stderr, done.stderr
    # A client that skips local validation meets the same check at the coordinator.
    with researcher(federation) as client:
        with pytest.raises(Exception, match=r"parameters\.age_band_edges"):
            client.submit(spec("person_count", b'{"age_band_edges":"forty"}'))
        assert client.list() == []
    assert (
        metric(
            federation.processes["coordinator"].health_port,
            "ehds_coordinator_tasks_dispatched_total",
        )
        == 0
    )


# --------------------------------------------------------------------------- crashes


def test_node_killed_mid_task_reruns_it_after_restart_and_one_result_is_kept(
    federation: LocalFederation,
) -> None:
    start_all(federation)
    with researcher(federation) as client:
        study = client.submit(
            spec("test.sleep", b'{"seconds":2.0}', targets=("node-fr",), min_nodes=1)
        )
        wait_node_state(federation, study.id, "node-fr", NodeTaskState.RUNNING)
        federation.processes["node-fr"].kill()
        federation.start_node("node-fr")
        final = client.wait(study.id, timeout=WAIT_S)
    assert final.state == StudyState.COMPLETED, final.state_reason
    assert [node for node, _ in results_rows(federation, study.id)] == ["node-fr"]


def test_coordinator_killed_mid_study_resumes_on_restart(federation: LocalFederation) -> None:
    start_all(federation)
    with researcher(federation) as client:
        study = client.submit(spec("test.sleep", b'{"seconds":2.0}', min_nodes=3))
        wait_node_state(federation, study.id, "node-fr", NodeTaskState.RUNNING)
    federation.processes["coordinator"].kill()
    federation.start_coordinator()
    with researcher(federation) as client:
        final = client.wait(study.id, timeout=WAIT_S)
    assert final.state == StudyState.COMPLETED, final.state_reason
    assert [node for node, _ in results_rows(federation, study.id)] == [
        "node-dk",
        "node-fi",
        "node-fr",
    ]


# --------------------------------------------------------------------------- network


def test_a_proxy_that_goes_silent_is_noticed_and_the_node_reconnects(
    federation: LocalFederation, connect_proxy: ConnectProxy
) -> None:
    node = federation.nodes["node-fr"]
    data = yaml.safe_load(node.config.read_text())
    data["coordinator"]["proxy"] = connect_proxy.url
    data["keepalive"] = {"time_seconds": 1.0, "timeout_seconds": 1.0}
    node.config.write_text(yaml.safe_dump(data))
    federation.start_coordinator()
    federation.start_node("node-fr")
    wait_connected(federation, {"node-fr"})
    assert connect_proxy.tunnels_opened == 1

    frozen_at = time.monotonic()
    connect_proxy.freeze()
    wait_until("a new tunnel", lambda: connect_proxy.tunnels_opened >= 2, timeout=15)
    noticed_s = time.monotonic() - frozen_at
    assert noticed_s < 10, f"node took {noticed_s:.1f} s to notice the silent proxy"
    wait_connected(federation, {"node-fr"})
    with researcher(federation) as client:
        study = client.submit(spec("person_count", b"{}", targets=("node-fr",)))
        assert client.wait(study.id, timeout=WAIT_S).state == StudyState.COMPLETED
    node_port = federation.processes["node-fr"].health_port
    assert metric(node_port, "ehds_node_stream_reconnects_total") >= 1


def test_a_result_over_4_mib_passes_with_default_grpc_limits(federation: LocalFederation) -> None:
    start_all(federation)
    size = 5 * 1024 * 1024
    with researcher(federation) as client:
        study = client.submit(
            spec("test.blob", f'{{"size_bytes":{size}}}'.encode(), targets=("node-dk",))
        )
        final = client.wait(study.id, timeout=WAIT_S)
        assert final.state == StudyState.COMPLETED, final.state_reason
        document = client.results(study.id)
    assert document["pooled"]["sizes"] == {"node-dk": size}
    ((node, stored),) = results_rows(federation, study.id)
    assert node == "node-dk"
    assert stored > 4 * 1024 * 1024


# --------------------------------------------------------------------------- identity


def test_a_node_with_a_certificate_from_another_ca_is_refused(
    federation: LocalFederation, tmp_path: Path
) -> None:
    federation.start_coordinator()
    federation.start_node("node-fr")
    wait_connected(federation, {"node-fr"})
    foreign = tmp_path / "foreign-pki"
    init_authority(foreign, "someone-else")
    issue_certificate(foreign, Role.NODE, "node-fi")  # a name the federation knows
    node = federation.nodes["node-fi"]
    data = yaml.safe_load(node.config.read_text())
    data["tls"]["certificate"] = str(foreign / "issued" / "node-fi.pem")
    data["tls"]["key"] = str(foreign / "issued" / "node-fi.key")
    node.config.write_text(yaml.safe_dump(data))  # still trusts the federation's CA
    federation.start_node("node-fi")
    time.sleep(3)
    assert federation.processes["node-fi"].alive()  # it keeps trying, as a node should
    with operator(federation) as client:
        names = {n.name for n in client.list_nodes()}
    assert names == {"node-fr"}


def test_revoked_nodes_are_refused_and_their_open_stream_is_closed(
    federation: LocalFederation,
) -> None:
    start_all(federation)
    # Through the federation CRL, as `ehds pki revoke` publishes it.
    revoke_certificate(federation.pki, "node-dk")
    wait_until("node-dk's stream closed", lambda: "node-dk" not in connected(federation), 10)
    # Through the operator's AdminApi.
    with operator(federation) as client:
        revoked = client.revoke_node("node-fi", "compromised key")
    assert revoked.revoked
    assert "node-fi" not in connected(federation)
    time.sleep(2)  # both keep retrying with backoff; neither gets back in
    assert connected(federation) == {"node-fr"}
    with researcher(federation) as client:
        study = client.submit(spec("person_count", b"{}", min_nodes=1))
        final = client.wait(study.id, timeout=WAIT_S)
    assert final.state == StudyState.COMPLETED
    assert {s.node_name for s in final.nodes} == {"node-fr"}


# --------------------------------------------------------------------------- control


def test_cancel_reaches_a_task_already_running_at_a_node(federation: LocalFederation) -> None:
    start_all(federation)
    with researcher(federation) as client:
        study = client.submit(spec("test.sleep", b'{"seconds":60.0}', targets=("node-fi",)))
        wait_node_state(federation, study.id, "node-fi", NodeTaskState.RUNNING)
        cancelled = client.cancel(study.id, "changed my mind")
        assert cancelled.state == StudyState.CANCELLED
    port = federation.processes["node-fi"].health_port
    labels = {"analysis": "test.sleep 1.0.0", "outcome": "cancelled"}
    wait_until(
        "the node to stop the task",
        lambda: metric(port, "ehds_node_tasks_total", labels) == 1,
        timeout=10,
    )


def test_deadline_and_min_nodes_fail_a_study_with_reasons(federation: LocalFederation) -> None:
    start_all(federation)
    with researcher(federation) as client:
        study = client.submit(
            spec("test.sleep", b'{"seconds":30.0}', targets=("node-dk",), deadline=2)
        )
        final = client.wait(study.id, timeout=WAIT_S)
    assert final.state == StudyState.FAILED
    assert node_state(final, "node-dk") == NodeTaskState.TIMED_OUT
    assert "min_nodes" in final.state_reason


def test_metrics_move_by_the_expected_amounts_after_a_study(federation: LocalFederation) -> None:
    start_all(federation)
    port = federation.processes["coordinator"].health_port
    label = {"analysis": "person_count 1.0.0"}
    assert metric(port, "ehds_coordinator_connected_nodes") == 3
    with researcher(federation) as client:
        study = client.submit(spec("person_count", b"{}", min_nodes=3))
        assert client.wait(study.id, timeout=WAIT_S).state == StudyState.COMPLETED
    assert metric(port, "ehds_coordinator_tasks_dispatched_total", label) == 3
    assert metric(port, "ehds_coordinator_tasks_completed_total", label) == 3
    assert metric(port, "ehds_coordinator_tasks_failed_total", label) == 0
    assert metric(port, "ehds_coordinator_task_latency_seconds_count", label) == 3
    for name in federation.nodes:
        node_port = federation.processes[name].health_port
        assert metric(node_port, "ehds_node_connected") == 1
        done = {"analysis": "person_count 1.0.0", "outcome": "done"}
        assert metric(node_port, "ehds_node_tasks_total", done) == 1
