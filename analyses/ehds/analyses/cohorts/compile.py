"""YAML cohort language -> ATLAS/Circe cohort JSON.

Why JSON and not circe's Python objects: the JSON is the format OHDSI shares and the one
:mod:`.atlas` checks, so a YAML cohort and an imported ATLAS cohort go through the same
validation, the same fingerprint and the same executor. Each YAML construct maps to one
Circe construct; the mapping is the documentation of the language's semantics.
"""

from __future__ import annotations

from typing import Any

from .language import (
    AgeRange,
    CohortDocument,
    ConceptSetDefinition,
    Criterion,
    Event,
    ValueRange,
    Window,
)

JsonDict = dict[str, Any]

_CRITERIA_TYPES = {
    "condition": "ConditionOccurrence",
    "drug": "DrugExposure",
    "procedure": "ProcedureOccurrence",
    "measurement": "Measurement",
    "observation": "Observation",
    "visit": "VisitOccurrence",
}
_OCCURRENCE_TYPES = {"exactly": 0, "at_most": 1, "at_least": 2}
_GENDER_CONCEPTS = {"female": 8532, "male": 8507}


def to_atlas_json(document: CohortDocument) -> JsonDict:
    """The ATLAS cohort JSON (a mapping) equivalent to a validated YAML document."""
    codeset_ids = {name: index for index, name in enumerate(document.concept_sets)}
    limit = "First" if document.entry.events_per_person == "first" else "All"
    primary = [
        _criteria(event, codeset_ids, first=document.entry.first_occurrence)
        for event in document.entry.events
    ]
    rules = [_inclusion_rule(criterion, codeset_ids) for criterion in document.inclusion]
    if document.demographics is not None and (
        document.demographics.age is not None or document.demographics.sex is not None
    ):
        demographic: JsonDict = {}
        if document.demographics.age is not None:
            demographic["Age"] = _age_range(document.demographics.age)
        if document.demographics.sex is not None:
            demographic["Gender"] = [
                {"CONCEPT_ID": _GENDER_CONCEPTS[sex], "CONCEPT_NAME": sex.upper()}
                for sex in document.demographics.sex
            ]
        rules.append(
            {
                "name": "demographics at index",
                "expression": {
                    "Type": "ALL",
                    "CriteriaList": [],
                    "DemographicCriteriaList": [demographic],
                    "Groups": [],
                },
            }
        )
    expression: JsonDict = {
        "ConceptSets": [
            _concept_set(codeset_ids[name], name, definition)
            for name, definition in document.concept_sets.items()
        ],
        "PrimaryCriteria": {
            "CriteriaList": primary,
            "ObservationWindow": {
                "PriorDays": document.entry.prior_observation_days,
                "PostDays": document.entry.post_observation_days,
            },
            "PrimaryCriteriaLimit": {"Type": limit},
        },
        "QualifiedLimit": {"Type": limit},
        "ExpressionLimit": {"Type": limit},
        "InclusionRules": rules,
        "CensoringCriteria": [_criteria(e, codeset_ids) for e in document.exit.on_events],
        "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
        "CensorWindow": {},
    }
    if document.exit.days_after_start is not None:
        expression["EndStrategy"] = {
            "DateOffset": {"DateField": "StartDate", "Offset": document.exit.days_after_start}
        }
    return expression


def _concept_set(codeset_id: int, name: str, definition: ConceptSetDefinition) -> JsonDict:
    items = [
        {
            "concept": {"CONCEPT_ID": entry.concept, "CONCEPT_NAME": entry.name or ""},
            "includeDescendants": entry.descendants,
            "isExcluded": excluded,
            "includeMapped": False,
        }
        for excluded, entries in ((False, definition.include), (True, definition.exclude))
        for entry in entries
    ]
    return {"id": codeset_id, "name": name, "expression": {"items": items}}


def _criteria(event: Event, codeset_ids: dict[str, int], *, first: bool = False) -> JsonDict:
    body: JsonDict = {"CodesetId": codeset_ids[event.concept_set]}
    if first:
        body["First"] = True
    if event.value is not None:
        body["ValueAsNumber"] = _value_range(event.value)
    return {_CRITERIA_TYPES[event.domain]: body}


def _value_range(value: ValueRange) -> JsonDict:
    if value.min is not None and value.max is not None:
        return {"Op": "bt", "Value": value.min, "Extent": value.max}
    if value.min is not None:
        return {"Op": "gte", "Value": value.min}
    return {"Op": "lte", "Value": value.max}


def _age_range(age: AgeRange) -> JsonDict:
    if age.min is not None and age.max is not None:
        return {"Op": "bt", "Value": age.min, "Extent": age.max}
    if age.min is not None:
        return {"Op": "gte", "Value": age.min}
    return {"Op": "lte", "Value": age.max}


def _bound(days: int | None, *, unbounded_coeff: int) -> JsonDict:
    """Circe's window bound: ``Days`` counted in the direction of ``Coeff`` (-1 = before the
    index date); no ``Days`` = unbounded in that direction."""
    if days is None:
        return {"Coeff": unbounded_coeff}
    return {"Days": abs(days), "Coeff": -1 if days < 0 else 1}


def _window(window: Window) -> JsonDict:
    return {
        "Start": _bound(window.from_, unbounded_coeff=-1),
        "End": _bound(window.to, unbounded_coeff=1),
        "UseEventEnd": False,
        "UseIndexEnd": False,
    }


def _inclusion_rule(criterion: Criterion, codeset_ids: dict[str, int]) -> JsonDict:
    kind, count = criterion.occurrence
    return {
        "name": criterion.name,
        "expression": {
            "Type": "ALL",
            "CriteriaList": [
                {
                    "Criteria": _criteria(criterion, codeset_ids),
                    "StartWindow": _window(criterion.window),
                    "RestrictVisit": False,
                    "IgnoreObservationPeriod": criterion.anytime_in_history,
                    "Occurrence": {
                        "Type": _OCCURRENCE_TYPES[kind],
                        "Count": count,
                        "IsDistinct": False,
                    },
                }
            ],
            "DemographicCriteriaList": [],
            "Groups": [],
        },
    }
