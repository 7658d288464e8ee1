"""`coordinator.yaml`: everything the coordinator process needs, validated once at start."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from ehds.coordinator.service.oidc import OidcConfig
from ehds.core.config import ConfigModel, ConfigPath, load_config, read_url_file
from ehds.core.netconfig import Keepalive, Listen, TlsFiles
from ehds.permits import HdabKeyConfig


class StateConfig(ConfigModel):
    """Where studies, tasks, results and the audit log live.

    A SQLAlchemy URL: ``sqlite:///coordinator.db`` (embedded default; a relative file is
    relative to this configuration file) or ``postgresql+psycopg://...`` for production.
    ``url_file`` names a file holding that URL instead (a mounted Kubernetes Secret), so that
    the database password never sits in the configuration; `load_coordinator_config` reads it
    into ``url``, and the URL is never logged or quoted in an error.
    """

    url: str = "sqlite:///coordinator-state.db"
    url_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        # ``url`` has a default, so only an explicit one conflicts with ``url_file``.
        if self.url_file is not None and "url" in self.model_fields_set:
            raise ValueError("give one of state.url and state.url_file, not both")
        return self


class FlConfig(ConfigModel):
    """Federated learning: where the ServerApps of running studies are unpacked (a fresh
    temporary folder by default; nothing there outlives a study) and the Python that runs
    them (the coordinator's own by default)."""

    work_dir: ConfigPath | None = None
    python: str | None = None

    def work_directory(self) -> Path:
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            return self.work_dir
        return Path(tempfile.mkdtemp(prefix="ehds-fl-"))


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


class PermitsConfig(ConfigModel):
    """Data permits are checked against these keys when registered and at every submit.

    Empty (the default): no permit can be registered, so no study can be submitted. A
    federation without permits is a configuration mistake, and failing closed says so.
    """

    hdab_keys: tuple[HdabKeyConfig, ...] = ()


class RetentionConfig(ConfigModel):
    """How long the results of ended studies are kept.

    ``days``: results, result documents and parameters of studies that ended more than this
    many days ago are deleted (the study and task rows stay, marked purged, and the audit log
    keeps every entry); None keeps everything forever.
    """

    days: int | None = Field(default=None, ge=0)
    check_interval_seconds: float = Field(default=3600.0, gt=0)


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
    fl: FlConfig = FlConfig()
    # Largest result a node may send for one task (it is held in memory while it arrives).
    max_result_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    permits: PermitsConfig = PermitsConfig()
    # OpenID Connect: researchers, operators and auditors may call with a bearer token instead
    # of a certificate, on `token_listen` (server TLS only; nodes always use `listen`).
    oidc: OidcConfig | None = None
    token_listen: Listen | None = None
    retention: RetentionConfig = RetentionConfig()

    @model_validator(mode="after")
    def _token_listener(self) -> CoordinatorConfig:
        # grpcio cannot ask for a client certificate without requiring one: a port that accepts
        # tokens (no certificate) cannot also see the nodes' certificates, hence two ports.
        if self.oidc is not None and self.token_listen is None:
            raise ValueError("token_listen: required when oidc is set (the port for token callers)")
        if self.oidc is None and self.token_listen is not None:
            raise ValueError("token_listen: only with oidc (tokens are checked against it)")
        return self


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    config = load_config(CoordinatorConfig, path)
    url = config.state.url
    if config.state.url_file is not None:
        url = read_url_file(path, "state.url_file", config.state.url_file)
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        # A relative SQLite file is relative to the configuration file, like every other path.
        url = f"{prefix}{(path.parent / url[len(prefix) :]).resolve()}"
    if url != config.state.url:
        # Not validated again: the model checks only where the URL comes from, done above.
        config = config.model_copy(
            update={"state": config.state.model_copy(update={"url": url})}, deep=True
        )
    return config
