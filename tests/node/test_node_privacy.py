"""Differential privacy and workspaces through a running node: the policy's
``privacy.required`` rule, the budget ledger an analysis charges, the workspace and study id in
its context, the audit chain, and `ehds node privacy ledger` / `ehds node policy explain`.

The analysis is a fake (``test.dp``): what is tested is the node, not any noise."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from node_harness import (
    SCENARIO_TIMEOUT_S,
    TEST_HDAB,
    FakeCoordinator,
    Pki,
    Session,
    assignment,
    audit_entries,
    coordinator_server,
    running_node,
    write_node_config,
    write_policy,
)

from ehds.analyses.base import Analysis, AnalysisParameters, ComputeContext, JsonObject
from ehds.analyses.registry import Registry
from ehds.cli.main import main
from ehds.core.config import ConfigError
from ehds.federation.model import ErrorCode, Heartbeat, TaskAck, TaskOutcome
from ehds.node.policy import load_policy
from ehds.node.workspaces import workspace_table_name

BUDGET = {"permit_rho": 1.0, "researcher_rho": 0.8}


class DpRequest(AnalysisParameters):
    rho: float


class DpParameters(AnalysisParameters):
    privacy: DpRequest | None = None


class DpAnalysis(Analysis[DpParameters]):
    """Names its workspace table, charges the ledger when asked for privacy, reports both."""

    name = "test.dp"
    version = "1.0.0"
    parameters = DpParameters

    def __init__(self) -> None:
        self.runs = 0

    def compute(self, params: DpParameters, ctx: ComputeContext) -> JsonObject:
        self.runs += 1
        table = ctx.require_workspace().table_name("design")
        if params.privacy is not None:
            ctx.require_privacy().charge(rho=params.privacy.rho, epsilon=2.5, delta=1e-6)
        return {"table": table, "study": ctx.study_id}

    def aggregate(self, params: DpParameters, node_results: Mapping[str, JsonObject]) -> JsonObject:
        return {}


def _policy(path: Path, privacy: Mapping[str, Any]) -> Path:
    write_policy(path, (("test.dp", "1.0.0"),))
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["privacy"] = dict(privacy)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


PERMIT = TEST_HDAB.permit(analyses=("test.dp",))


def _send(session: Session, task_id: str, parameters: bytes) -> None:
    session.send(assignment(task_id, "test.dp", parameters, permit=PERMIT))


async def _outcome(session: Session, task_id: str) -> TaskOutcome:
    return await session.next(TaskOutcome, lambda m: m.task_id == task_id)


def test_privacy_rules_and_the_ledger_through_the_node(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    analysis = DpAnalysis()
    _policy(tmp_path / "policy.yaml", {"required_for": ["test.dp"], "budget": BUDGET})
    coordinator = FakeCoordinator()
    outcomes: dict[str, TaskOutcome] = {}

    async def scenario() -> None:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=Registry([analysis])) as node:
                session = await coordinator.next_session()
                await session.next(Heartbeat)
                # No privacy asked for an analysis the policy requires it of: refused unrun.
                _send(session, "t-plain", b"{}")
                await session.next(TaskAck, lambda m: m.task_id == "t-plain")
                outcomes["t-plain"] = await _outcome(session, "t-plain")
                assert analysis.runs == 0

                _send(session, "t-dp", b'{"privacy":{"rho":0.5}}')
                payload, _ = await session.result("t-dp")
                released = json.loads(payload.data)
                assert released == {
                    "table": workspace_table_name("study-t-dp", "design"),
                    "study": "study-t-dp",
                }

                # Alice has 0.3 of her 0.8 left: a second 0.5 is refused, nothing charged.
                _send(session, "t-over", b'{"privacy":{"rho":0.5}}')
                outcomes["t-over"] = await _outcome(session, "t-over")

                entries = audit_entries(node.state)
                code, out = await asyncio.to_thread(
                    _cli, "node", "privacy", "ledger", "--config", str(config), "--json"
                )
                assert code == 0
                ledger = json.loads(out)
                code, text = await asyncio.to_thread(
                    _cli, "node", "privacy", "ledger", "--config", str(config)
                )
                assert code == 0
                code, explained = await asyncio.to_thread(
                    _cli,
                    "node",
                    "policy",
                    "explain",
                    "--config",
                    str(config),
                    "--analysis",
                    "test.dp@1.0.0",
                )
                assert code == 0

        plain, over = outcomes["t-plain"], outcomes["t-over"]
        assert plain.error_code is ErrorCode.DISCLOSURE_REFUSED
        assert "privacy.required" in plain.message
        assert over.error_code is ErrorCode.DISCLOSURE_REFUSED
        assert "privacy.budget.researcher" in over.message
        assert "0.5" in over.message  # the request and the budget, nothing else
        assert "0.3" not in over.message

        by_task: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        for entry in entries:
            by_task.setdefault(entry.subject, []).append((entry.action, entry.detail))
        assert [a for a, _ in by_task["task t-plain"]][-1] == "task.refused"
        assert by_task["task t-plain"][-1][1]["rule"] == "privacy.required"
        dp_actions = [a for a, _ in by_task["task t-dp"]]
        assert dp_actions.index("privacy.charged") < dp_actions.index("result.released")
        over_actions = [(a, d.get("rule")) for a, d in by_task["task t-over"]]
        assert ("privacy.refused", "privacy.budget.researcher") in over_actions
        assert over_actions[-1] == ("task.refused", "privacy.budget.researcher")
        workspace = workspace_table_name("study-t-dp", "design")
        assert [e.action for e in entries if e.subject == f"workspace {workspace}"] == [
            "workspace.created"
        ]

        assert ledger["budget"] == BUDGET
        [charge] = ledger["charges"]
        assert (charge["task_id"], charge["permit"], charge["researcher"]) == (
            "t-dp",
            "permit-7",
            "alice",
        )
        assert (charge["rho"], charge["epsilon"], charge["analysis"]) == (0.5, 2.5, "test.dp 1.0.0")
        [permit] = ledger["permits"]
        assert (permit["spent"], permit["remaining"]) == (0.5, 0.5)
        assert math.isclose(permit["researchers"][0]["remaining"], 0.3)
        assert "permit permit-7: spent 0.5, remaining 0.5" in text
        assert "t-dp" in text
        assert "differential privacy required for: test.dp" in explained
        assert "1 per data permit, 0.8 per researcher" in explained
        assert "runs only with differential privacy" in explained

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S))


def test_without_a_budget_every_charge_is_refused(tmp_path: Path, pki: Pki, cdm: Path) -> None:
    analysis = DpAnalysis()
    _policy(tmp_path / "policy.yaml", {})
    coordinator = FakeCoordinator()

    async def scenario() -> TaskOutcome:
        async with coordinator_server(pki, coordinator) as port:
            config = write_node_config(tmp_path, pki=pki, cdm=cdm, address=f"127.0.0.1:{port}")
            async with running_node(config, registry=Registry([analysis])):
                session = await coordinator.next_session()
                await session.next(Heartbeat)
                # Not required by this policy: runs without privacy...
                _send(session, "t-plain", b"{}")
                await session.result("t-plain")
                # ... but a charge finds no budget.
                _send(session, "t-dp", b'{"privacy":{"rho":0.1}}')
                return await _outcome(session, "t-dp")

    outcome = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S))
    assert outcome.error_code is ErrorCode.DISCLOSURE_REFUSED
    assert "privacy.budget.unset" in outcome.message
    assert analysis.runs == 2


HEAD = "version: '1'\nhdab_keys: [{name: a, public_key: k.pem}]\n"


def test_policy_defaults_and_the_example(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD, encoding="utf-8")
    policy = load_policy(path)
    assert policy.privacy.required_for == ()
    assert policy.privacy.budget is None
    assert policy.workspace_ttl_hours == 48
    example = load_policy(Path(__file__).parents[2] / "deploy" / "examples" / "policy.yaml")
    assert example.privacy.budget is not None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("privacy: {budget: {permit_rho: 0, researcher_rho: 1}}\n", "privacy.budget.permit_rho"),
        ("privacy: {budget: {permit_rho: 1}}\n", "privacy.budget.researcher_rho"),
        ("privacy: {budget: {permit_rho: .inf, researcher_rho: 1}}\n", "permit_rho"),
        ("privacy: {required_for: [glm, glm]}\n", "privacy.required_for"),
        ("privacy: {epsilon: 1}\n", "privacy.epsilon"),
        ("workspace_ttl_hours: 0\n", "workspace_ttl_hours"),
    ],
)
def test_malformed_privacy_policies_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + text, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem):
        load_policy(path)
