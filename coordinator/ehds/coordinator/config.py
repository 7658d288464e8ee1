"""`coordinator.yaml`: everything the coordinator process needs, validated once at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ehds.core.config import ConfigModel, ConfigPath, load_config
from ehds.core.netconfig import Keepalive, Listen, TlsFiles


class StateConfig(ConfigModel):
    """Where studies, tasks, results and the audit log live.

    A SQLAlchemy URL: ``sqlite:///coordinator.db`` (embedded default; a relative file is
    relative to this configuration file) or ``postgresql+psycopg://...`` for production.
    """

    url: str = "sqlite:///coordinator-state.db"


class RevocationConfig(ConfigModel):
    """The federation CRL (`ehds pki revoke` rewrites it); re-read when it changes."""

    crl: ConfigPath | None = None
    check_interval_seconds: float = Field(default=5.0, gt=0)


class StudyDefaults(ConfigModel):
    deadline_seconds: int = Field(default=3600, ge=1)
    max_deadline_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # The coordinator can only make disclosure stricter than a node's policy (see
    # TaskAssignment.min_cell_count); nodes apply the larger of the two.
    min_cell_count: int = Field(default=10, ge=1)


class CoordinatorConfig(ConfigModel):
    listen: Listen = Listen(host="127.0.0.1", port=50051)
    tls: TlsFiles
    revocation: RevocationConfig = RevocationConfig()
    state: StateConfig = StateConfig()
    health: Listen = Listen(host="127.0.0.1", port=9464)
    keepalive: Keepalive = Keepalive()
    heartbeat_interval_seconds: float = Field(default=10.0, gt=0)
    # A node that misses this many heartbeats is marked disconnected.
    missed_heartbeats: int = Field(default=3, ge=1)
    studies: StudyDefaults = StudyDefaults()
    # Largest result a node may send for one task (it is held in memory while it arrives).
    max_result_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    config = load_config(CoordinatorConfig, path)
    url = config.state.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        # A relative SQLite file is relative to the configuration file, like every other path.
        absolute = (path.parent / url[len(prefix) :]).resolve()
        config = config.model_copy(
            update={"state": StateConfig(url=f"{prefix}{absolute}")}, deep=True
        )
    return config
