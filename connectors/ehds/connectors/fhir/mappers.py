"""One function per FHIR resource type: a resource's JSON dict → staged rows (table, row).

Rows follow the staging contract (docs/connectors/README.md): ``_key`` is ``<Type>/<id>``,
foreign keys are source keys (``person_id__key = "Patient/<id>"``), codes travel as
``<concept column>__vocab`` / ``__code`` and are resolved at commit; fixed value sets (gender,
race, visit class...) are given as OMOP concept ids. The choices (which FHIR element feeds which
column, what is required) follow the HL7 FHIR-to-OMOP IG where it gives one and are listed in
docs/connectors/fhir.md. A record that cannot give a required OMOP value raises ``UnmappableError``
with a reason code and the field's path (never its value).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Final

from ehds.connectors.fhir import codes
from ehds.connectors.fhir.fields import (
    FhirValueError,
    JsonDict,
    first_code,
    first_datetime,
    number,
    pick_coding,
    reference_key,
)

Row = dict[str, object]
StagedRows = list[tuple[str, Row]]


class UnmappableError(Exception):
    """The resource is valid FHIR but lacks what OMOP requires (a subject, a start date)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _subject(resource: JsonDict, field: str) -> str:
    key = reference_key(resource.get(field), "Patient")
    if key is None:
        raise UnmappableError(
            "fhir.missing_subject", f"{field} is absent or not a Patient reference"
        )
    return key


def _start(resource: JsonDict, *fields: str) -> tuple[dt.date, dt.datetime | None]:
    found = first_datetime(resource, *fields)
    if found is None:
        raise UnmappableError("fhir.missing_date", f"none of {', '.join(fields)} is present")
    return found


def _check_status(resource: JsonDict) -> None:
    status = resource.get("status")
    if status == "entered-in-error":
        raise UnmappableError("fhir.entered_in_error", "status is entered-in-error")
    if status == "not-done":
        raise UnmappableError("fhir.not_done", "status is not-done")


def _code(row: Row, column: str, concept: object, field: str, source_column: str) -> None:
    """Stage a CodeableConcept as ``column__vocab/__code`` and its code as the source value."""
    picked = pick_coding(concept, field)
    if picked is not None:
        row[f"{column}__vocab"], row[f"{column}__code"] = picked
        row[source_column] = picked[1]


def _visit(row: Row, resource: JsonDict, field: str = "encounter") -> None:
    key = reference_key(resource.get(field), "Encounter")
    if key is not None:
        row["visit_occurrence_id__key"] = key


def map_patient(resource: JsonDict, key: str, source: str) -> StagedRows:
    birth = resource.get("birthDate")
    if birth is None:
        raise UnmappableError("fhir.missing_date", "birthDate is absent")
    birth_date, _ = _parse_date(birth, "birthDate")
    gender = resource.get("gender")
    row: Row = {
        "_key": key,
        "_source": source,
        "gender_concept_id": codes.GENDER_CONCEPTS.get(gender, 0) if isinstance(gender, str) else 0,
        "gender_source_value": gender,
        "year_of_birth": birth_date.year,
        "birth_datetime": dt.datetime(birth_date.year, birth_date.month, birth_date.day),
        "person_source_value": resource.get("id"),
        "race_concept_id": 0,
        "ethnicity_concept_id": 0,
    }
    if isinstance(birth, str) and len(birth) >= 7:
        row["month_of_birth"] = birth_date.month
        if len(birth) >= 10:
            row["day_of_birth"] = birth_date.day
    for extension in resource.get("extension") or ():
        url = extension.get("url") if isinstance(extension, dict) else None
        if url == codes.US_CORE_RACE:
            code = _omb_category(extension)
            row["race_source_value"] = code
            row["race_concept_id"] = codes.RACE_CONCEPTS.get(code or "", 0)
        elif url == codes.US_CORE_ETHNICITY:
            code = _omb_category(extension)
            row["ethnicity_source_value"] = code
            row["ethnicity_concept_id"] = codes.ETHNICITY_CONCEPTS.get(code or "", 0)
    rows: StagedRows = [("person", row)]
    deceased = resource.get("deceasedDateTime")
    if deceased is not None:
        death_date, death_time = _parse_date(deceased, "deceasedDateTime")
        rows.append(
            (
                "death",
                {
                    "_key": key,
                    "_source": source,
                    "person_id__key": key,
                    "death_date": death_date,
                    "death_datetime": death_time,
                    "death_type_concept_id": codes.EHR_TYPE_CONCEPT,
                },
            )
        )
    return rows


