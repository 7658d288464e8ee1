"""Configuration files: YAML validated once, at the edge, into typed immutable objects.

Every model derives from :class:`ConfigModel`, which forbids unknown keys, so a misspelt key is
an error instead of a silently ignored setting. Errors name the file, the key path
(``node.policy.min_cell_count``), the line where YAML puts it, and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from ehds.core.errors import InputError

M = TypeVar("M", bound="ConfigModel")


class ConfigModel(BaseModel):
    """Base of every configuration model: strict keys, immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ConfigError(InputError):
    """A configuration file is unreadable or invalid; ``problems`` lists every error found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping key, for error messages."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.key_lines: dict[int, dict[Any, int]] = {}


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    loader.key_lines[id(mapping)] = lines
    return mapping


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _line_of(data: Any, key_lines: dict[int, dict[Any, int]], loc: tuple[Any, ...]) -> int | None:
    line = None
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            line = key_lines.get(id(node), {}).get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def parse_yaml(path: Path) -> tuple[Any, dict[int, dict[Any, int]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file ({exc.strerror})"]) from None
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}not valid YAML ({problem})"]) from None
    finally:
        loader.dispose()
    return data, loader.key_lines


def _resolve_relative(value: Path, info: ValidationInfo) -> Path:
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_relative)]
"""A path in a configuration file: relative paths are relative to the file's own folder, so a
configuration means the same whatever the current directory of the process that reads it."""


def validate(model: type[M], data: Any, path: Path, key_lines: dict[int, dict[Any, int]]) -> M:
    if data is None:
        data = {}
    try:
        return model.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(data, key_lines, loc)
            where = f"line {line}: " if line is not None else ""
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            elif error["type"] == "missing":
                message = "required key is missing"
            else:
                message = error["msg"]
            problems.append(f"{where}{key}: {message}")
        raise ConfigError(path, problems) from None


def load_config(model: type[M], path: Path) -> M:
    """Read ``path`` and validate it into ``model``, reporting every problem at once."""
    data, key_lines = parse_yaml(path)
    return validate(model, data, path, key_lines)


def read_url_file(config_path: Path, key: str, file: Path) -> str:
    """The database URL held in ``file`` (a mounted Kubernetes Secret), surrounding whitespace
    removed; `ConfigError` naming ``key`` and the file when it cannot be read, is empty or
    spans lines. The file's content is never quoted: it holds a password."""
    try:
        url = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(config_path, [f"{key}: cannot read {file} ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError(config_path, [f"{key}: {file} is not UTF-8 text"]) from None
    if not url:
        raise ConfigError(config_path, [f"{key}: {file} is empty (expected a database URL)"])
    if "\n" in url or "\r" in url:
        raise ConfigError(
            config_path, [f"{key}: {file} holds several lines (expected one database URL)"]
        )
    return url
