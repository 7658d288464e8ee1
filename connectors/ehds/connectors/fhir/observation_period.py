"""``observation_period`` from the span of each person's staged events.

A FHIR export has no enrolment periods, so, as ETL-Synthea and the FHIR-to-OMOP IG's guidance
on derived tables do, a person's observation period runs from their first to their last event
of any clinical table staged in this run. Run once after every worker has closed, with DuckDB
over the staged Parquet parts (no row goes through Python), written as one staged part.
"""

from __future__ import annotations

from typing import Final

import duckdb

from ehds.connectors.fhir.codes import EHR_TYPE_CONCEPT
from ehds.connectors.staging import StagingArea

EVENT_DATES: Final[dict[str, tuple[str, ...]]] = {
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_date", "procedure_end_date"),
    "measurement": ("measurement_date",),
    "observation": ("observation_date",),
    "device_exposure": ("device_exposure_start_date", "device_exposure_end_date"),
}
"""The date columns of each staged event table that bound an observation period."""

PERIOD_KEY_PREFIX: Final = "ObservationPeriod/"


def stage_observation_periods(area: StagingArea) -> int:
    """Stage one observation period per person with events; returns how many."""
    selects = []
    for table, columns in EVENT_DATES.items():
        parts = area.parts(table)
        if not parts:
            continue
        files = ", ".join(_quote(str(path)) for path in parts)
        for column in columns:
            selects.append(
                f"SELECT person_id__key AS person, {column} AS day "
                f"FROM read_parquet([{files}], union_by_name = true) WHERE {column} IS NOT NULL"
            )
    if not selects:
        return 0
    events = "\nUNION ALL\n".join(selects)
    query = f"""
        SELECT '{PERIOD_KEY_PREFIX}' || person AS _key,
               person AS person_id__key,
               min(day) AS observation_period_start_date,
               max(day) AS observation_period_end_date,
               CAST({EHR_TYPE_CONCEPT} AS INTEGER) AS period_type_concept_id
        FROM ({events}) AS events
        GROUP BY person
        ORDER BY person
    """
    with duckdb.connect() as connection:
        periods = connection.sql(query).to_arrow_table()
    if periods.num_rows:
        area.add_parquet("observation_period", periods, part="fhir-periods")
    return int(periods.num_rows)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
