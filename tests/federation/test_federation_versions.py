"""Version skew: partners upgrade when they choose, so a node still speaking the previous minor
protocol version (1.0) must take part in a federation whose coordinator speaks 1.1.

The old node is the real node agent told to announce 1.0 (it then never reads what 1.1 added);
the coordinator must negotiate 1.0 for that stream, show it to operators, and run the study
across old and new nodes alike.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import PERMIT_ID, prepare
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.federation.model import AnalysisRef, ProtocolVersion, StudySpec, StudyState
from ehds.federation.version import PROTOCOL_MAJOR, PROTOCOL_MINOR
from ehds.node.agent import NodeAgent
from ehds.node.config import load_node_config
from ehds.node.policy import load_policy
from ehds.node.state import NodeState

pytestmark = pytest.mark.slow


def test_a_node_speaking_the_previous_minor_version_takes_part(tmp_path: Path) -> None:
    assert PROTOCOL_MINOR >= 1, "there is no previous minor version to test against"
    previous = ProtocolVersion(PROTOCOL_MAJOR, PROTOCOL_MINOR - 1)
    fed = prepare(tmp_path / "fed", ("fr", "fi"), persons=500, min_cell_count=5)
    try:
        fed.start_coordinator()
        fed.start_node("node-fr")
        config = load_node_config(fed.nodes["node-fi"].config)
        state = NodeState.open(config.state)
        agent = NodeAgent(config, load_policy(config.policy), state, protocol_version=previous)
        thread = threading.Thread(target=lambda: asyncio.run(agent.run()), daemon=True)
        thread.start()
        try:
            wait_for_nodes(fed.operator_config, ["node-fr", "node-fi"], 30)
            with CoordinatorClient(load_client_config(fed.operator_config)) as operator:
                versions = {n.name: n.protocol_version for n in operator.list_nodes()}
            assert versions == {
                "node-fi": previous,
                "node-fr": ProtocolVersion(PROTOCOL_MAJOR, PROTOCOL_MINOR),
            }
            spec = StudySpec(
                title="skew",
                analysis=AnalysisRef("person_count", "1.0.0"),
                parameters=b"{}",
                min_nodes=2,
                deadline_seconds=60,
                data_permit_id=PERMIT_ID,
            )
            with CoordinatorClient(load_client_config(fed.researcher_config)) as client:
                study = client.submit(spec)
                final = client.wait(study.id, timeout=60)
                assert final.state == StudyState.COMPLETED, final.state_reason
                document = client.results(study.id)
            assert document["contributors"] == ["node-fi", "node-fr"]
        finally:
            agent.stop()
            thread.join(15)
            state.close()
        assert not thread.is_alive()
    finally:
        fed.close()
    assert fed.running_pids() == []
