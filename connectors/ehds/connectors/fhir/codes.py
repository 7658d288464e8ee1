"""Fixed code tables of the FHIR mapping: code system URIs to OMOP vocabulary ids, and the few
FHIR value sets that map to a fixed OMOP concept (gender, race, ethnicity, encounter class,
quantity comparator).

Why constants here and not lookups: these value sets are closed and small, the OMOP concepts
they map to are the OHDSI standard ones that the HL7 FHIR-to-OMOP IG's ConceptMaps name, and the
staged rows carry them as integers (the commit takes an integer concept as given). Every other
code travels as ``(vocabulary, code)`` and is resolved through the vocabulary at commit.
"""

from __future__ import annotations

from typing import Final

SYSTEM_VOCABULARY: Final[dict[str, str]] = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://unitsofmeasure.org": "UCUM",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT4",
    "urn:oid:2.16.840.1.113883.6.285": "HCPCS",
    "http://www.whocc.no/atc": "ATC",
    "http://fhir.de/CodeSystem/bfarm/icd-10-gm": "ICD10GM",
    "https://www.cms.gov/Medicare/Coding/ICD10": "ICD10PCS",
    "http://www.cms.gov/Medicare/Coding/ICD10": "ICD10PCS",
}
"""FHIR code system URI → OMOP ``vocabulary_id``. A coding whose system is not listed is staged
with the system URI itself as its vocabulary, so a partner maps it through
``source_to_concept_map`` (see docs/connectors/fhir.md)."""

EHR_TYPE_CONCEPT: Final = 32817
"""OMOP type concept "EHR": the provenance of every row this connector stages."""

GENDER_CONCEPTS: Final[dict[str, int]] = {"male": 8507, "female": 8532}
"""AdministrativeGender → OMOP Gender; ``other`` and ``unknown`` map to 0 (OHDSI convention)."""

RACE_CONCEPTS: Final[dict[str, int]] = {
    "1002-5": 8657,  # American Indian or Alaska Native
    "2028-9": 8515,  # Asian
    "2054-5": 8516,  # Black or African American
    "2076-8": 8557,  # Native Hawaiian or Other Pacific Islander
    "2106-3": 8527,  # White
}
"""US Core race ``ombCategory`` (CDC Race & Ethnicity, urn:oid:2.16.840.1.113883.6.238) →
OMOP Race."""

ETHNICITY_CONCEPTS: Final[dict[str, int]] = {
    "2135-2": 38003563,  # Hispanic or Latino
    "2186-5": 38003564,  # Not Hispanic or Latino
}
"""US Core ethnicity ``ombCategory`` → OMOP Ethnicity."""

US_CORE_RACE: Final = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY: Final = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"

ENCOUNTER_CLASS_CONCEPTS: Final[dict[str, int]] = {
    "IMP": 9201,  # inpatient encounter → Inpatient Visit
    "ACUTE": 9201,  # inpatient acute
    "NONAC": 9201,  # inpatient non-acute
    "AMB": 9202,  # ambulatory → Outpatient Visit
    "EMER": 9203,  # emergency → Emergency Room Visit
    "OBSENC": 262,  # observation encounter → Emergency Room and Inpatient Visit
    "VR": 722455,  # virtual → Telehealth
    "HH": 581476,  # home health → Home Visit
    "PRENC": 9202,  # pre-admission → Outpatient Visit
    "SS": 9202,  # short stay → Outpatient Visit
}
"""Encounter.class (v3 ActCode) → OMOP Visit, after the IG's ConceptMap ``EncounterClass``;
an unlisted class maps to 0."""

COMPARATOR_CONCEPTS: Final[dict[str, int]] = {
    "<": 4171756,
    "<=": 4171754,
    ">=": 4171755,
    ">": 4172704,
}
"""Quantity.comparator → OMOP ``operator_concept_id`` (Meas Value Operator)."""

MEASUREMENT_CATEGORIES: Final = frozenset({"vital-signs", "laboratory"})
"""Observation.category codes that route an Observation to ``measurement`` whatever its value."""
