"""Person-level features relative to an index date, as Ibis expressions (all three engines).

Why a module of its own: a regression (``glm``) and, later, federated learning need the same
covariates defined the same way (age at index, sex, "a condition in the year before index", "the
latest HbA1c before index"), and a reader comparing two models must be able to trust that a
feature of the same definition is the same column. Everything here is an Ibis expression
compiled by the node's engine; nothing brings a row into Python.

Definitions (the tests' independent SQL reference follows these words):

* ``age``: ``year(index) - year_of_birth`` (OMOP often holds no birth day), divided by
  ``per_years`` (10 gives "per decade").
* ``sex``: 1 for OMOP's FEMALE concept (8532), 0 for every other gender concept.
* ``condition`` / ``drug``: with ``aggregate: any`` (the default), 1 if the person has an
  occurrence (``condition_start_date`` / ``drug_exposure_start_date``) of the concept set in
  ``[index + start_day, index + end_day]`` (both included), else 0; with ``aggregate: count``,
  the number of such occurrence rows (0 for none).
* ``measurement``: the latest ``value_as_number`` (not null) of the concept set measured in
  that window; several values on that latest day are averaged. A person without one has no
  value, and is dropped (complete-case analysis): a missing laboratory value is not a zero.
* A concept set is ``concept_ids`` plus, with ``include_descendants``, every descendant in
  ``concept_ancestor``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Final, Literal, Self

import ibis
import ibis.expr.types as ir
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ehds.analyses.engine import IbisCdm
from ehds.analyses.person_time import add_days

FEMALE_CONCEPT_ID: Final = 8532
MAX_DAYS: Final = 36_500
NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_NAMES: Final = frozenset({"intercept"})
"""Names a feature may not take (the model's own terms)."""

Days = Annotated[int, Field(ge=-MAX_DAYS, le=MAX_DAYS)]
ConceptIds = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1, max_length=1000)]


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or len(name) > 40:
        raise ValueError("a feature name is [a-z][a-z0-9_]* (at most 40 characters)")
    if name in RESERVED_NAMES:
        raise ValueError(f"a feature may not be called {name!r}")
    return name


