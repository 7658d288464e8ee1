"""The parameters of a `glm` study: family, population, outcome, covariates, and the round.

Why the outcome is one model checked against the family (and not three parameter models): the
population, covariates and stopping rule mean the same in every family, and a researcher who
switches from a logistic to a Poisson model changes two fields, not the shape of the study.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, Self

from pydantic import Field, model_validator

from ehds.analyses.base import AnalysisParameters
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.features import ConceptIds, Days, Features

Family = Literal["binomial", "poisson", "gaussian"]
LINKS: Final[dict[str, str]] = {"binomial": "logit", "poisson": "log", "gaussian": "identity"}
MAX_COVARIATES: Final = 30
MAX_ITERATIONS: Final = 45
"""Below `IterativeAnalysis.max_rounds` (round 0, then one round per iteration, and a spare)."""


class GlmOutcome(AnalysisParameters):
    """What is modelled, in the window ``[index + start_day, index + end_day]``.

    * binomial: ``cohort``; y = 1 if an entry starts in the window, else 0.
    * poisson: ``cohort``; y = the number of entries starting in the time at risk, which runs
      from ``index + start_day`` to the earlier of ``index + end_day`` and the end of the
      observation period holding index; offset = log(person-years at risk).
    * gaussian: ``measurement_concept_ids`` (+ ``include_descendants``); y = the latest value
      in the window (the mean of that day's values), persons without one left out.
    """

    cohort: CohortSpec | None = None
    measurement_concept_ids: ConceptIds | None = None
    include_descendants: bool = True
    start_day: Days = 1
    end_day: Days = 365

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.end_day < self.start_day:
            raise ValueError("end_day is before start_day")
        return self


class GlmRound(AnalysisParameters):
    """Set by the coordinator in rounds >= 1: the coefficients to evaluate the score at."""

    number: int = Field(ge=1)
    coefficients: list[float] = Field(min_length=1, max_length=MAX_COVARIATES + 1)


class GlmParameters(AnalysisParameters):
    family: Family
    target: CohortSpec
    outcome: GlmOutcome
    covariates: Annotated[Features, Field(max_length=MAX_COVARIATES)] = Field(default_factory=list)
    max_iterations: int = Field(default=25, ge=1, le=MAX_ITERATIONS)
    tolerance: float = Field(default=1e-10, gt=0, le=1e-2)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    round: GlmRound | None = None

    @model_validator(mode="after")
    def _outcome_fits_family(self) -> Self:
        if self.family == "gaussian":
            if self.outcome.measurement_concept_ids is None or self.outcome.cohort is not None:
                raise ValueError(
                    "a gaussian model's outcome is outcome.measurement_concept_ids (no cohort)"
                )
        elif self.outcome.cohort is None or self.outcome.measurement_concept_ids is not None:
            raise ValueError(
                f"a {self.family} model's outcome is outcome.cohort (no measurement concepts)"
            )
        if self.round is not None and len(self.round.coefficients) != self.parameter_count:
            raise ValueError("round.coefficients must hold one value per model term")
        return self

    @property
    def parameter_count(self) -> int:
        """The intercept and one term per covariate."""
        return 1 + len(self.covariates)

    @property
    def term_names(self) -> list[str]:
        return ["intercept", *(c.name for c in self.covariates)]

    def without_round(self) -> GlmParameters:
        return self.model_copy(update={"round": None})
