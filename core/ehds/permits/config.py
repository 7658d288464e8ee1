"""The ``hdab_keys`` entry of a configuration file: the HDAB keys a process trusts.

The coordinator (``coordinator.yaml: permits.hdab_keys``) and every node (``policy.yaml:
hdab_keys``) pin HDAB public keys the same way, so the entry's model lives here, once:

    hdab_keys:
      - {name: fi-hdab, public_key: keys/fi-hdab.pub.pem}   # path relative to the file

The same name may appear twice (an HDAB rolling over to a new key keeps the old one pinned
until the permits it signed have expired).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import field_validator

from ehds.core.config import ConfigModel, ConfigPath
from ehds.permits.keys import HdabKey, load_hdab_key
from ehds.pki.identity import NAME_PATTERN


class HdabKeyConfig(ConfigModel):
    """One trusted HDAB key: the issuer name permits carry, and its PEM public key file."""

    name: str
    public_key: ConfigPath

    @field_validator("name")
    @classmethod
    def _participant_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"not an HDAB name ({NAME_PATTERN.pattern})")
        return value

    def load(self) -> HdabKey:
        """The key; errors name the public key file."""
        return load_hdab_key(self.name, self.public_key)


def load_trusted_keys(entries: Iterable[HdabKeyConfig]) -> tuple[HdabKey, ...]:
    """Every entry's key, in order (for `ehds.permits.check_permit`'s ``trusted``)."""
    return tuple(entry.load() for entry in entries)
