"""Lint and render the Helm charts in deploy/helm the way `helm lint` and `helm template` do.

Helm here is Helm's own Go SDK (v4, through helm-python-sdk's C ABI): no helm binary newer than
3.6 installs from the package registries this project may use, and the SDK is what the binary
runs. Charts are copied to a temporary folder before `helm dependency build`, so that tests never
write packaged library charts into the working tree.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "deploy" / "helm"
VALUES_DIR = HELM_DIR / "values"
CHARTS = ("coordinator", "node")
LIBRARY = "ehds-common"
KUBE_VERSIONS = ("1.27.0", "1.37.0")
"""The oldest Kubernetes the charts declare (kubeVersion) and the newest with bundled schemas."""


def copy_charts(destination: Path) -> dict[str, Path]:
    """The charts, copied under ``destination`` with their library chart built into charts/."""
    import helm_python

    for name in (LIBRARY, *CHARTS):
        shutil.copytree(HELM_DIR / name, destination / name, ignore=_ignore_built)
    charts = {name: destination / name for name in CHARTS}
    for path in charts.values():
        helm_python.dependency_build(path, skip_refresh=True)
    return charts


def _ignore_built(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "charts" or name.endswith(".tgz")}


def values_files() -> list[Path]:
    """Every values file CI renders: deploy/helm/values/CHART-VARIANT.yaml."""
    return sorted(VALUES_DIR.glob("*.yaml"))


def chart_of(values_file: Path) -> str:
    chart = values_file.stem.split("-", 1)[0]
    if chart not in CHARTS:
        raise ValueError(f"{values_file.name}: the name must start with one of {CHARTS}")
    return chart


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a values file is a mapping")
    return data


@dataclass(frozen=True)
class Rendered:
    """What `helm template` prints, split into documents, with the template each came from."""

    documents: tuple[tuple[str, dict[str, Any]], ...]
    notes: str

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (document for _, document in self.documents)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [document for document in self if document.get("kind") == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [
            document
            for document in self.of_kind(kind)
            if document["metadata"]["name"].endswith(name_suffix)
        ]
        if len(found) != 1:
            raise AssertionError(f"expected one {kind} *{name_suffix}, found {len(found)}")
        return found[0]


def render(
    chart_dir: Path,
    values: Mapping[str, Any],
    *,
    release: str = "fr",
    namespace: str = "ehds",
) -> Rendered:
    """`helm template`: values checked against values.schema.json, then templates rendered.

    Raises helm_python.HelmValuesError (schema) or HelmRenderError (a template's `fail`)."""
    import helm_python

    with helm_python.Chart.load(chart_dir) as chart:
        chart.validate_schema(chart.merge_values(dict(values)))
        manifests = chart.render(dict(values), name=release, namespace=namespace, is_install=True)
    documents: list[tuple[str, dict[str, Any]]] = []
    notes = ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                documents.append((template, document))
    return Rendered(tuple(documents), notes)


def lint(chart_dir: Path, values: Mapping[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: every finding of warning or error severity, as text."""
    import helm_python

    report = helm_python.lint(chart_dir, dict(values or {}), strict=True)
    findings = [
        f"{message['path']}: {message['error']}"
        for message in report["messages"]
        if message["severity"] >= 2
    ]
    return findings + list(report["errors"])
