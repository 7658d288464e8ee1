"""The YAML cohort language: what a clinician writes, validated into typed objects.

Why a language of our own on top of ATLAS JSON: an ATLAS definition is several hundred lines
of machine-oriented JSON (``Coeff: -1``, ``CodesetId: 3``, ``Occurrence.Type: 2``); a cohort a
clinician can review line by line is shorter and names its concept sets. Every construct here
compiles to one construct of OHDSI Circe (see :mod:`.compile`), so both formats share one
execution path and one meaning.

Example::

    concept_sets:
      type 2 diabetes:
        include: [{concept: 201826, descendants: true}]
      metformin:
        include: [{concept: 40163924}]
    entry:
      events: [{condition: type 2 diabetes}]
      first_occurrence: true
      prior_observation_days: 365
    inclusion:
      - name: metformin in the year before
        drug: metformin
        window: {from: -365, to: 0}
    demographics: {age: {min: 18}, sex: [female]}
    exit: {end_of_observation: true}

Validation is strict: unknown keys are errors, every error names its path
(``inclusion.0.window.from``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DOMAINS = ("condition", "drug", "procedure", "measurement", "observation", "visit")
"""The domain keys of an event, in the order an error lists them."""

Domain = Literal["condition", "drug", "procedure", "measurement", "observation", "visit"]
Sex = Literal["female", "male"]

Days = Annotated[int, Field(ge=-36_500, le=36_500)]
NonNegativeDays = Annotated[int, Field(ge=0, le=36_500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class ConceptEntry(_Strict):
    """One concept of a concept set; ``descendants`` adds every concept below it in
    ``concept_ancestor``. ``name`` is for the reader only (never checked)."""

    concept: Annotated[int, Field(gt=0)]
    descendants: bool = False
    name: str | None = None


class ConceptSetDefinition(_Strict):
    """Concepts to include, minus concepts to exclude (each with or without descendants)."""

    include: Annotated[list[ConceptEntry], Field(min_length=1)]
    exclude: list[ConceptEntry] = []


class ValueRange(_Strict):
    """``value_as_number`` bounds, both inclusive; at least one of them."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class Event(_Strict):
    """Records of one domain whose concept is in a named concept set, e.g. ``{drug: metformin}``.

    Exactly one domain key. ``value`` (measurement and observation only) keeps records whose
    ``value_as_number`` lies in the range.
    """

    condition: str | None = None
    drug: str | None = None
    procedure: str | None = None
    measurement: str | None = None
    observation: str | None = None
    visit: str | None = None
    value: ValueRange | None = None

    @model_validator(mode="after")
    def _one_domain(self) -> Self:
        given = [d for d in DOMAINS if getattr(self, d) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DOMAINS)} (found {len(given)})")
        if self.value is not None and given[0] not in ("measurement", "observation"):
            raise ValueError("value ranges apply to measurement and observation only")
        return self

    @property
    def domain(self) -> Domain:
        for name in DOMAINS:
            if getattr(self, name) is not None:
                return name  # type: ignore[return-value]
        raise AssertionError("validated: one domain is set")

    @property
    def concept_set(self) -> str:
        value: str = getattr(self, self.domain)
        return value


class Entry(_Strict):
    """Who enters the cohort and when (the index date is the entry event's start date).

    ``first_occurrence``: only each person's first-ever event of each listed kind counts (an
    incident cohort); persons whose first event lacks the required observation do not enter.
    ``events_per_person``: ``all`` (default; overlapping entries are merged) or ``first``.
    """

    events: Annotated[list[Event], Field(min_length=1)]
    first_occurrence: bool = False
    events_per_person: Literal["all", "first"] = "all"
    prior_observation_days: NonNegativeDays = 0
    post_observation_days: NonNegativeDays = 0


class Window(_Strict):
    """Days relative to the index date, both inclusive; a missing bound is unbounded
    (``{to: -1}`` = any time before the index date). The event's start date must fall in it."""

    from_: Days | None = Field(default=None, alias="from")
    to: Days | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("from is after to")
        return self


class Criterion(Event):
    """An inclusion criterion: how many ``event`` records a person needs in ``window``.

    Give at most one of ``at_least`` (default 1), ``at_most``, ``exactly`` (``exactly: 0``
    means "none"). Events outside the person's observation period at index do not count
    unless ``anytime_in_history: true``.
    """

    name: Annotated[str, Field(min_length=1)]
    window: Window = Window()
    at_least: Annotated[int, Field(ge=1)] | None = None
    at_most: Annotated[int, Field(ge=0)] | None = None
    exactly: Annotated[int, Field(ge=0)] | None = None
    anytime_in_history: bool = False

    @model_validator(mode="after")
    def _one_count(self) -> Self:
        counts = [c for c in (self.at_least, self.at_most, self.exactly) if c is not None]
        if len(counts) > 1:
            raise ValueError("give at most one of at_least, at_most, exactly")
        return self

    @property
    def occurrence(self) -> tuple[Literal["at_least", "at_most", "exactly"], int]:
        if self.at_most is not None:
            return "at_most", self.at_most
        if self.exactly is not None:
            return "exactly", self.exactly
        return "at_least", self.at_least if self.at_least is not None else 1


class AgeRange(_Strict):
    """Age in years at the index date (year of index minus year of birth), inclusive."""

    min: Annotated[int, Field(ge=0, le=150)] | None = None
    max: Annotated[int, Field(ge=0, le=150)] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class Demographics(_Strict):
    age: AgeRange | None = None
    sex: Annotated[list[Sex], Field(min_length=1)] | None = None


class Exit(_Strict):
    """When a cohort entry ends: the end of the observation period (default), or
    ``days_after_start`` days after the index date, or the first ``on_events`` event after
    the index date, whichever comes first (never after the end of observation)."""

    end_of_observation: bool = False
    days_after_start: NonNegativeDays | None = None
    on_events: list[Event] = []

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.end_of_observation and self.days_after_start is not None:
            raise ValueError("end_of_observation and days_after_start exclude each other")
        return self


class CohortDocument(_Strict):
    """A whole YAML cohort definition (see the module docstring for an example)."""

    name: str | None = None
    description: str | None = None
    concept_sets: Annotated[dict[str, ConceptSetDefinition], Field(min_length=1)]
    entry: Entry
    inclusion: list[Criterion] = []
    demographics: Demographics | None = None
    exit: Exit = Exit()

    @model_validator(mode="after")
    def _known_concept_sets(self) -> Self:
        events: list[tuple[str, Event]] = [
            *((f"entry.events.{i}", e) for i, e in enumerate(self.entry.events)),
            *((f"inclusion.{i}", c) for i, c in enumerate(self.inclusion)),
            *((f"exit.on_events.{i}", e) for i, e in enumerate(self.exit.on_events)),
        ]
        for path, event in events:
            if event.concept_set not in self.concept_sets:
                raise ValueError(
                    f"{path}.{event.domain}: unknown concept set (defined: "
                    f"{', '.join(sorted(self.concept_sets))})"
                )
        return self
