"""Survival times and their interval counts, as Ibis expressions (node side, all engines).

Definitions (the tests' independent SQL reference follows these words):

* index date: the start of the person's first ``target`` entry; a person whose index date lies
  in no observation period is not in the population;
* follow-up ends at the end of the observation period holding the index date, or ``max_days``
  after the index date, whichever comes first;
* event: the person's first ``outcome`` entry starting on or after the index date, if it starts
  no later than the end of follow-up; time = days from the index date to the event (0 on the
  index date itself), else to the end of follow-up (censored);
* strata: sex (OMOP's female/male concepts, the rest pooled) or the age band at the index date
  (``year(index) - year_of_birth``).

Nothing here brings a row into Python: the counts are grouped in the engine, one row per
stratum and interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from ehds.analyses.engine import IbisCdm
from ehds.analyses.person_time import (
    age_band_label,
    index_dates,
    observed_at_index,
    sex_label,
)
from ehds.analyses.survival.parameters import OVERALL, KaplanMeierParameters


def survival_times(
    engine: IbisCdm, params: KaplanMeierParameters, target: ir.Table, outcome: ir.Table
) -> ir.Table:
    """``person_id, stratum, duration, event`` (event 1/0): one row per person."""
    observed = observed_at_index(engine, index_dates(target))
    persons = observed.select(
        person_id=observed.person_id,
        index_date=observed.index_date,
        followed=ibis.least(
            observed.op_end.delta(observed.index_date, unit="day"), ibis.literal(params.max_days)
        ),
    )
    entries = outcome.select(
        o_person=outcome.person_id.cast("int64"), o_date=outcome.cohort_start_date
    )
    joined = persons.left_join(
        entries,
        [persons.person_id == entries.o_person, entries.o_date >= persons.index_date],
    )
    with_event = joined.group_by(["person_id", "index_date", "followed"]).agg(
        event_date=joined.o_date.min()
    )
    event_day = with_event.event_date.delta(with_event.index_date, unit="day")
    happened = with_event.event_date.notnull() & (event_day <= with_event.followed)
    times = with_event.select(
        person_id=with_event.person_id,
        index_date=with_event.index_date,
        duration=ibis.ifelse(happened, event_day, with_event.followed).cast("int64"),
        event=ibis.ifelse(happened, 1, 0),
    )
    return _with_stratum(engine, params, times).drop("index_date")


def _with_stratum(engine: IbisCdm, params: KaplanMeierParameters, times: ir.Table) -> ir.Table:
    if params.strata == "none":
        return times.mutate(stratum=ibis.literal(OVERALL))
    person = engine.table("person")
    people = person.select(
        p_person_id=person.person_id.cast("int64"),
        gender_concept_id=person.gender_concept_id,
        year_of_birth=person.year_of_birth.cast("int64"),
    )
    joined = times.join(people, times.person_id == people.p_person_id)
    if params.strata == "sex":
        stratum = sex_label(joined.gender_concept_id)
    else:
        age = joined.index_date.year().cast("int64") - joined.year_of_birth
        stratum = age_band_label(age, params.age_band_edges)
    return joined.select("person_id", "index_date", "duration", "event", stratum=stratum)


def interval_buckets(times: ir.Table, cuts: Sequence[int], max_days: int) -> ir.Table:
    """``stratum, bucket, persons, events``: bucket ``k`` (1-based) counts the persons whose
    time lies in ``(cuts[k-2], cuts[k-1]]`` (bucket 1: ``[0, cuts[0]]``); bucket
    ``len(cuts) + 1`` those beyond the last cut. The bounds are a literal table joined by
    range."""
    lows = [-1, *cuts]
    highs = [*cuts, max_days]
    bounds = ibis.memtable(
        pa.table(
            {
                "bucket": pa.array(range(1, len(lows) + 1), pa.int64()),
                "low": pa.array(lows, pa.int64()),
                "high": pa.array(highs, pa.int64()),
            }
        )
    )
    joined = times.join(bounds, [times.duration > bounds.low, times.duration <= bounds.high])
    return joined.group_by(["stratum", "bucket"]).agg(
        persons=joined.count(), events=joined.event.sum()
    )