def _parse_date(value: object, field: str) -> tuple[dt.date, dt.datetime | None]:
    found = first_datetime({field: value}, field)
    assert found is not None
    return found


def _omb_category(extension: JsonDict) -> str | None:
    for part in extension.get("extension") or ():
        if isinstance(part, dict) and part.get("url") == "ombCategory":
            coding = part.get("valueCoding")
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def map_encounter(resource: JsonDict, key: str, source: str) -> StagedRows:
    _check_status(resource)
    person = _subject(resource, "subject")
    start_date, start_time = _start(resource, "period.start")
    end = first_datetime(resource, "period.end")
    end_date, end_time = end if end is not None else (start_date, start_time)
    klass = resource.get("class")
    class_code = klass.get("code") if isinstance(klass, dict) else None
    row: Row = {
        "_key": key,
        "_source": source,
        "person_id__key": person,
        "visit_concept_id": codes.ENCOUNTER_CLASS_CONCEPTS.get(class_code, 0)
        if isinstance(class_code, str)
        else 0,
        "visit_source_value": class_code,
        "visit_start_date": start_date,
        "visit_start_datetime": start_time,
        "visit_end_date": end_date,
        "visit_end_datetime": end_time,
        "visit_type_concept_id": codes.EHR_TYPE_CONCEPT,
    }
    hospitalization = resource.get("hospitalization")
    if isinstance(hospitalization, dict):
        _code(
            row,
            "admitted_from_concept_id",
            hospitalization.get("admitSource"),
            "hospitalization.admitSource",
            "admitted_from_source_value",
        )
        _code(
            row,
            "discharged_to_concept_id",
            hospitalization.get("dischargeDisposition"),
            "hospitalization.dischargeDisposition",
            "discharged_to_source_value",
        )
    return [("visit_occurrence", row)]


def map_condition(resource: JsonDict, key: str, source: str) -> StagedRows:
    verification = first_code(resource.get("verificationStatus"), "verificationStatus")
    if verification in ("entered-in-error", "refuted"):
        raise UnmappableError("fhir.entered_in_error", f"verificationStatus is {verification}")
    person = _subject(resource, "subject")
    start_date, start_time = _start(resource, "onsetDateTime", "onsetPeriod.start", "recordedDate")
    row: Row = {
        "_key": key,
        "_source": source,
        "person_id__key": person,
        "condition_start_date": start_date,
        "condition_start_datetime": start_time,
        "condition_type_concept_id": codes.EHR_TYPE_CONCEPT,
        "condition_status_source_value": first_code(
            resource.get("clinicalStatus"), "clinicalStatus"
        ),
    }
    end = first_datetime(resource, "abatementDateTime", "abatementPeriod.end")
    if end is not None:
        row["condition_end_date"], row["condition_end_datetime"] = end
    _code(row, "condition_concept_id", resource.get("code"), "code", "condition_source_value")
    _visit(row, resource)
    return [("condition_occurrence", row)]


def _drug_row(
    resource: JsonDict, key: str, source: str, start: tuple[dt.date, dt.datetime | None]
) -> Row:
    return {
        "_key": key,
        "_source": source,
        "drug_exposure_start_date": start[0],
        "drug_exposure_start_datetime": start[1],
        "drug_type_concept_id": codes.EHR_TYPE_CONCEPT,
    }


def _end_or_start(
    row: Row,
    end: tuple[dt.date, dt.datetime | None] | None,
    start: tuple[dt.date, dt.datetime | None],
) -> None:
    """``drug_exposure_end_date`` is required: without a known end it is the start date."""
    row["drug_exposure_end_date"], row["drug_exposure_end_datetime"] = end or start


