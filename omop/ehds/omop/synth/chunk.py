"""One chunk of persons, drawn and turned into Arrow tables of the CDM.

A chunk has its own random stream (a ``SeedSequence`` child spawned for its position), so its
content depends only on the run's options and the chunk's place, never on timing or on what
ran before. Identifiers continue where the previous chunk stopped: every table's ids are
1, 2, 3, ... plus the id offset, across the whole run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ehds.omop.synth.clinical_events import Events, draw_clinical_events
from ehds.omop.synth.concepts import GENDER_FEMALE, GENDER_MALE, NO_MATCHING_CONCEPT, TYPE_EHR
from ehds.omop.synth.dates import Window, date_array, year_month_day
from ehds.omop.synth.measurements import draw_measurements
from ehds.omop.synth.options import INT32_MAX, SynthConfigError
from ehds.omop.synth.periods import draw_periods
from ehds.omop.synth.persons import Ints, draw_persons
from ehds.omop.synth.profiles import CountryProfile
from ehds.omop.synth.visits import draw_visits

ID_COLUMNS: Mapping[str, str] = {
    "person": "person_id",
    "observation_period": "observation_period_id",
    "visit_occurrence": "visit_occurrence_id",
    "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id",
    "procedure_occurrence": "procedure_occurrence_id",
    "measurement": "measurement_id",
}
GENERATED_TABLES: tuple[str, ...] = (*ID_COLUMNS, "death")


@dataclass(frozen=True)
class IdCursor:
    """The next id, before the offset, of every table: 1 at the start of a run."""

    next_id: Mapping[str, int]

    @classmethod
    def start(cls) -> IdCursor:
        return cls(dict.fromkeys(ID_COLUMNS, 1))

    def advanced(self, rows: Mapping[str, int]) -> IdCursor:
        return IdCursor({t: n + rows.get(t, 0) for t, n in self.next_id.items()})


@dataclass(frozen=True)
class Chunk:
    tables: Mapping[str, pa.Table]
    females: int
    males: int

    @property
    def rows(self) -> dict[str, int]:
        return {name: table.num_rows for name, table in self.tables.items()}


def _int32(values: npt.NDArray[np.int64]) -> pa.Array:
    return pa.array(values.astype(np.int32))


def _constant(value: int, size: int) -> pa.Array:
    return pa.array(np.full(size, value, dtype=np.int32))


def _ids(table: str, size: int, cursor: IdCursor, id_offset: int) -> Ints:
    first = id_offset + cursor.next_id[table]
    if first + size - 1 > INT32_MAX:
        raise SynthConfigError(
            f"{table} ids would exceed the largest OMOP id ({INT32_MAX}): "
            f"lower --id-offset ({id_offset}) or --persons"
        )
    return np.arange(first, first + size, dtype=np.int64)


def _event_table(
    table: str,
    columns: tuple[str, str, str, str],
    events: Events,
    *,
    person_id: Ints,
    visit_id: Ints,
    cursor: IdCursor,
    id_offset: int,
) -> pa.Table:
    concept_column, start_column, end_column, type_column = columns
    size = len(events)
    data: dict[str, pa.Array] = {
        ID_COLUMNS[table]: _int32(_ids(table, size, cursor, id_offset)),
        "person_id": _int32(person_id[events.person]),
        concept_column: _int32(events.concept),
        start_column: date_array(events.start),
    }
    if end_column:
        data[end_column] = date_array(events.end, null=events.end < 0)
    data[type_column] = _constant(TYPE_EHR, size)
    no_visit = events.visit < 0
    data["visit_occurrence_id"] = pa.array(
        visit_id[np.maximum(events.visit, 0)].astype(np.int32),
        mask=no_visit if no_visit.any() else None,
    )
    if table == "drug_exposure":
        data["days_supply"] = _int32(events.days_supply)
        data["quantity"] = pa.array(events.days_supply.astype(np.float64))
    return pa.table(data)


def build_chunk(
    seed: np.random.SeedSequence,
    count: int,
    *,
    cursor: IdCursor,
    profile: CountryProfile,
    window: Window,
    id_offset: int,
) -> Chunk:
    rng = np.random.default_rng(seed)
    persons = draw_persons(rng, count, profile, window)
    periods = draw_periods(rng, persons, profile, window)
    visits = draw_visits(rng, persons, periods, profile, window)
    clinical = draw_clinical_events(rng, persons, visits)
    measured = draw_measurements(rng, persons, visits, profile)

    person_id = _ids("person", count, cursor, id_offset)
    visit_id = _ids("visit_occurrence", len(visits), cursor, id_offset)
    year, month, day = year_month_day(persons.birth)
    female = persons.female
    tables: dict[str, pa.Table] = {
        "person": pa.table(
            {
                "person_id": _int32(person_id),
                "gender_concept_id": _int32(np.where(female, GENDER_FEMALE, GENDER_MALE)),
                "year_of_birth": _int32(year),
                "month_of_birth": _int32(month),
                "day_of_birth": _int32(day),
                "race_concept_id": _constant(NO_MATCHING_CONCEPT, count),
                "ethnicity_concept_id": _constant(NO_MATCHING_CONCEPT, count),
                "gender_source_value": pa.DictionaryArray.from_arrays(
                    pa.array(female.astype(np.int8)), pa.array(["M", "F"])
                ).cast(pa.string()),
            }
        ),
        "observation_period": pa.table(
            {
                "observation_period_id": _int32(
                    _ids("observation_period", len(periods), cursor, id_offset)
                ),
                "person_id": _int32(person_id[periods.person]),
                "observation_period_start_date": date_array(periods.start),
                "observation_period_end_date": date_array(periods.end),
                "period_type_concept_id": _constant(TYPE_EHR, len(periods)),
            }
        ),
        "visit_occurrence": pa.table(
            {
                "visit_occurrence_id": _int32(visit_id),
                "person_id": _int32(person_id[visits.person]),
                "visit_concept_id": _int32(visits.concept),
                "visit_start_date": date_array(visits.start),
                "visit_end_date": date_array(visits.end),
                "visit_type_concept_id": _constant(TYPE_EHR, len(visits)),
            }
        ),
    }
    event_tables = (
        ("condition_occurrence", clinical.conditions,
         ("condition_concept_id", "condition_start_date", "condition_end_date",
          "condition_type_concept_id")),
        ("drug_exposure", clinical.drugs,
         ("drug_concept_id", "drug_exposure_start_date", "drug_exposure_end_date",
          "drug_type_concept_id")),
        ("procedure_occurrence", clinical.procedures,
         ("procedure_concept_id", "procedure_date", "", "procedure_type_concept_id")),
    )  # fmt: skip
    for table, events, columns in event_tables:
        tables[table] = _event_table(
            table,
            columns,
            events,
            person_id=person_id,
            visit_id=visit_id,
            cursor=cursor,
            id_offset=id_offset,
        )
    tables["measurement"] = pa.table(
        {
            "measurement_id": _int32(_ids("measurement", len(measured), cursor, id_offset)),
            "person_id": _int32(person_id[visits.person[measured.visit]]),
            "measurement_concept_id": _int32(measured.concept),
            "measurement_date": date_array(visits.start[measured.visit]),
            "measurement_type_concept_id": _constant(TYPE_EHR, len(measured)),
            "value_as_number": pa.array(measured.value),
            "unit_concept_id": _int32(measured.unit),
            "visit_occurrence_id": _int32(visit_id[measured.visit]),
        }
    )
    dead = np.flatnonzero(periods.dead)
    tables["death"] = pa.table(
        {
            "person_id": _int32(person_id[dead]),
            "death_date": date_array(periods.death[dead]),
            "death_type_concept_id": _constant(TYPE_EHR, len(dead)),
        }
    )
    females = int(female.sum())
    return Chunk(tables=tables, females=females, males=count - females)
