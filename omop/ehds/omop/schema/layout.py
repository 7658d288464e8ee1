"""Where each CDM table lives: the three schemas of a real installation.

Models carry the logical schema names ``cdm``, ``vocab`` and ``results``; a deployment maps
them to its own names through :class:`SchemaNames`, applied with SQLAlchemy's
``schema_translate_map`` so that one set of models serves every installation.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Tier(enum.StrEnum):
    CDM = "cdm"
    VOCAB = "vocab"
    RESULTS = "results"


@dataclass(frozen=True)
class SchemaNames:
    """Physical schema names; the node opens ``cdm`` and ``vocab`` read-only and writes
    only to ``results``."""

    cdm: str = "cdm"
    vocab: str = "vocab"
    results: str = "results"

    def __post_init__(self) -> None:
        names = (self.cdm, self.vocab, self.results)
        for name in names:
            if not _IDENTIFIER.match(name):
                raise ValueError(
                    f"schema name {name!r} must be a lower-case SQL identifier "
                    "(letters, digits, underscore; not starting with a digit)"
                )
        if len(set(names)) != 3:
            raise ValueError(f"cdm, vocab and results schemas must differ, got {names}")

    def physical(self, tier: Tier) -> str:
        return str(getattr(self, tier.value))

    def translate_map(self) -> dict[str | None, str | None]:
        return {tier.value: self.physical(tier) for tier in Tier}


VOCAB_TABLES: tuple[str, ...] = (
    "concept",
    "vocabulary",
    "domain",
    "concept_class",
    "concept_relationship",
    "relationship",
    "concept_synonym",
    "concept_ancestor",
    "source_to_concept_map",
    "drug_strength",
)
RESULTS_TABLES: tuple[str, ...] = ("cohort", "cohort_definition")
CDM_TABLES: tuple[str, ...] = (
    "person",
    "observation_period",
    "visit_occurrence",
    "visit_detail",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
    "death",
    "note",
    "note_nlp",
    "specimen",
    "fact_relationship",
    "location",
    "care_site",
    "provider",
    "payer_plan_period",
    "cost",
    "drug_era",
    "dose_era",
    "condition_era",
    "episode",
    "episode_event",
    "metadata",
    "cdm_source",
)


def table_tier(table: str) -> Tier:
    if table in VOCAB_TABLES:
        return Tier.VOCAB
    if table in RESULTS_TABLES:
        return Tier.RESULTS
    if table in CDM_TABLES:
        return Tier.CDM
    raise KeyError(f"{table!r} is not an OMOP CDM v5.4 table")