def _dosage(row: Row, dosages: object) -> None:
    if not isinstance(dosages, list) or not dosages or not isinstance(dosages[0], dict):
        return
    dosage = dosages[0]
    if isinstance(dosage.get("text"), str):
        row["sig"] = dosage["text"]
    route = pick_coding(dosage.get("route"), "dosage.route")
    if route is not None:
        row["route_concept_id__vocab"], row["route_concept_id__code"] = route
        row["route_source_value"] = route[1]


def map_medication_request(resource: JsonDict, key: str, source: str) -> StagedRows:
    _check_status(resource)
    person = _subject(resource, "subject")
    start = _start(resource, "authoredOn")
    row = _drug_row(resource, key, source, start)
    row["person_id__key"] = person
    dispense = resource.get("dispenseRequest")
    end = None
    if isinstance(dispense, dict):
        end = first_datetime(dispense, "validityPeriod.end")
        quantity = dispense.get("quantity")
        if isinstance(quantity, dict):
            row["quantity"] = number(quantity.get("value"), "dispenseRequest.quantity.value")
        refills = dispense.get("numberOfRepeatsAllowed")
        if isinstance(refills, int):
            row["refills"] = refills
        supply = dispense.get("expectedSupplyDuration")
        if isinstance(supply, dict) and supply.get("code") == "d":
            days = number(supply.get("value"), "dispenseRequest.expectedSupplyDuration.value")
            if days is not None:
                row["days_supply"] = int(days)
                if end is None:
                    end_date = start[0] + dt.timedelta(days=max(int(days) - 1, 0))
                    end = end_date, None
    _end_or_start(row, end, start)
    _code(
        row,
        "drug_concept_id",
        resource.get("medicationCodeableConcept"),
        "medicationCodeableConcept",
        "drug_source_value",
    )
    _dosage(row, resource.get("dosageInstruction"))
    _visit(row, resource)
    return [("drug_exposure", row)]


def map_medication_statement(resource: JsonDict, key: str, source: str) -> StagedRows:
    _check_status(resource)
    person = _subject(resource, "subject")
    start = _start(resource, "effectiveDateTime", "effectivePeriod.start", "dateAsserted")
    row = _drug_row(resource, key, source, start)
    row["person_id__key"] = person
    _end_or_start(row, first_datetime(resource, "effectivePeriod.end"), start)
    _code(
        row,
        "drug_concept_id",
        resource.get("medicationCodeableConcept"),
        "medicationCodeableConcept",
        "drug_source_value",
    )
    _dosage(row, resource.get("dosage"))
    _visit(row, resource, "context")
    return [("drug_exposure", row)]


def map_immunization(resource: JsonDict, key: str, source: str) -> StagedRows:
    _check_status(resource)
    person = _subject(resource, "patient")
    start = _start(resource, "occurrenceDateTime", "recorded")
    row = _drug_row(resource, key, source, start)
    row["person_id__key"] = person
    _end_or_start(row, None, start)
    _code(row, "drug_concept_id", resource.get("vaccineCode"), "vaccineCode", "drug_source_value")
    if isinstance(resource.get("lotNumber"), str):
        row["lot_number"] = resource["lotNumber"]
    dose = resource.get("doseQuantity")
    if isinstance(dose, dict):
        row["quantity"] = number(dose.get("value"), "doseQuantity.value")
        if isinstance(dose.get("code"), str):
            row["dose_unit_source_value"] = dose["code"]
    route = pick_coding(resource.get("route"), "route")
    if route is not None:
        row["route_concept_id__vocab"], row["route_concept_id__code"] = route
        row["route_source_value"] = route[1]
    _visit(row, resource)
    return [("drug_exposure", row)]


def map_procedure(resource: JsonDict, key: str, source: str) -> StagedRows:
    _check_status(resource)
    person = _subject(resource, "subject")
    start_date, start_time = _start(resource, "performedDateTime", "performedPeriod.start")
    row: Row = {
        "_key": key,
        "_source": source,
        "person_id__key": person,
        "procedure_date": start_date,
        "procedure_datetime": start_time,
        "procedure_type_concept_id": codes.EHR_TYPE_CONCEPT,
    }
    end = first_datetime(resource, "performedPeriod.end")
    if end is not None:
        row["procedure_end_date"], row["procedure_end_datetime"] = end
    _code(row, "procedure_concept_id", resource.get("code"), "code", "procedure_source_value")
    _visit(row, resource)
    return [("procedure_occurrence", row)]


