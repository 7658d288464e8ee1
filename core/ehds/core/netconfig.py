"""Configuration pieces shared by every process that speaks the federation protocol.

The coordinator, the node agent and the researcher client each have their own YAML file; these
models are the parts they have in common (TLS files, listen addresses, keepalive), so that the
same key means the same thing in every file.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ehds.core.config import ConfigModel, ConfigPath


class TlsFiles(ConfigModel):
    """This party's key and certificate and the federation CA, as issued by `ehds pki issue`.

    Mutual TLS is not optional: a node's or researcher's identity is the subject of the
    certificate it presents, never something a message claims.
    """

    certificate: ConfigPath
    key: ConfigPath
    ca: ConfigPath


class Listen(ConfigModel):
    """A TCP address to bind."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class Keepalive(ConfigModel):
    """gRPC keepalive pings on an otherwise idle connection.

    Why: hospital proxies, firewalls and NATs drop idle TCP connections silently (no FIN, no
    RST). Pings every ``time_seconds`` keep the connection warm, and an unanswered ping after
    ``timeout_seconds`` tells the peer the connection is dead so that it reconnects.
    """

    time_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)


class CoordinatorEndpoint(ConfigModel):
    """Where a node or a researcher finds the coordinator."""

    address: str = Field(pattern=r"^[^\s:]+:\d{1,5}$", description="host:port")
    server_name: str | None = Field(
        default=None,
        description="name expected in the coordinator's certificate, when it differs from the "
        "host of `address` (e.g. an IP address behind a TLS-passthrough load balancer)",
    )
    proxy: str | None = Field(
        default=None,
        pattern=r"^http://[^\s/]+(:\d{1,5})?/?$",
        description="HTTP CONNECT proxy, http://host:port; when unset, the https_proxy "
        "environment variable applies as usual",
    )

    @model_validator(mode="after")
    def _port_in_range(self) -> CoordinatorEndpoint:
        port = int(self.address.rsplit(":", 1)[1])
        if not 0 < port <= 65535:
            raise ValueError(f"port {port} is out of range")
        return self
