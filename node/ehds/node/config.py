"""`node.yaml`: the node agent's process configuration, validated once at start.

The site policy (what may run and what may leave) is a separate, versioned file referenced from
here (`policy`), so that a data protection officer can review and version it on its own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ehds.core.config import ConfigModel, ConfigPath, load_config
from ehds.core.netconfig import CoordinatorEndpoint, Keepalive, Listen, TlsFiles


class CdmSchemas(ConfigModel):
    cdm: str = "cdm"
    vocab: str = "vocab"
    results: str = "results"


class CdmConfig(ConfigModel):
    """The node's own OMOP CDM: a DuckDB file path or a SQLAlchemy URL (PostgreSQL)."""

    url: str
    schemas: CdmSchemas = CdmSchemas()


class ReconnectConfig(ConfigModel):
    """Jittered exponential backoff between connection attempts."""

    initial_seconds: float = Field(default=0.5, gt=0)
    max_seconds: float = Field(default=30.0, gt=0)
    # How long a new stream may wait for the coordinator's Welcome before it is given up (a
    # proxy or load balancer that accepts the TCP connection but never forwards it).
    handshake_timeout_seconds: float = Field(default=30.0, gt=0)


class NodeConfig(ConfigModel):
    coordinator: CoordinatorEndpoint
    tls: TlsFiles
    cdm: CdmConfig
    # Required: a node without a policy runs nothing, so there is no default.
    policy: ConfigPath
    # The node's own small state database (tasks seen, results not yet receipted): SQLite.
    state: ConfigPath = Path("node-state.db")
    health: Listen = Listen(host="127.0.0.1", port=9465)
    keepalive: Keepalive = Keepalive()
    reconnect: ReconnectConfig = ReconnectConfig()
    # Tasks run concurrently, each in its own worker thread: one slow task never blocks
    # another, or the stream.
    max_concurrent_tasks: int = Field(default=4, ge=1)


def load_node_config(path: Path) -> NodeConfig:
    config = load_config(NodeConfig, path)
    url = config.cdm.url
    if "://" not in url and not Path(url).is_absolute():
        # A DuckDB file given as a relative path is relative to this configuration file.
        config = config.model_copy(
            update={"cdm": CdmConfig(url=str(path.parent / url), schemas=config.cdm.schemas)}
        )
    return config