SUBSTANCE_VOCABULARIES = frozenset({"RxNorm", "RxNorm Extension", "CVX", "NDC"})
"""Vocabularies of substances rather than findings (an AllergyIntolerance coded by the drug)."""
ALLERGY_TO_SUBSTANCE = "419199007"
"""SNOMED CT 'Allergy to substance (finding)'."""


def map_allergy(resource: JsonDict, key: str, source: str) -> StagedRows:
    verification = first_code(resource.get("verificationStatus"), "verificationStatus")
    if verification in ("entered-in-error", "refuted"):
        raise UnmappableError("fhir.entered_in_error", f"verificationStatus is {verification}")
    person = _subject(resource, "patient")
    start_date, start_time = _start(resource, "onsetDateTime", "onsetPeriod.start", "recordedDate")
    row: Row = {
        "_key": key,
        "_source": source,
        "person_id__key": person,
        "observation_date": start_date,
        "observation_datetime": start_time,
        "observation_type_concept_id": codes.EHR_TYPE_CONCEPT,
    }
    picked = pick_coding(resource.get("code"), "code")
    if picked is not None and picked[0] in SUBSTANCE_VOCABULARIES:
        # A substance is what the patient reacts to, not the fact recorded: staged as the value
        # of an "allergy to substance" observation, so that domain routing (which follows the
        # main concept) never turns an allergy to a drug into an exposure to it.
        row["observation_concept_id__vocab"] = "SNOMED"
        row["observation_concept_id__code"] = ALLERGY_TO_SUBSTANCE
        row["value_as_concept_id__vocab"], row["value_as_concept_id__code"] = picked
        row["observation_source_value"] = picked[1]
        row["value_source_value"] = picked[1]
    else:
        _code(
            row, "observation_concept_id", resource.get("code"), "code", "observation_source_value"
        )
    _visit(row, resource)
    return [("observation", row)]


def map_device(resource: JsonDict, key: str, source: str) -> StagedRows:
    if resource.get("status") == "entered-in-error":
        raise UnmappableError("fhir.entered_in_error", "status is entered-in-error")
    person = _subject(resource, "patient")
    start_date, start_time = _start(resource, "manufactureDate")
    row: Row = {
        "_key": key,
        "_source": source,
        "person_id__key": person,
        "device_exposure_start_date": start_date,
        "device_exposure_start_datetime": start_time,
        "device_type_concept_id": codes.EHR_TYPE_CONCEPT,
    }
    udi = resource.get("udiCarrier")
    if isinstance(udi, list) and udi and isinstance(udi[0], dict):
        identifier = udi[0].get("deviceIdentifier")
        if isinstance(identifier, str):
            row["unique_device_id"] = identifier
    if isinstance(resource.get("lotNumber"), str):
        row["production_id"] = resource["lotNumber"]
    _code(row, "device_concept_id", resource.get("type"), "type", "device_source_value")
    return [("device_exposure", row)]


def map_observation(resource: JsonDict, key: str, source: str) -> StagedRows:
    _check_status(resource)
    if resource.get("status") == "cancelled":
        raise UnmappableError("fhir.not_done", "status is cancelled")
    person = _subject(resource, "subject")
    when = _start(
        resource, "effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"
    )
    category = _categories(resource.get("category"))
    visit = reference_key(resource.get("encounter"), "Encounter")
    rows: StagedRows = []
    components = resource.get("component")
    has_value = any(name.startswith("value") for name in resource)
    if has_value or not components:
        rows.append(_observation_row(resource, key, source, person, visit, when, category, ""))
    if isinstance(components, list):
        for index, component in enumerate(components):
            if not isinstance(component, dict):
                raise FhirValueError("component")
            rows.append(
                _observation_row(
                    component,
                    f"{key}/component/{index}",
                    source,
                    person,
                    visit,
                    when,
                    category,
                    f"component[{index}].",
                )
            )
    return rows


def _categories(value: object) -> frozenset[str]:
    found: set[str] = set()
    if isinstance(value, list):
        for concept in value:
            if isinstance(concept, dict):
                for coding in concept.get("coding") or ():
                    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                        found.add(coding["code"])
    return frozenset(found)


