"""The node as a process: load and check everything, serve health, run the agent until a signal.

`serve` is what `ehds node serve` calls; `check` is `ehds node check`. Everything that can be
wrong with a node's files is found before the node reports ready: a node that cannot be sure of
its policy refuses to start rather than run with a guess (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ehds.analyses.registry import Registry, default_registry
from ehds.core.config import ConfigError
from ehds.core.health import HealthServer
from ehds.federation.model import AnalysisRef, NodeProfile
from ehds.node.agent import NodeAgent, open_cdm
from ehds.node.config import NodeConfig, load_node_config
from ehds.node.errors import NodeStartError
from ehds.node.identity import certificate_name
from ehds.node.metrics import NodeMetrics
from ehds.node.policy import SitePolicy
from ehds.node.policy import load_site_policy as _load_site_policy
from ehds.node.profile import cdm_versions, read_profile
from ehds.node.state import NodeState

log = logging.getLogger(__name__)


def load_site_policy(path: Path) -> SitePolicy:
    """The policy at ``path`` with its pinned HDAB keys read; `NodeStartError` naming the file
    and the problem otherwise."""
    try:
        return _load_site_policy(path)
    except ConfigError as exc:
        raise NodeStartError(
            f"no valid site policy, so this node runs nothing and does not start: {exc}"
        ) from None


def load_node(config_path: Path) -> tuple[NodeConfig, SitePolicy]:
    config = load_node_config(config_path)
    return config, load_site_policy(config.policy)


async def run_until_signalled(agent: NodeAgent) -> None:
    """`agent.run()`, stopped by SIGTERM or SIGINT; SIGHUP re-reads the policy."""
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    loop.add_signal_handler(signal.SIGTERM, agent.stop)
    loop.add_signal_handler(signal.SIGINT, agent.stop)
    loop.add_signal_handler(signal.SIGHUP, agent.reload_policy)
    try:
        await agent.run()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def serve(
    config_path: Path,
    *,
    insecure: bool = False,
    registry: Registry | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Run a node until SIGTERM/SIGINT. ``announce`` gets the one "ready" line once the health
    server answers (before the coordinator is reached: readiness never depends on it)."""
    config, policy = load_node(config_path)
    with NodeState.open(config.state) as state:
        metrics = NodeMetrics()
        agent = NodeAgent(
            config, policy, state, registry=registry, metrics=metrics, insecure=insecure
        )
        health = HealthServer(config.health.host, config.health.port, metrics.registry, agent.ready)
        health.start()
        try:
            announce(f"node {agent.node_name} ready (health {config.health.host}:{health.port})")
            asyncio.run(run_until_signalled(agent))
        finally:
            health.stop()


@dataclass(frozen=True)
class NodeCheck:
    """What `ehds node check` reports."""

    node_name: str
    config: NodeConfig
    policy: SitePolicy
    profile: NodeProfile
    # Allowed by the policy but not known to this software (so not announced).
    unknown_analyses: tuple[AnalysisRef, ...]
    cdm_readable: bool


def check(config_path: Path, *, registry: Registry | None = None) -> NodeCheck:
    """Validate node.yaml, the policy, the certificate and the CDM without connecting."""
    config, policy = load_node(config_path)
    node_name = certificate_name(config.tls.certificate)
    registry = registry or default_registry()
    cdm = open_cdm(config)
    readable = cdm_versions(cdm) is not None
    profile = read_profile(cdm, policy.policy, registry)
    known = set(registry.refs())
    unknown = tuple(ref for ref in policy.policy.capabilities() if ref not in known)
    return NodeCheck(node_name, config, policy, profile, unknown, readable)
