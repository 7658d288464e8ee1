"""observation_period: one period per person, from the earliest to the latest date of that
person's mapped events (visits, conditions, drugs, procedures, death).

SNDS has no enrolment table in this connector's scope; every French resident is covered by
the national health insurance, so the span of observed care is the honest period. A person
with no mapped event gets no period.
"""

from __future__ import annotations

import duckdb

from ehds.connectors.snds import concepts as c

_EVENTS = (
    ("visit_occurrence", "visit_start_date", "visit_end_date"),
    ("condition_occurrence", "condition_start_date", "condition_end_date"),
    ("drug_exposure", "drug_exposure_start_date", "drug_exposure_end_date"),
    ("procedure_occurrence", "procedure_date", "procedure_date"),
    ("death", "death_date", "death_date"),
)


def map_observation_periods(con: duckdb.DuckDBPyConnection) -> None:
    staged = [
        str(row[0])
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'stage\\_\\_%' "
            "ESCAPE '\\' ORDER BY table_name"
        ).fetchall()
    ]
    selects = []
    for table, start, end in _EVENTS:
        for name in staged:
            if name.startswith(f"stage__{table}__"):
                selects.append(
                    f"SELECT person_id__key AS pkey, {start} AS start_d, "
                    f"coalesce({end}, {start}) AS end_d FROM {name}"
                )
    if not selects:
        return
    con.execute(f"""
        CREATE TABLE stage__observation_period__snds AS
        WITH events AS ({" UNION ALL ".join(selects)})
        SELECT 'observation_period/' || pkey AS _key, 'derived from mapped events' AS _source,
               pkey AS person_id__key,
               min(least(start_d, end_d)) AS observation_period_start_date,
               max(greatest(start_d, end_d)) AS observation_period_end_date,
               CAST({c.TYPE_STANDARD_ALGORITHM} AS INTEGER) AS period_type_concept_id
        FROM events
        WHERE pkey IN (SELECT _key FROM stage__person__ir_ben_r) AND start_d IS NOT NULL
        GROUP BY pkey
    """)