def _observation_row(  # noqa: PLR0917 (one call site, each argument named there)
    part: JsonDict,
    key: str,
    source: str,
    person: str,
    visit: str | None,
    when: tuple[dt.date, dt.datetime | None],
    category: frozenset[str],
    path: str,
) -> tuple[str, Row]:
    """One measurement or observation row from an Observation or one of its components.

    Routing (the connector never looks concepts up, so it cannot route by the concept's domain
    as the IG prefers): a vital-signs or laboratory category, or a numeric value, makes a
    measurement; anything else an observation."""
    quantity = part.get("valueQuantity")
    numeric: float | None = None
    if quantity is not None:
        if not isinstance(quantity, dict):
            raise FhirValueError(f"{path}valueQuantity")
        numeric = number(quantity.get("value"), f"{path}valueQuantity.value")
    elif "valueInteger" in part:
        numeric = number(part["valueInteger"], f"{path}valueInteger")
    is_measurement = quantity is not None or bool(category & codes.MEASUREMENT_CATEGORIES)
    table = "measurement" if is_measurement else "observation"
    prefix = table
    row: Row = {
        "_key": key,
        "_source": source,
        "person_id__key": person,
        f"{prefix}_date": when[0],
        f"{prefix}_datetime": when[1],
        f"{prefix}_type_concept_id": codes.EHR_TYPE_CONCEPT,
    }
    if visit is not None:
        row["visit_occurrence_id__key"] = visit
    _code(row, f"{prefix}_concept_id", part.get("code"), f"{path}code", f"{prefix}_source_value")
    if numeric is not None:
        row["value_as_number"] = numeric
    if isinstance(quantity, dict):
        unit = (
            quantity.get("code") if quantity.get("system") == "http://unitsofmeasure.org" else None
        )
        if isinstance(unit, str):
            row["unit_concept_id__vocab"] = "UCUM"
            row["unit_concept_id__code"] = unit
        label = unit if isinstance(unit, str) else quantity.get("unit")
        if isinstance(label, str):
            row["unit_source_value"] = label
        comparator = quantity.get("comparator")
        if is_measurement and isinstance(comparator, str):
            row["operator_concept_id"] = codes.COMPARATOR_CONCEPTS.get(comparator, 0)
        if numeric is not None:
            row["value_source_value"] = str(quantity.get("value"))
    value_concept = part.get("valueCodeableConcept")
    if value_concept is not None:
        picked = pick_coding(value_concept, f"{path}valueCodeableConcept")
        if picked is not None:
            row["value_as_concept_id__vocab"], row["value_as_concept_id__code"] = picked
            row["value_source_value"] = picked[1]
    text = part.get("valueString")
    if isinstance(text, str):
        row["value_source_value"] = text[:50]
        if not is_measurement:
            row["value_as_string"] = text[:60]
    boolean = part.get("valueBoolean")
    if isinstance(boolean, bool):
        row["value_as_number"] = 1.0 if boolean else 0.0
    if is_measurement:
        _reference_range(row, part.get("referenceRange"), path)
    return table, row


def _reference_range(row: Row, ranges: object, path: str) -> None:
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
        return
    first = ranges[0]
    for bound, column in (("low", "range_low"), ("high", "range_high")):
        quantity = first.get(bound)
        if isinstance(quantity, dict):
            row[column] = number(quantity.get("value"), f"{path}referenceRange.{bound}.value")


Mapper = Callable[[JsonDict, str, str], StagedRows]

MAPPERS: Final[dict[str, Mapper]] = {
    "Patient": map_patient,
    "Encounter": map_encounter,
    "Condition": map_condition,
    "MedicationRequest": map_medication_request,
    "MedicationStatement": map_medication_statement,
    "Immunization": map_immunization,
    "Procedure": map_procedure,
    "Observation": map_observation,
    "AllergyIntolerance": map_allergy,
    "Device": map_device,
}
"""The resource types this connector maps. Others (Practitioner, Organization, Location...) are
counted as read and produce no rows."""

TABLES: Final = (
    "person",
    "death",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "device_exposure",
    "observation_period",
)
"""The OMOP tables the FHIR connector fills (and owns, in replace mode)."""
