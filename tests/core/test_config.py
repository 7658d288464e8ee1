"""Configuration errors name the file, the key path, the line and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehds.core.config import ConfigError, ConfigModel, load_config


class Policy(ConfigModel):
    min_cell_count: int = 5
    analyses: tuple[str, ...] = ()


class NodeSection(ConfigModel):
    name: str
    policy: Policy = Policy()


class NodeConfig(ConfigModel):
    node: NodeSection


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_becomes_a_typed_frozen_object(tmp_path: Path) -> None:
    config = load_config(
        NodeConfig, _write(tmp_path, "node:\n  name: fr\n  policy:\n    min_cell_count: 10\n")
    )
    assert config.node.policy.min_cell_count == 10
    with pytest.raises(ValueError, match="frozen"):
        config.node.name = "x"


def test_unknown_key_is_rejected_with_path_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "node:\n  name: fr\n  policy:\n    min_cel_count: 10\n")
    with pytest.raises(ConfigError) as caught:
        load_config(NodeConfig, path)
    assert caught.value.problems == ["line 4: node.policy.min_cel_count: unknown key"]
    assert str(path) in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "node:\n  policy:\n    min_cell_count: many\n")
    with pytest.raises(ConfigError) as caught:
        load_config(NodeConfig, path)
    problems = caught.value.problems
    assert "line 1: node.name: required key is missing" in problems
    assert any(
        p.startswith("line 3: node.policy.min_cell_count: Input should be a valid integer")
        for p in problems
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node: [unclosed\n", "not valid YAML"),
        ("node:\n  name: a\n  name: b\n", "duplicate key 'name'"),
    ],
)
def test_broken_yaml_is_a_config_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(NodeConfig, _write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(NodeConfig, tmp_path / "absent.yaml")
