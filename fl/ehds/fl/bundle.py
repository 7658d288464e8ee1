"""Flower App Bundles (FABs): build, identify, read and unpack them without Flower.

A FAB is a zip with the app's ``pyproject.toml`` at its root, the app's package beside it and
a ``.info/CONTENT`` manifest (``path,sha256,size-in-bits`` per file), as ``flwr build`` makes
it. The node allow-lists a bundle by the SHA-256 of these bytes, so ``build_fab`` must give the
same bytes for the same directory on every machine (sorted entries, fixed timestamps and
permissions, no caches). Unpacking is defensive because the bytes come from a researcher.

Standard library only: the node checks a bundle before any Flower or app code is imported.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

CONFIG_FILE = "pyproject.toml"
CONTENT_FILE = ".info/CONTENT"
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
MAX_ENTRIES = 10_000
# Flower's own fixed FAB timestamp, so a FAB we build looks like one `flwr build` makes.
_FAB_DATE = (2024, 10, 1, 0, 0, 0)
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")

ConfigValue = bool | int | float | str


class BundleError(Exception):
    """A malformed bundle; the message names the problem, never file contents."""


@dataclass(frozen=True)
class FabInfo:
    """What the pyproject.toml of a FAB declares."""

    name: str
    version: str
    serverapp: str
    clientapp: str
    config: dict[str, ConfigValue] = field(default_factory=dict)
    publisher: str = ""


def fab_digest(fab: bytes) -> str:
    """Hex SHA-256 of the bundle bytes (what the policy allow-list names)."""
    return hashlib.sha256(fab).hexdigest()


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, ConfigValue]:
    """Nested tables to "a.b" keys, as Flower flattens [tool.flwr.app.config]."""
    flat: dict[str, ConfigValue] = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            raise BundleError(f"run config key {name!r} is not a bool, int, float or string")
    return flat


def _table(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise BundleError(f"pyproject.toml lacks the [{where}] table")
    return value


def parse_app_config(pyproject: bytes) -> FabInfo:
    """FabInfo from the bytes of an app's pyproject.toml."""
    try:
        document = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BundleError("pyproject.toml is not valid UTF-8 TOML") from error
    project = _table(document, "project", "project")
    name, version = project.get("name"), project.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise BundleError("pyproject.toml [project] lacks a name or a version")
    flwr = _table(_table(document, "tool", "tool"), "flwr", "tool.flwr")
    app = _table(flwr, "app", "tool.flwr.app")
    components = _table(app, "components", "tool.flwr.app.components")
    serverapp, clientapp = components.get("serverapp"), components.get("clientapp")
    if not isinstance(serverapp, str) or not isinstance(clientapp, str):
        raise BundleError("[tool.flwr.app.components] lacks serverapp or clientapp")
    config = app.get("config", {})
    if not isinstance(config, dict):
        raise BundleError("[tool.flwr.app.config] is not a table")
    publisher = app.get("publisher", "")
    return FabInfo(
        name=name,
        version=version,
        serverapp=serverapp,
        clientapp=clientapp,
        config=_flatten(config),
        publisher=publisher if isinstance(publisher, str) else "",
    )


def _open_zip(fab: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(fab))
    except zipfile.BadZipFile as error:
        raise BundleError("bundle is not a zip archive") from error


def read_fab_info(fab: bytes) -> FabInfo:
    """FabInfo of a bundle, reading only its pyproject.toml (no code is unpacked or run)."""
    with _open_zip(fab) as archive:
        try:
            info = archive.getinfo(CONFIG_FILE)
        except KeyError as error:
            raise BundleError("bundle has no pyproject.toml at its root") from error
        if info.file_size > MAX_UNPACKED_BYTES:
            raise BundleError("pyproject.toml is too large")
        return parse_app_config(archive.read(info))


def read_app_info(app_dir: Path) -> FabInfo:
    """FabInfo of an app directory (an unpacked FAB or a source tree)."""
    path = app_dir / CONFIG_FILE
    if not path.is_file():
        raise BundleError("app directory has no pyproject.toml")
    return parse_app_config(path.read_bytes())


