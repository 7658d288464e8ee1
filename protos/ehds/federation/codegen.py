"""Generate the Python code for the `.proto` files under `protos/`, or check it is up to date.

    python protos/ehds/federation/codegen.py          # write generated files beside the .protos
    python protos/ehds/federation/codegen.py --check  # exit 1 if committed files are stale

For every `protos/ehds/**/X.proto`, grpcio-tools' protoc (`-I protos`, so that the import path
mirrors the folder: `ehds/federation/v1/common.proto` is `ehds.federation.v1.common_pb2`) writes:

    X_pb2.py, X_pb2_grpc.py      runtime code (protoc's python and grpc_python generators)
    X_pb2.pyi, X_pb2_grpc.pyi    type stubs (mypy-protobuf's protoc-gen-mypy and -mypy_grpc)

The files are committed (as Flower does) so that installing the package needs no code generation;
`--check` (run by the test suite) catches a `.proto` edited without regenerating. Their content
depends on the exact versions of grpcio-tools and mypy-protobuf, which pyproject.toml pins.

Both modes generate into a temporary folder first; writing then replaces only what changed and
deletes generated files whose `.proto` is gone.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

# protos/ehds/federation/codegen.py: the source root is two folders up from this package.
PROTOS_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = PROTOS_ROOT / "ehds"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
MAX_DIFF_LINES = 60


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed by mypy-protobuf, preferably beside this Python."""
    beside = Path(sysconfig.get_path("scripts")) / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


def _proto_files() -> list[Path]:
    files = sorted(SOURCE_DIR.rglob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {SOURCE_DIR}")
    return files


def generate_into(out_dir: Path) -> None:
    """Run protoc with all four generators over every `.proto` file, writing under `out_dir`."""
    out = str(out_dir)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",  # adds -I for google/protobuf/*.proto (Timestamp, Duration)
        f"--proto_path={PROTOS_ROOT}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *(str(path) for path in _proto_files()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed (exit {result.returncode}):\n{result.stderr}")


def _generated_files(root: Path) -> dict[str, Path]:
    """Generated files under `root/ehds`, by path relative to `root`."""
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted((root / "ehds").rglob("*_pb2*"))
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def _diff(committed: Path, fresh: Path, name: str) -> list[str]:
    lines = list(
        difflib.unified_diff(
            committed.read_text(encoding="utf-8").splitlines(keepends=True),
            fresh.read_text(encoding="utf-8").splitlines(keepends=True),
            fromfile=f"committed/{name}",
            tofile=f"generated/{name}",
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more lines)\n"]
    return lines


def check() -> int:
    """0 if the committed generated files are exactly what a fresh run produces, else 1."""
    with tempfile.TemporaryDirectory(prefix="ehds-protos-") as tmp:
        generate_into(Path(tmp))
        fresh = _generated_files(Path(tmp))
        committed = _generated_files(PROTOS_ROOT)
        problems: list[str] = []
        for name, fresh_path in fresh.items():
            committed_path = committed.get(name)
            if committed_path is None:
                problems.append(f"missing: protos/{name}\n")
            elif committed_path.read_bytes() != fresh_path.read_bytes():
                problems.append(f"stale: protos/{name}\n")
                problems.extend(_diff(committed_path, fresh_path, name))
        problems.extend(
            f"orphan (its .proto is gone): protos/{name}\n" for name in committed.keys() - fresh
        )
    if problems:
        sys.stdout.writelines(problems)
        print(
            "generated protobuf code is out of date: run `python protos/ehds/federation/codegen.py`"
        )
        return 1
    print(f"{len(fresh)} generated files up to date")
    return 0


def write() -> int:
    """Bring the generated files under `protos/` up to date; print what changed."""
    with tempfile.TemporaryDirectory(prefix="ehds-protos-") as tmp:
        generate_into(Path(tmp))
        fresh = _generated_files(Path(tmp))
        committed = _generated_files(PROTOS_ROOT)
        for name, fresh_path in fresh.items():
            target = PROTOS_ROOT / name
            if name in committed and target.read_bytes() == fresh_path.read_bytes():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fresh_path.read_bytes())
            print(f"wrote protos/{name}")
        for name in sorted(committed.keys() - fresh):
            (PROTOS_ROOT / name).unlink()
            print(f"removed protos/{name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the committed generated files are out of date",
    )
    args = parser.parse_args(argv)
    return check() if args.check else write()


if __name__ == "__main__":
    sys.exit(main())
