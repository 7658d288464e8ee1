"""Checking a researcher's study spec before anything is stored or dispatched.

Every error is an `InvalidStudyError` whose message starts with the field's path in the
protocol (``spec.min_nodes: ...``, ``spec.parameters.age_band_edges: ...``), so that a client
can point at the line of the study file. Parameter values are never echoed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from ehds.analyses.base import Analysis, InvalidParametersError
from ehds.analyses.iteration import ROUND_FIELD, is_iterative, submitted_round
from ehds.analyses.registry import Registry
from ehds.coordinator.config import StudyDefaults
from ehds.coordinator.errors import InvalidStudyError, StudyPermitError
from ehds.core.errors import InputError
from ehds.federation import limits
from ehds.federation.model import StudySpec
from ehds.permits import PermitRefusal
from ehds.pki.identity import NAME_PATTERN

__all__ = ["ValidatedSpec", "resolve_targets", "validate_spec"]

MAX_TITLE_CHARS: Final = 500
MAX_PERMIT_ID_CHARS: Final = 200
MAX_REQUEST_ID_CHARS: Final = 200


@dataclass(frozen=True)
class ValidatedSpec:
    """A spec that passed every check that needs no database: parameters re-encoded
    canonically, the default deadline filled in, target names unique and sorted."""

    spec: StudySpec
    analysis: Analysis[Any]


def _parameter_problems(analysis: Analysis[Any], error: InvalidParametersError) -> str:
    """``person_count 1.0.0: parameters.x: ...; parameters.y: ...`` as
    ``spec.parameters.x: ...; spec.parameters.y: ...``."""
    message = str(error)
    prefix = f"{analysis.ref()}: "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    message = re.sub(r"(^|; )parameters", r"\1spec.parameters", message)
    if not message.startswith("spec.parameters"):
        message = f"spec.parameters: {message}"
    return message


def validate_spec(
    spec: StudySpec, registry: Registry, defaults: StudyDefaults, request_id: str = ""
) -> ValidatedSpec:
    if len(spec.title) > MAX_TITLE_CHARS:
        raise InvalidStudyError(f"spec.title: at most {MAX_TITLE_CHARS} characters")
    if not spec.data_permit_id:
        raise StudyPermitError(PermitRefusal.MISSING)
    if len(spec.data_permit_id) > MAX_PERMIT_ID_CHARS:
        raise InvalidStudyError(f"spec.data_permit_id: at most {MAX_PERMIT_ID_CHARS} characters")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidStudyError(f"request_id: at most {MAX_REQUEST_ID_CHARS} characters")
    if not spec.analysis.name:
        raise InvalidStudyError("spec.analysis.name: is empty")
    try:
        analysis = registry.get(spec.analysis)
    except InputError as exc:
        raise InvalidStudyError(f"spec.analysis: {exc}") from None
    if len(spec.parameters) > limits.MAX_PARAMETERS_BYTES:
        raise InvalidStudyError(
            f"spec.parameters: {len(spec.parameters)} bytes, more than the "
            f"{limits.MAX_PARAMETERS_BYTES} allowed"
        )
    if is_iterative(analysis) and submitted_round(spec.parameters):
        raise InvalidStudyError(
            f"spec.parameters.{ROUND_FIELD}: set by the coordinator for each round of an "
            "iterative analysis; remove it from the study's parameters"
        )
    try:
        # No parameters at all means the analysis' defaults (proto3 cannot tell unset bytes
        # from empty ones).
        parsed = analysis.parse_parameters(spec.parameters or b"{}")
    except InvalidParametersError as exc:
        raise InvalidStudyError(_parameter_problems(analysis, exc)) from None
    parameters = analysis.encode_parameters(parsed)
    if len(parameters) > limits.MAX_PARAMETERS_BYTES:
        raise InvalidStudyError(
            f"spec.parameters: {len(parameters)} bytes once encoded canonically, more than the "
            f"{limits.MAX_PARAMETERS_BYTES} allowed"
        )
    if spec.min_nodes < 1:
        raise InvalidStudyError("spec.min_nodes: must be at least 1")
    deadline = spec.deadline_seconds or defaults.deadline_seconds
    if not 1 <= deadline <= defaults.max_deadline_seconds:
        raise InvalidStudyError(
            f"spec.deadline_seconds: must be between 1 and {defaults.max_deadline_seconds}"
        )
    seen: set[str] = set()
    for name in spec.target_nodes:
        if not NAME_PATTERN.fullmatch(name):
            raise InvalidStudyError(f"spec.target_nodes: {name!r} is not a valid node name")
        if name in seen:
            raise InvalidStudyError(f"spec.target_nodes: {name!r} is listed twice")
        seen.add(name)
    return ValidatedSpec(
        replace(
            spec,
            parameters=parameters,
            deadline_seconds=deadline,
            target_nodes=tuple(sorted(seen)),
        ),
        analysis,
    )


def resolve_targets(
    spec: StudySpec, nodes: Mapping[str, bool], covered: Collection[str] | None = None
) -> list[str]:
    """The nodes the study runs at, sorted. ``nodes``: every known node name -> revoked;
    ``covered``: the nodes the study's permit covers (None: no limit).

    A named target must be a node that has connected at least once and is not revoked (the
    permit's coverage of a named target is checked before, with its own reason code); no
    targets means every known node that the permit covers and that is not revoked.
    """
    if spec.target_nodes:
        unknown = [name for name in spec.target_nodes if name not in nodes]
        if unknown:
            raise InvalidStudyError(
                "spec.target_nodes: never connected to this coordinator: " + ", ".join(unknown)
            )
        revoked = [name for name in spec.target_nodes if nodes[name]]
        if revoked:
            raise InvalidStudyError("spec.target_nodes: revoked: " + ", ".join(revoked))
        targets = list(spec.target_nodes)
    else:
        allowed = set(nodes) if covered is None else set(covered)
        targets = sorted(
            name for name, is_revoked in nodes.items() if not is_revoked and name in allowed
        )
        if not targets:
            raise InvalidStudyError(
                "spec.target_nodes: empty, and none of the nodes the permit covers has "
                "connected to this coordinator yet"
                if covered is not None
                else "spec.target_nodes: empty, and no node has connected to this coordinator yet"
            )
    if spec.min_nodes > len(targets):
        raise InvalidStudyError(
            f"spec.min_nodes: {spec.min_nodes} is more than the {len(targets)} target nodes"
        )
    return targets