def _collect(app_dir: Path) -> list[tuple[str, Path]]:
    """Files of an app directory, relative POSIX names sorted; caches and hidden files skipped."""
    files: list[tuple[str, Path]] = []
    for path in app_dir.rglob("*"):
        relative = path.relative_to(app_dir)
        parts = relative.parts
        if any(part.startswith(".") or part in _SKIPPED_DIRS for part in parts):
            continue
        if path.is_symlink():
            raise BundleError(f"app directory holds a symbolic link: {relative.as_posix()}")
        if not path.is_file() or path.name.endswith(_SKIPPED_SUFFIXES):
            continue
        files.append((relative.as_posix(), path))
    files.sort(key=lambda item: item[0])
    return files


def _zip_entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=_FAB_DATE)
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = (stat.S_IFREG | 0o644) << 16
    entry.create_system = 3  # Unix, whatever machine builds it
    return entry


def build_fab(app_dir: Path) -> bytes:
    """A FAB of ``app_dir``: same directory contents, same bytes (and so the same digest)."""
    app_dir = app_dir.resolve()
    config = app_dir / CONFIG_FILE
    if not config.is_file():
        raise BundleError("app directory has no pyproject.toml")
    parse_app_config(config.read_bytes())
    files = [(CONFIG_FILE, config)] + [item for item in _collect(app_dir) if item[0] != CONFIG_FILE]
    buffer = io.BytesIO()
    manifest: list[str] = []
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, path in files:
            content = path.read_bytes()
            archive.writestr(_zip_entry(name), content, compresslevel=9)
            manifest.append(f"{name},{hashlib.sha256(content).hexdigest()},{len(content) * 8}")
        archive.writestr(_zip_entry(CONTENT_FILE), "\n".join(manifest), compresslevel=9)
    return buffer.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name:
        raise BundleError("bundle entry name holds a backslash or NUL")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BundleError("bundle entry escapes the app directory")
    if path.parts[0].endswith(":"):
        raise BundleError("bundle entry names a drive")
    return path


def _check_manifest(contents: dict[str, bytes]) -> None:
    """Verify the files named by .info/CONTENT, as Flower's installer does."""
    manifest = contents.get(CONTENT_FILE)
    if manifest is None:
        return
    for line in manifest.decode("utf-8", "replace").strip().splitlines():
        name, _, rest = line.partition(",")
        expected = rest.partition(",")[0]
        content = contents.get(name)
        if content is None or hashlib.sha256(content).hexdigest() != expected:
            raise BundleError("bundle file does not match its .info/CONTENT manifest")


def unpack_fab(fab: bytes, dest: Path) -> Path:
    """Unpack a bundle into ``dest`` (absent or empty) and return it.

    Every entry is checked before anything is written: no absolute names, no '..', no links
    or special files, at most MAX_ENTRIES entries and MAX_UNPACKED_BYTES in all, and the
    files named by .info/CONTENT must match their hashes.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError("unpack destination exists and is not an empty directory")
    contents: dict[str, bytes] = {}
    with _open_zip(fab) as archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise BundleError("bundle has too many entries")
        declared = sum(entry.file_size for entry in entries)
        if declared > MAX_UNPACKED_BYTES:
            raise BundleError("bundle unpacks to more than the size cap")
        total = 0
        for entry in entries:
            path = _safe_name(entry.filename)
            mode = entry.external_attr >> 16
            if entry.is_dir():
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise BundleError("bundle holds a link or special file")
            with archive.open(entry) as source:
                content = source.read(MAX_UNPACKED_BYTES - total + 1)
            total += len(content)
            if total > MAX_UNPACKED_BYTES:
                raise BundleError("bundle unpacks to more than the size cap")
            key = path.as_posix()
            if key in contents:
                raise BundleError("bundle names a file twice")
            contents[key] = content
        if CONFIG_FILE not in contents:
            raise BundleError("bundle has no pyproject.toml at its root")
    _check_manifest(contents)
    parse_app_config(contents[CONFIG_FILE])
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for name, content in contents.items():
        if name.startswith(".info/"):
            continue
        target = (root / name).resolve()
        if root not in target.parents:
            raise BundleError("bundle entry escapes the app directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return dest