FeatureName = Annotated[str, AfterValidator(_check_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ConceptWindow(_Model):
    """A concept set and a window of days relative to index (both ends included)."""

    concept_ids: ConceptIds
    include_descendants: bool = True
    start_day: Days
    end_day: Days

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end_day < self.start_day:
            raise ValueError("end_day is before start_day")
        return self


class AgeFeature(_Model):
    kind: Literal["age"]
    name: FeatureName
    per_years: float = Field(default=1.0, gt=0, le=100)


class SexFeature(_Model):
    kind: Literal["sex"]
    name: FeatureName


Aggregate = Literal["any", "count"]


class ConditionFeature(ConceptWindow):
    kind: Literal["condition"]
    name: FeatureName
    aggregate: Aggregate = "any"


class DrugFeature(ConceptWindow):
    kind: Literal["drug"]
    name: FeatureName
    aggregate: Aggregate = "any"


class MeasurementFeature(ConceptWindow):
    kind: Literal["measurement"]
    name: FeatureName


Feature = Annotated[
    AgeFeature | SexFeature | ConditionFeature | DrugFeature | MeasurementFeature,
    Field(discriminator="kind"),
]


def check_unique_names(features: list[Feature]) -> list[Feature]:
    """For an ``AfterValidator`` on a list of features: every name once."""
    seen: set[str] = set()
    for feature in features:
        if feature.name in seen:
            raise ValueError(f"feature name {feature.name!r} is used twice")
        seen.add(feature.name)
    return features


Features = Annotated[list[Feature], AfterValidator(check_unique_names)]

_EVENTS: Final = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
}


# --------------------------------------------------------------------------- expressions


def in_concept_set(
    engine: IbisCdm, column: ir.IntegerColumn, concept_ids: Sequence[int], descendants: bool
) -> ir.BooleanColumn:
    """``column`` is one of ``concept_ids`` (or, with ``descendants``, below one of them)."""
    ids = list(concept_ids)
    condition: ir.BooleanColumn = column.isin(ids)
    if descendants:
        ca = engine.table("concept_ancestor")
        below = ca.filter(ca.ancestor_concept_id.isin(ids)).select(
            concept_id=ca.descendant_concept_id
        )
        condition = condition | column.isin(below.concept_id)
    return condition


def events_in_window(
    engine: IbisCdm, index: ir.Table, domain: str, window: ConceptWindow
) -> ir.Table:
    """``person_id, event_date, value`` (value only meaningful for measurements): the events
    of ``window``'s concept set in its window around each person's index date."""
    table_name, concept_column, date_column = _EVENTS[domain]
    events = engine.table(table_name)
    events = events.filter(
        in_concept_set(
            engine, events[concept_column], window.concept_ids, window.include_descendants
        )
    )
    value = (
        events.value_as_number.cast("float64")
        if domain == "measurement"
        else ibis.literal(None, type="float64")
    )
    if domain == "measurement":
        events = events.filter(events.value_as_number.notnull())
    events = events.select(
        e_person_id=events.person_id.cast("int64"), event_date=events[date_column], value=value
    )
    people = index.select(i_person_id=index.person_id, i_date=index.index_date)
    joined = people.join(
        events,
        [
            people.i_person_id == events.e_person_id,
            events.event_date >= add_days(people.i_date, window.start_day),
            events.event_date <= add_days(people.i_date, window.end_day),
        ],
    )
    return joined.select(
        person_id=joined.i_person_id, event_date=joined.event_date, value=joined.value
    )


def latest_value(engine: IbisCdm, index: ir.Table, window: ConceptWindow) -> ir.Table:
    """``person_id, value``: each person's latest measurement value in the window (the mean of
    the values of that day); persons without one are absent."""
    events = events_in_window(engine, index, "measurement", window)
    latest = events.group_by("person_id").agg(last_date=events.event_date.max())
    latest = latest.rename(l_person_id="person_id")
    on_day = events.join(
        latest,
        [events.person_id == latest.l_person_id, events.event_date == latest.last_date],
    )
    return on_day.group_by("person_id").agg(value=on_day.value.mean())


def occurred(engine: IbisCdm, index: ir.Table, domain: str, window: ConceptWindow) -> ir.Table:
    """``person_id``: the persons with an event of the concept set in the window."""
    return events_in_window(engine, index, domain, window).select("person_id").distinct()


def occurrences(engine: IbisCdm, index: ir.Table, domain: str, window: ConceptWindow) -> ir.Table:
    """``person_id, n``: each person's number of events of the concept set in the window
    (persons with none are absent)."""
    events = events_in_window(engine, index, domain, window)
    return events.group_by("person_id").agg(n=events.count())


def with_features(
    engine: IbisCdm, index: ir.Table, features: Sequence[Feature], *, prefix: str = "x_"
) -> ir.Table:
    """``index`` (``person_id`` int64, ``index_date`` date, other columns kept) plus one
    float64 column ``prefix + name`` per feature; persons missing a measurement feature are
    dropped (complete case)."""
    table = index
    if any(isinstance(f, AgeFeature | SexFeature) for f in features):
        person = engine.table("person")
        people = person.select(
            p_person_id=person.person_id.cast("int64"),
            p_year_of_birth=person.year_of_birth.cast("int64"),
            p_gender=person.gender_concept_id.cast("int64"),
        )
        table = table.join(people, table.person_id == people.p_person_id)
    for feature in features:
        column = prefix + feature.name
        if isinstance(feature, AgeFeature):
            age = table.index_date.year().cast("int64") - table.p_year_of_birth
            table = table.mutate(**{column: age.cast("float64") / feature.per_years})
        elif isinstance(feature, SexFeature):
            table = table.mutate(
                **{column: ibis.ifelse(table.p_gender == FEMALE_CONCEPT_ID, 1.0, 0.0)}
            )
        elif isinstance(feature, MeasurementFeature):
            values = latest_value(engine, index, feature).rename(f_person_id="person_id")
            joined = table.join(values, table.person_id == values.f_person_id)
            table = joined.mutate(**{column: joined.value}).drop("f_person_id", "value")
        elif feature.aggregate == "count":
            counts = occurrences(engine, index, feature.kind, feature).rename(
                f_person_id="person_id", f_n="n"
            )
            joined = table.left_join(counts, table.person_id == counts.f_person_id)
            value = joined.f_n.cast("float64").fill_null(0.0)
            table = joined.mutate(**{column: value}).drop("f_person_id", "f_n")
        else:
            hits = occurred(engine, index, feature.kind, feature).rename(f_person_id="person_id")
            joined = table.left_join(hits, table.person_id == hits.f_person_id)
            flag = ibis.ifelse(joined.f_person_id.notnull(), 1.0, 0.0)
            table = joined.mutate(**{column: flag}).drop("f_person_id")
    extra = [c for c in ("p_person_id", "p_year_of_birth", "p_gender") if c in table.columns]
    return table.drop(*extra) if extra else table


__all__ = [
    "AgeFeature",
    "Aggregate",
    "ConceptIds",
    "ConceptWindow",
    "ConditionFeature",
    "Days",
    "DrugFeature",
    "Feature",
    "Features",
    "MeasurementFeature",
    "SexFeature",
    "check_unique_names",
    "events_in_window",
    "in_concept_set",
    "latest_value",
    "occurred",
    "occurrences",
    "with_features",
]
