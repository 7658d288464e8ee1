"""The one pyproject builds the whole ``ehds`` namespace, and nothing under a generic name."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ehds

ROOT = Path(__file__).resolve().parents[1]


def test_ehds_is_a_namespace_over_the_component_folders() -> None:
    roots = {Path(p).parent.name for p in ehds.__path__}
    assert {"core", "omop"} <= roots
    assert not any((Path(p) / "__init__.py").exists() for p in ehds.__path__)


def test_generic_names_are_not_ours() -> None:
    for generic in ("node", "omop", "connectors", "coordinator"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or ROOT not in Path(spec.origin or "/").parents


@pytest.mark.slow
def test_wheel_holds_every_component_under_ehds(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=240,
    )
    (wheel,) = tmp_path.glob("ehds_federation-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ehds/omop/schema/models.py" in names
    assert "ehds/cli/main.py" in names
    assert "ehds/core/errors.py" in names
    assert "ehds/__init__.py" not in names
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"ehds", *(t for t in tops if t.endswith(".dist-info"))}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ehds = ehds.cli.main:run" in zipfile.ZipFile(wheel).read(entry_points).decode()
