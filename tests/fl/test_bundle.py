"""FABs: deterministic builds Flower accepts, pyproject reading, and defensive unpacking."""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from ehds.fl import bundle
from ehds.fl.bundle import (
    BundleError,
    build_fab,
    fab_digest,
    read_app_info,
    read_fab_info,
    unpack_fab,
)

APP = Path(__file__).parent / "apps" / "fedavg_app"
BENCH_APP = Path(__file__).parents[2] / "bench" / "flower_app"


def _copy_app(tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(APP, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


PYPROJECT = (APP / "pyproject.toml").read_bytes()
# flwr.cli imports typer/click, which warn about their own deprecations at import time.
_CLICK_IMPORT = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_build_is_deterministic_across_copies_and_timestamps(tmp_path: Path) -> None:
    first = build_fab(APP)
    copy = _copy_app(tmp_path)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (copy / "ehds_test_fedavg" / "__pycache__").mkdir()
    (copy / "ehds_test_fedavg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (copy / "ehds_test_fedavg" / "stale.pyc").write_bytes(b"junk")
    (copy / ".hidden").write_text("secret")
    assert build_fab(copy) == first
    assert fab_digest(first) == fab_digest(build_fab(APP))
    (copy / "ehds_test_fedavg" / "extra.py").write_text("X = 1\n")
    assert build_fab(copy) != first


def test_build_has_pyproject_first_and_a_content_manifest() -> None:
    with zipfile.ZipFile(io.BytesIO(build_fab(APP))) as archive:
        names = archive.namelist()
        manifest = archive.read(".info/CONTENT").decode()
    assert names[0] == "pyproject.toml"
    assert names[-1] == ".info/CONTENT"
    assert "ehds_test_fedavg/server_app.py" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert {line.split(",")[0] for line in manifest.splitlines()} == set(names[:-1])


@_CLICK_IMPORT
def test_flowers_own_installer_accepts_our_fab(tmp_path: Path) -> None:
    from flwr.cli.install import install_from_fab

    installed = install_from_fab(build_fab(BENCH_APP), install_dir=tmp_path, skip_prompt=True)
    assert (installed / "ehds_bench_flower" / "server_app.py").is_file()


@_CLICK_IMPORT
def test_read_fab_info_flattens_config_like_flower() -> None:
    info = read_fab_info(build_fab(APP))
    assert (info.name, info.version, info.publisher) == ("ehds-test-fedavg", "1.0.0", "ehds-tests")
    assert info.serverapp == "ehds_test_fedavg.server_app:app"
    assert info.clientapp == "ehds_test_fedavg.client_app:app"
    assert info.config == {
        "num-server-rounds": 2,
        "min-nodes": 2,
        "fail": False,
        "save-model": True,
        "round-timeout": 60.0,
        "model.size": 3,
    }
    assert read_app_info(APP) == info

    from flwr.common.config import flatten_dict, get_project_config

    flower = flatten_dict(get_project_config(APP)["tool"]["flwr"]["app"]["config"])
    assert flower == info.config


@pytest.mark.parametrize(
    ("fab", "problem"),
    [
        (b"not a zip", "not a zip"),
        (_zip({"app/x.py": b""}), "no pyproject.toml"),
        (_zip({"pyproject.toml": b"[project]\nname = 'x'\n"}), "lacks a name or a version"),
        (_zip({"pyproject.toml": b"[project\n"}), "not valid"),
        (
            _zip({"pyproject.toml": b"[project]\nname='x'\nversion='1'\n[tool.flwr.app]\n"}),
            "components",
        ),
    ],
)
def test_read_fab_info_names_the_problem(fab: bytes, problem: str) -> None:
    with pytest.raises(BundleError, match=problem):
        read_fab_info(fab)


def test_unpack_writes_the_app_without_the_manifest(tmp_path: Path) -> None:
    dest = unpack_fab(build_fab(APP), tmp_path / "app")
    assert dest == tmp_path / "app"
    assert (dest / "pyproject.toml").read_bytes() == PYPROJECT
    assert (dest / "ehds_test_fedavg" / "client_app.py").is_file()
    assert not (dest / ".info").exists()


@pytest.mark.parametrize(
    ("entries", "symlink", "problem"),
    [
        ({"pyproject.toml": PYPROJECT, "../evil.py": b""}, None, "escapes"),
        ({"pyproject.toml": PYPROJECT, "/abs/evil.py": b""}, None, "escapes"),
        ({"pyproject.toml": PYPROJECT, "a\\..\\..\\evil.py": b""}, None, "backslash"),
        ({"pyproject.toml": PYPROJECT}, "link", "link or special file"),
        ({"pyproject.toml": PYPROJECT, ".info/CONTENT": b"pyproject.toml,00,8"}, None, "manifest"),
    ],
)
def test_unpack_refuses_unsafe_bundles_before_writing(
    tmp_path: Path, entries: dict[str, bytes], symlink: str | None, problem: str
) -> None:
    with pytest.raises(BundleError, match=problem):
        unpack_fab(_zip(entries, symlink=symlink), tmp_path / "app")
    assert not (tmp_path / "app").exists()
    assert not (tmp_path / "evil.py").exists()


def test_unpack_enforces_the_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fab = _zip({"pyproject.toml": PYPROJECT, "pkg/big.json": b"0" * 4096})
    monkeypatch.setattr(bundle, "MAX_UNPACKED_BYTES", 2048)
    with pytest.raises(BundleError, match="size cap"):
        unpack_fab(fab, tmp_path / "app")


def test_unpack_needs_an_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "left-over.py").write_text("")
    with pytest.raises(BundleError, match="not an empty directory"):
        unpack_fab(build_fab(APP), tmp_path / "app")
    (tmp_path / "empty").mkdir()
    assert unpack_fab(build_fab(APP), tmp_path / "empty") == tmp_path / "empty"


def test_build_refuses_links_in_the_app(tmp_path: Path) -> None:
    copy = _copy_app(tmp_path)
    (copy / "ehds_test_fedavg" / "link.py").symlink_to(copy / "pyproject.toml")
    with pytest.raises(BundleError, match="symbolic link"):
        build_fab(copy)
