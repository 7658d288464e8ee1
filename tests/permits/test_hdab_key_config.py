"""`HdabKeyConfig`: the ``hdab_keys`` entries of coordinator.yaml and policy.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from ehds.core.config import ConfigError, ConfigModel, load_config
from ehds.core.errors import InputError
from ehds.permits import HdabKeyConfig, create_hdab_key, load_trusted_keys


class Trust(ConfigModel):
    hdab_keys: list[HdabKeyConfig] = Field(min_length=1)


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    create_hdab_key(tmp_path / "keys", "fi-hdab")
    config = tmp_path / "policy.yaml"
    config.write_text("hdab_keys:\n  - {name: fi-hdab, public_key: keys/fi-hdab.pub.pem}\n")
    trust = load_config(Trust, config)
    assert trust.hdab_keys[0].public_key == tmp_path / "keys" / "fi-hdab.pub.pem"
    (key,) = load_trusted_keys(trust.hdab_keys)
    assert key.name == "fi-hdab"


def test_errors_name_the_key_path_and_file(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text("hdab_keys:\n  - {name: FI, public_key: fi.pem, extra: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Trust, config)
    message = str(caught.value)
    assert message.startswith(f"{config}: ")
    assert "hdab_keys.0.name: Value error, not an HDAB name" in message
    assert "hdab_keys.0.extra: unknown key" in message

    config.write_text("hdab_keys:\n  - {name: fi-hdab, public_key: missing.pub.pem}\n")
    entries = load_config(Trust, config).hdab_keys
    with pytest.raises(InputError, match=f"cannot read {tmp_path / 'missing.pub.pem'}"):
        load_trusted_keys(entries)
