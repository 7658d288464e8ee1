"""The committed protobuf code is what `python protos/ehds/federation/codegen.py` produces.

The script runs as a subprocess, exactly as a developer or CI runs it (it is a script, not a
module of the `ehds` package).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import ehds.federation.v1

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
V1 = Path("ehds", "federation", "v1")


def _run_generate(protos: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(protos / "ehds" / "federation" / "codegen.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_committed_generated_code_is_up_to_date() -> None:
    result = _run_generate(PROTOS, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_package_is_imported_from_the_protos_source_root() -> None:
    assert Path(ehds.federation.v1.__file__).parent == PROTOS / V1
    assert not (PROTOS / "ehds" / "__init__.py").exists()  # ehds stays a namespace package


def test_check_catches_stale_missing_and_orphan_files_and_generate_fixes_them(
    tmp_path: Path,
) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(PROTOS, protos, ignore=shutil.ignore_patterns("__pycache__"))
    v1 = protos / V1
    with (v1 / "common_pb2.pyi").open("a", encoding="utf-8") as stub:
        stub.write("# edited by hand\n")
    (v1 / "node_link_pb2_grpc.py").unlink()
    (v1 / "retired_pb2.py").write_text("# its .proto was deleted\n", encoding="utf-8")

    stale = _run_generate(protos, "--check")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "stale: protos/ehds/federation/v1/common_pb2.pyi" in stale.stdout
    assert "+++ generated/ehds/federation/v1/common_pb2.pyi" in stale.stdout
    assert "missing: protos/ehds/federation/v1/node_link_pb2_grpc.py" in stale.stdout
    assert "orphan (its .proto is gone): protos/ehds/federation/v1/retired_pb2.py" in stale.stdout

    fixed = _run_generate(protos)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert not (v1 / "retired_pb2.py").exists()
    assert _run_generate(protos, "--check").returncode == 0
    for name in ("common_pb2.pyi", "node_link_pb2_grpc.py"):
        assert (v1 / name).read_bytes() == (PROTOS / V1 / name).read_bytes()
