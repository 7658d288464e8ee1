"""One FHIR resource (an NDJSON line) → staged rows or a rejection: parse, validate, map.

``map_line`` is the unit of work of every execution path: the connector's worker processes,
and the Spark job (``mapPartitions``) which imports it. It is pure: no I/O, no state beyond
module constants, picklable arguments and results.

Validation uses the R4B models of ``fhir.resources`` (they validate Synthea's R4 output) with
``model_validate_json`` on the raw line, which is faster than validating the parsed dict; the
mapping then reads the plain dict from ``json.loads`` (cheaper than walking the model), so the
validated and the ``validate=False`` paths share one mapping. Only the resource types the
connector maps are validated: a Practitioner that feeds no OMOP row is counted, not checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ehds.connectors.fhir.fields import FhirValueError
from ehds.connectors.fhir.mappers import MAPPERS, StagedRows, UnmappableError
from ehds.connectors.rejection import Rejection

UNKNOWN_TYPE: Final = "unknown"
"""The ``record_type`` of a line that is not a JSON object with a ``resourceType``."""

MAX_ERRORS: Final = 5
"""Validation errors named in a rejection's detail (the rest are counted)."""

MapResult = tuple[StagedRows, Rejection | None, str]


def map_line(line: str | bytes, location: str, *, validate: bool = True) -> MapResult:
    """Parse, validate (unless ``validate`` is False) and map one NDJSON line.

    Returns (staged rows by table, a rejection or None, the resource type read). ``location``
    is ``file:line``; the file part becomes the rejection's ``source``."""
    try:
        resource = json.loads(line)
    except (ValueError, UnicodeDecodeError) as error:
        return (
            [],
            _reject(
                location, UNKNOWN_TYPE, None, "fhir.invalid_json", str(_json_where(error)), line
            ),
            UNKNOWN_TYPE,
        )
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        detail = "the line is not a JSON object with a string resourceType"
        return (
            [],
            _reject(location, UNKNOWN_TYPE, None, "fhir.invalid_resource", detail, line),
            UNKNOWN_TYPE,
        )
    return map_resource(resource, location, validate=validate, raw=line)


def map_resource(
    resource: Mapping[str, Any],
    location: str,
    *,
    validate: bool = True,
    raw: str | bytes | None = None,
) -> MapResult:
    """Validate and map a parsed resource (a Bundle entry's, or a line's). ``raw`` is the JSON
    text when there is one: validation parses it again, in Rust, faster than from the dict."""
    resource_type = str(resource.get("resourceType"))
    mapper = MAPPERS.get(resource_type)
    if mapper is None:
        return [], None, resource_type
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        detail = f"{resource_type}.id is absent"
        return (
            [],
            _reject(location, resource_type, None, "fhir.missing_id", detail, raw, resource),
            resource_type,
        )
    key = f"{resource_type}/{resource_id}"
    if validate:
        model = get_fhir_model_class(resource_type)
        try:
            if raw is not None:
                model.model_validate_json(raw)
            else:
                model.model_validate(resource)
        except ValidationError as error:
            detail = _validation_detail(resource_type, error)
            return (
                [],
                _reject(
                    location, resource_type, key, "fhir.invalid_resource", detail, raw, resource
                ),
                resource_type,
            )
    try:
        rows = mapper(resource, key, location)
    except UnmappableError as error:
        return (
            [],
            _reject(location, resource_type, key, error.reason, error.detail, raw, resource),
            resource_type,
        )
    except FhirValueError as error:
        detail = f"{resource_type}.{error.field} has a value of the wrong type or format"
        return (
            [],
            _reject(location, resource_type, key, "fhir.invalid_value", detail, raw, resource),
            resource_type,
        )
    return rows, None, resource_type


def _validation_detail(resource_type: str, error: ValidationError) -> str:
    """Field paths and error kinds of a validation failure, never the offending values."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    named = [
        f"{resource_type}.{'.'.join(str(part) for part in problem['loc'])}: {problem['type']}"
        for problem in problems[:MAX_ERRORS]
    ]
    if len(problems) > MAX_ERRORS:
        named.append(f"and {len(problems) - MAX_ERRORS} more")
    return "; ".join(named) or f"{resource_type}: fails validation"


def _json_where(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"malformed JSON at character {error.pos}"
    return "the line is not valid UTF-8"


def _reject(  # noqa: PLR0917 (a record's coordinates, in Rejection's own order)
    location: str,
    record_type: str,
    key: str | None,
    reason: str,
    detail: str,
    raw: str | bytes | None,
    resource: Mapping[str, Any] | None = None,
) -> Rejection:
    if isinstance(raw, bytes):
        record: str | None = raw.decode("utf-8", errors="replace")
    elif raw is not None:
        record = raw
    else:
        record = json.dumps(resource) if resource is not None else None
    source = location.rpartition(":")[0] or location
    return Rejection(
        source=source,
        location=location,
        record_type=record_type,
        record_key=key,
        reason=reason,
        detail=detail,
        record=record.rstrip("\n") if record is not None else None,
    )
