"""ATLAS/Circe cohort JSON: accept the subset this node executes, reject the rest by name.

Why a check of our own before circe: circe's models ignore unknown keys, so a misspelt or
newer attribute would silently vanish and the cohort would be wider than its author meant.
And circe's executor is young (alpha): the criteria types below were each run on DuckDB in
``tests/analyses/cohorts``; the others are rejected up front with the construct's name and
path, rather than failing (or worse, silently differing) in the middle of a node's task.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from circe import CohortExpression
from pydantic import BaseModel, ValidationError

from .errors import CohortDefinitionError, UnsupportedCohortError

SUPPORTED_CRITERIA = frozenset(
    {
        "ConditionOccurrence",
        "ConditionEra",
        "DrugExposure",
        "DrugEra",
        "ProcedureOccurrence",
        "Measurement",
        "Observation",
        "VisitOccurrence",
        "Death",
        "ObservationPeriod",
    }
)
"""Criteria types executed by this node (each exercised on DuckDB by the tests)."""

REJECTED_CRITERIA = frozenset(
    {
        "DeviceExposure",
        "Specimen",
        "PayerPlanPeriod",
        "VisitDetail",
        "DoseEra",
        "LocationRegion",
        "Episode",
        "CustomEra",
        "GeoCriteria",
    }
)
"""Criteria types circe knows but this node does not run, because no test here checks them
against independent SQL (no test CDM has device, specimen, payer plan, visit detail, dose
era, location or episode rows; LocationRegion fails on DuckDB outright)."""

SUPPORTED_END_STRATEGIES = frozenset({"DateOffset"})
"""``CustomEra`` (drug-era exit) is rejected: its era building is untested here."""

_DISPLAY_ONLY_KEYS = frozenset({"standard_concept_caption", "invalid_reason_caption"})
"""Keys of ATLAS exports that circe drops and that carry no meaning (captions for display)."""

_KEY_ALIASES = {"primarylimit": "primarycriterialimit"}


def parse_atlas(raw: Mapping[str, Any]) -> CohortExpression:
    """A validated circe expression from ATLAS JSON (a parsed mapping).

    Raises :class:`UnsupportedCohortError` naming an unsupported construct and its path, or
    :class:`CohortDefinitionError` naming the invalid path.
    """
    data = _prepared(raw)
    _check_constructs(data)
    try:
        expression = CohortExpression.model_validate(data)
    except ValidationError as exc:
        raise CohortDefinitionError(
            "invalid ATLAS cohort JSON: " + describe_validation_error(exc)
        ) from None
    dropped = _dropped_keys(
        data, BaseModel.model_dump(expression, by_alias=True, exclude_none=True), ""
    )
    if dropped:
        raise UnsupportedCohortError(
            "ATLAS cohort JSON has keys this node does not understand (they would be ignored "
            "and change the cohort): " + ", ".join(dropped[:10])
        )
    if expression.primary_criteria is None or not expression.primary_criteria.criteria_list:
        raise CohortDefinitionError("ATLAS cohort JSON: PrimaryCriteria.CriteriaList is empty")
    return expression


def describe_validation_error(exc: ValidationError) -> str:
    """``path: message`` for each error, values never echoed (they may be concept lists a
    researcher considers confidential, and the message may be logged)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in error["loc"]) or "<document>"
        parts.append(f"{path}: {error['msg']}")
    return "; ".join(parts)


def _prepared(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The normalisations circe's own ``cohort_expression_from_json`` applies."""
    data = copy.deepcopy(dict(raw))
    if isinstance(data.get("cdmVersionRange"), str):
        data.pop("cdmVersionRange")
    if data.get("censorWindow") == {}:
        data.pop("censorWindow")
    if data.get("CensorWindow") == {}:
        data.pop("CensorWindow")
    return data


def _get(node: Mapping[str, Any], key: str) -> Any:
    lowered = key.lower()
    for name, value in node.items():
        if name.lower() == lowered:
            return value
    return None


def _check_constructs(data: Mapping[str, Any]) -> None:
    primary = _get(data, "PrimaryCriteria")
    if not isinstance(primary, Mapping):
        raise CohortDefinitionError("ATLAS cohort JSON: PrimaryCriteria is missing")
    for i, criteria in enumerate(_get(primary, "CriteriaList") or []):
        _check_criteria(criteria, f"PrimaryCriteria.CriteriaList.{i}")
    additional = _get(data, "AdditionalCriteria")
    if isinstance(additional, Mapping):
        _check_group(additional, "AdditionalCriteria")
    for i, rule in enumerate(_get(data, "InclusionRules") or []):
        expression = _get(rule, "expression") if isinstance(rule, Mapping) else None
        if isinstance(expression, Mapping):
            _check_group(expression, f"InclusionRules.{i}.expression")
    for i, criteria in enumerate(_get(data, "CensoringCriteria") or []):
        _check_criteria(criteria, f"CensoringCriteria.{i}")
    end = _get(data, "EndStrategy")
    if isinstance(end, Mapping):
        for name in end:
            if name not in SUPPORTED_END_STRATEGIES:
                raise UnsupportedCohortError(
                    f"EndStrategy.{name}: the {name} exit strategy is not supported "
                    f"(supported: {', '.join(sorted(SUPPORTED_END_STRATEGIES))}, or none for "
                    "the end of observation)"
                )


def _check_criteria(criteria: Any, path: str) -> None:
    if not isinstance(criteria, Mapping) or len(criteria) != 1:
        raise CohortDefinitionError(f"{path}: expected an object with one criteria type")
    ((kind, body),) = criteria.items()
    if kind in REJECTED_CRITERIA:
        raise UnsupportedCohortError(
            f"{path}.{kind}: the {kind} criteria type is not supported by this node "
            f"(supported: {', '.join(sorted(SUPPORTED_CRITERIA))})"
        )
    if kind not in SUPPORTED_CRITERIA:
        raise UnsupportedCohortError(f"{path}.{kind}: unknown criteria type {kind}")
    if isinstance(body, Mapping):
        correlated = _get(body, "CorrelatedCriteria")
        if isinstance(correlated, Mapping):
            _check_group(correlated, f"{path}.{kind}.CorrelatedCriteria")


def _check_group(group: Mapping[str, Any], path: str) -> None:
    for i, item in enumerate(_get(group, "CriteriaList") or []):
        criteria = _get(item, "Criteria") if isinstance(item, Mapping) else None
        _check_criteria(criteria, f"{path}.CriteriaList.{i}.Criteria")
    for i, sub in enumerate(_get(group, "Groups") or []):
        if isinstance(sub, Mapping):
            _check_group(sub, f"{path}.Groups.{i}")


def _dropped_keys(raw: Any, dumped: Any, path: str) -> list[str]:
    """Paths of keys with a value in ``raw`` that circe's model did not keep."""
    found: list[str] = []
    if isinstance(raw, Mapping) and isinstance(dumped, Mapping):
        kept = {str(k).lower(): v for k, v in dumped.items()}
        for key, value in raw.items():
            lowered = _KEY_ALIASES.get(str(key).lower(), str(key).lower())
            here = f"{path}.{key}" if path else str(key)
            if value is None or value in ({}, []) or lowered in _DISPLAY_ONLY_KEYS:
                continue
            if lowered not in kept:
                found.append(here)
            else:
                found.extend(_dropped_keys(value, kept[lowered], here))
    elif isinstance(raw, list) and isinstance(dumped, list) and len(raw) == len(dumped):
        for i, (r, d) in enumerate(zip(raw, dumped, strict=True)):
            found.extend(_dropped_keys(r, d, f"{path}.{i}"))
    return found
