"""`researcher.yaml` (and `operator.yaml`, `auditor.yaml`): how the client (`ehds study`,
`ehds admin`, `ehds permit`, `ehds audit`) reaches the coordinator: its address, and who the
caller is, by certificate or by token.

Two ways to authenticate:

* a federation certificate (``tls: {certificate, key, ca}``): mutual TLS on the coordinator's
  main port;
* an OpenID Connect access token from the organisation's identity provider (``token_file``, or
  the environment variable ``EHDS_TOKEN``) with ``tls: {ca}`` only: server TLS on the
  coordinator's token port (its ``token_listen``), the token sent with every call. The file is
  re-read on every call, so a token refreshed by another tool is picked up at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ehds.core.config import ConfigModel, ConfigPath, load_config
from ehds.core.errors import InputError
from ehds.core.netconfig import CoordinatorEndpoint, TlsFiles

__all__ = ["TOKEN_ENV", "ClientConfig", "ServerTls", "TokenError", "load_client_config"]

TOKEN_ENV: Final = "EHDS_TOKEN"  # noqa: S105 (the name of the variable, not a token)


class TokenError(InputError):
    """No usable token: the token file cannot be read, or it is empty."""


class ServerTls(ConfigModel):
    """The federation CA only: for a caller with a token, who presents no certificate."""

    ca: ConfigPath


class ClientConfig(ConfigModel):
    coordinator: CoordinatorEndpoint
    tls: TlsFiles | ServerTls
    # A file holding an OIDC access token (a JWT); re-read on every call.
    token_file: ConfigPath | None = None

    def uses_token(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether calls carry a bearer token (and no certificate): ``token_file`` is set, or
        ``EHDS_TOKEN`` is and no certificate is configured."""
        env = os.environ if environ is None else environ
        return self.token_file is not None or (
            bool(env.get(TOKEN_ENV)) and not isinstance(self.tls, TlsFiles)
        )

    def token(self, environ: Mapping[str, str] | None = None) -> str:
        """The current token: ``EHDS_TOKEN`` when set, else the content of ``token_file``."""
        env = os.environ if environ is None else environ
        value = env.get(TOKEN_ENV, "").strip()
        if value:
            return value
        if self.token_file is None:
            raise TokenError(f"no token: set token_file in the client configuration or {TOKEN_ENV}")
        try:
            value = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read the token file {self.token_file}: {exc}") from None
        if not value:
            raise TokenError(f"the token file {self.token_file} is empty")
        return value


def load_client_config(path: Path) -> ClientConfig:
    return load_config(ClientConfig, path)
