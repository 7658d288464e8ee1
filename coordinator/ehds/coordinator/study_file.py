"""The study file a researcher submits (`ehds study submit FILE.yaml`), validated before
anything is sent.

Why validate at the client when the coordinator validates again: a researcher should learn
that a parameter is wrong from the file and line they typed it on, in a second, rather than from
a study that failed at every node. The same analysis registry (and so the same parameter
models) serves the client, the coordinator and the nodes, so the checks agree.

    title: Persons by sex and age band
    analysis: {name: person_count, version: 1.0.0}
    parameters: {age_band_edges: [0, 18, 45, 65]}
    min_nodes: 2            # default 1
    deadline_seconds: 600   # default 600
    target_nodes: [fr, fi]  # default: every node the permit covers
    data_permit_id: FI-2026-042   # the registered permit it runs under (the coordinator
                                  # refuses a study without one: permit.missing)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

from ehds.analyses.registry import Registry, default_registry
from ehds.core.config import ConfigError, ConfigModel, parse_yaml, validate
from ehds.core.errors import InputError
from ehds.federation.limits import MAX_PARAMETERS_BYTES
from ehds.federation.model import AnalysisRef, StudySpec
from ehds.pki.identity import NAME_PATTERN

__all__ = ["StudyFile", "StudyFileError", "load_study_file"]

UINT32_MAX: Final = 2**32 - 1


class StudyFileError(ConfigError):
    """The study file is invalid; nothing was sent to the coordinator."""


class AnalysisSection(ConfigModel):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)

    def ref(self) -> AnalysisRef:
        return AnalysisRef(self.name, self.version)


class StudyFile(ConfigModel):
    """The YAML document; ``parameters`` is checked separately, by the analysis' own model."""

    title: str = Field(min_length=1, max_length=500)
    analysis: AnalysisSection
    parameters: dict[str, Any] = Field(default_factory=dict)
    min_nodes: int = Field(default=1, ge=1, le=UINT32_MAX)
    deadline_seconds: int = Field(default=600, ge=1, le=UINT32_MAX)
    target_nodes: tuple[str, ...] = ()
    data_permit_id: str = Field(min_length=1, max_length=200)

    @field_validator("target_nodes")
    @classmethod
    def _node_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        # A node's name is the one in its certificate: what `ehds pki issue` accepts.
        for name in names:
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a node name (lower-case letters, digits and '-')"
                )
        if len(set(names)) != len(names):
            raise ValueError("a node is named twice")
        return names

    @model_validator(mode="after")
    def _enough_targets(self) -> StudyFile:
        if self.target_nodes and self.min_nodes > len(self.target_nodes):
            raise ValueError(
                f"min_nodes is {self.min_nodes} but target_nodes names only "
                f"{len(self.target_nodes)} node(s): the study could never complete"
            )
        return self


class _ParametersOnly(ConfigModel):
    """Looks at the ``parameters`` key of a study file only."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    parameters: Any


def _line_at(data: Any, key_lines: dict[int, dict[Any, int]], *keys: str) -> str:
    """``"line N: "`` for the key at path ``keys`` in the parsed document, else ``""``."""
    line = None
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            break
        line = key_lines.get(id(data), {}).get(key, line)
        data = data[key]
    return f"line {line}: " if line is not None else ""


def load_study_file(path: Path, registry: Registry | None = None) -> StudySpec:
    """Read and check a study file into the `StudySpec` to submit.

    Every error is a `StudyFileError` naming the file, the line and the key path (e.g.
    ``study.yaml: line 6: parameters.age_band_edges: Value error, must start at 0``), all
    problems at once; the parameters are validated by the analysis' own model from
    ``registry`` (default: every analysis shipped) and encoded as the canonical JSON that
    travels.
    """
    registry = registry or default_registry()
    try:
        data, key_lines = parse_yaml(path)
    except ConfigError as exc:
        raise StudyFileError(path, exc.problems) from None
    problems: list[str] = []
    study: StudyFile | None = None
    try:
        study = validate(StudyFile, data, path, key_lines)
    except ConfigError as exc:
        problems.extend(exc.problems)

    # The parameters are checked even when other keys are wrong, as long as the analysis can
    # be told: the researcher then fixes everything in one go.
    ref = study.analysis.ref() if study is not None else _analysis_ref(data)
    analysis = None
    if ref is not None:
        try:
            analysis = registry.get(ref)
        except InputError as exc:
            key = "version" if any(r.name == ref.name for r in registry.refs()) else "name"
            where = _line_at(data, key_lines, "analysis", key)
            problems.append(f"{where}analysis.{key}: {exc}")
    encoded = b""
    if analysis is not None and isinstance(data, dict):
        # The analysis' parameter model, validated in place in the document so that errors
        # get their line numbers.
        wrapper = create_model(
            "StudyParameters", __base__=_ParametersOnly, parameters=(analysis.parameters, ...)
        )
        document = data if "parameters" in data else {**data, "parameters": {}}
        try:
            checked = validate(wrapper, document, path, key_lines)
            encoded = analysis.encode_parameters(checked.parameters)
        except ConfigError as exc:
            problems.extend(f"{p} ({analysis.ref()})" for p in exc.problems if p not in problems)
        if len(encoded) > MAX_PARAMETERS_BYTES:
            where = _line_at(data, key_lines, "parameters")
            problems.append(
                f"{where}parameters: {len(encoded)} bytes once encoded "
                f"(at most {MAX_PARAMETERS_BYTES})"
            )
    if problems or study is None or ref is None:
        raise StudyFileError(path, problems)
    return StudySpec(
        title=study.title,
        analysis=ref,
        parameters=encoded,
        min_nodes=study.min_nodes,
        deadline_seconds=study.deadline_seconds,
        target_nodes=study.target_nodes,
        data_permit_id=study.data_permit_id,
    )


def _analysis_ref(data: Any) -> AnalysisRef | None:
    """The analysis named by a document that failed validation elsewhere, if it names one."""
    section = data.get("analysis") if isinstance(data, dict) else None
    if isinstance(section, dict):
        name, version = section.get("name"), section.get("version")
        if isinstance(name, str) and isinstance(version, str):
            return AnalysisRef(name, version)
    return None
