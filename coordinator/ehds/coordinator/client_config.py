"""`researcher.yaml`: how the researcher client (and `ehds study`, `ehds admin`) reach the
coordinator: its address and the caller's own certificate."""

from __future__ import annotations

from pathlib import Path

from ehds.core.config import ConfigModel, load_config
from ehds.core.netconfig import CoordinatorEndpoint, TlsFiles


class ClientConfig(ConfigModel):
    coordinator: CoordinatorEndpoint
    tls: TlsFiles


def load_client_config(path: Path) -> ClientConfig:
    return load_config(ClientConfig, path)
