"""The OMOP concepts and vocabulary ids the SNDS connector writes, in one place.

Concept ids given directly (type, gender, visit, condition status) are standard concepts of
the OMOP vocabularies (Type Concept, Gender, Visit, Condition Status). Clinical codes are never
resolved here: they are staged as ``(vocabulary, code)`` pairs and resolved at commit through
``source_to_concept_map`` and ``concept_relationship`` ('Maps to'); see docs/connectors/snds.md.
"""

from __future__ import annotations

from typing import Final

# Vocabulary ids of the staged source codes. CIM10 and CCAM are Athena vocabularies (both
# non-standard; CCAM has no 'Maps to' yet, so a partner's source_to_concept_map supplies the
# mapping); CIP13 (pharmacy packs) is a local code list mapped only through
# source_to_concept_map (Athena's BDPM is keyed by the older CIP7).
VOCAB_CIM10: Final = "CIM10"
VOCAB_CCAM: Final = "CCAM"
VOCAB_CIP13: Final = "CIP13"

# Type concepts (vocabulary "Type Concept").
TYPE_CLAIM: Final = 32810  # DCIR claims, PMSI discharge abstracts, ALD registry
TYPE_DEATH_CERTIFICATE: Final = 32815  # CepiDc certificates (KI_CCI_R, KI_ECD_R)
TYPE_STANDARD_ALGORITHM: Final = 32880  # observation periods derived from the events

# Gender (BEN_SEX_COD: 1 male, 2 female; anything else is unknown, concept 0).
GENDER_MALE: Final = 8507
GENDER_FEMALE: Final = 8532

# Visits.
VISIT_INPATIENT: Final = 9201  # PMSI MCO stay of one night or more
VISIT_OUTPATIENT: Final = 9202  # DCIR claim (decompte); same-day PMSI MCO stay
VISIT_ER_AND_INPATIENT: Final = 262  # PMSI MCO stay entered through the emergency room
VISIT_PHARMACY: Final = 581458  # DCIR claim made only of pharmacy lines

# Condition status (vocabulary "Condition Status").
STATUS_PRIMARY: Final = 32902  # PMSI diagnostic principal (DP)
STATUS_SECONDARY: Final = 32908  # PMSI DR, DAS and unit-level diagnoses

# PMSI provenance code for "arrived through the emergency department" (ENT_PRV).
PMSI_PROVENANCE_EMERGENCY: Final = "5"
