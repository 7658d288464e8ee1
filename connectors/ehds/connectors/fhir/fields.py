"""Reading FHIR JSON values: dateTimes, references and CodeableConcepts, as the mapping needs them.

These work on the plain JSON dict (not on the validated model) so that the same mapping serves
the validated path, the documented ``--no-validate`` fast path and the Spark job. Without
validation a value of the wrong shape raises ``FhirValueError``, which the caller turns into a
rejection naming the field.

Dates: a FHIR dateTime carries its UTC offset; OMOP dates and datetimes are wall-clock values
without a zone. The wall-clock time of the source is kept (the offset is dropped), so the date of
an event is the date the clinician recorded. Partial dates (``2020``, ``2020-03``) fall on the
first day of the period they name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ehds.connectors.fhir.codes import SYSTEM_VOCABULARY

JsonDict = Mapping[str, Any]


class FhirValueError(ValueError):
    """A field holds a value of the wrong shape (only possible when validation is off).
    The message names the field, never its value."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def parse_datetime(text: object, field: str) -> tuple[dt.date, dt.datetime | None]:
    """A FHIR date or dateTime → (date, wall-clock datetime or None for a date without time)."""
    if not isinstance(text, str):
        raise FhirValueError(field)
    try:
        n = len(text)
        if n >= 19 and text[10] == "T":
            stamp = dt.datetime.fromisoformat(text[:19])
            return stamp.date(), stamp
        if n == 10:
            return dt.date.fromisoformat(text), None
        if n == 7:
            return dt.date(int(text[:4]), int(text[5:7]), 1), None
        if n == 4:
            return dt.date(int(text), 1, 1), None
    except ValueError:
        raise FhirValueError(field) from None
    raise FhirValueError(field)


def first_datetime(resource: JsonDict, *fields: str) -> tuple[dt.date, dt.datetime | None] | None:
    """The first of ``fields`` present: a dateTime field, or ``name.start`` of a Period."""
    for field in fields:
        head, _, tail = field.partition(".")
        value = resource.get(head)
        if value is None:
            continue
        if tail:
            if not isinstance(value, dict):
                raise FhirValueError(head)
            value = value.get(tail)
            if value is None:
                continue
        return parse_datetime(value, field)
    return None


def reference_key(reference: object, resource_type: str) -> str | None:
    """The source key ``<resource_type>/<id>`` a Reference points to, or None.

    ``Patient/<id>``, an absolute ``.../Patient/<id>[/_history/<v>]`` and a Bundle's
    ``urn:uuid:<id>`` all resolve; a conditional reference (``Patient?identifier=...``) or one to
    another resource type does not (it cannot be joined without a server)."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    if text.startswith("urn:uuid:"):
        return f"{resource_type}/{text[9:]}"
    if "?" in text:
        return None
    parts = text.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return f"{resource_type}/{parts[-1]}"
    return None


def pick_coding(concept: object, field: str) -> tuple[str, str] | None:
    """(vocabulary_id, code) of a CodeableConcept: its first coding whose system is a known OMOP
    vocabulary, else its first coding with a system and a code (staged with the system URI as
    vocabulary, for ``source_to_concept_map``), else None."""
    if concept is None:
        return None
    if not isinstance(concept, dict):
        raise FhirValueError(field)
    codings = concept.get("coding")
    if not codings:
        return None
    if not isinstance(codings, list):
        raise FhirValueError(f"{field}.coding")
    fallback: tuple[str, str] | None = None
    for coding in codings:
        if not isinstance(coding, dict):
            raise FhirValueError(f"{field}.coding")
        system = coding.get("system")
        code = coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            continue
        vocabulary = SYSTEM_VOCABULARY.get(system)
        if vocabulary is not None:
            return vocabulary, code
        if fallback is None:
            fallback = system, code
    return fallback


def first_code(concepts: object, field: str) -> str | None:
    """The first coding's code of a CodeableConcept or of a list of them (a category, a status)."""
    items = concepts if isinstance(concepts, list) else [concepts]
    for concept in items:
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    return str(coding["code"])
        elif concept is not None:
            raise FhirValueError(field)
    return None


def number(value: object, field: str) -> float | None:
    """A FHIR decimal or integer as float (booleans are not numbers)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FhirValueError(field)
    return float(value)
