"""The ``etl`` schema of a target database (not an OMOP schema), and moving rows between
the DuckDB workbench and the target inside the commit's one transaction.

``etl.id_map`` keeps the id of every source key ever committed, so a key keeps its id across
runs; ``etl.quarantine`` holds rejected records with the run id; ``etl.run`` one row per run.
For a DuckDB target the workbench *is* the target connection; for PostgreSQL rows cross by
``COPY`` (out of the workbench) and by plain queries (into it: only the rows a run needs).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv

from ehds.omop.bulk import BulkWriter, PostgresWriter

ETL_SCHEMA = "etl"
ID_MAP = f"{ETL_SCHEMA}.id_map"
QUARANTINE = f"{ETL_SCHEMA}.quarantine"
RUN = f"{ETL_SCHEMA}.run"

QUARANTINE_COLUMNS = (
    "run_id",
    "omop_table",
    "source",
    "location",
    "record_type",
    "record_key",
    "reason",
    "detail",
    "record",
)
_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {ETL_SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {ID_MAP} (table_name VARCHAR NOT NULL, "
    "source_key VARCHAR NOT NULL, id BIGINT NOT NULL, run_id BIGINT NOT NULL, "
    "PRIMARY KEY (table_name, source_key))",
    f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (run_id BIGINT NOT NULL, omop_table VARCHAR, "
    "source VARCHAR, location VARCHAR, record_type VARCHAR, record_key VARCHAR, "
    "reason VARCHAR NOT NULL, detail VARCHAR, record VARCHAR)",
    f"CREATE TABLE IF NOT EXISTS {RUN} (run_id BIGINT PRIMARY KEY, connector VARCHAR NOT NULL, "
    "source VARCHAR, mode VARCHAR NOT NULL, started TIMESTAMP NOT NULL, "
    "finished TIMESTAMP NOT NULL, counts VARCHAR)",
)
ID_MAP_SCHEMA = pa.schema(
    [("table_name", pa.string()), ("source_key", pa.string()), ("id", pa.int64())]
)


class EtlStore:
    """The target side of a commit, through an open ``BulkWriter``."""

    def __init__(self, writer: BulkWriter) -> None:
        self.writer = writer
        self.workbench = writer.workbench
        self.postgres = writer if isinstance(writer, PostgresWriter) else None

    def create(self) -> None:
        for statement in _DDL:
            self.writer.execute(statement)

    def scalar(self, sql: str, params: Sequence[object] = ()) -> object:
        """One value of a query on the target."""
        if self.postgres is not None:
            row = self.postgres.conn.execute(sql.encode(), list(params)).fetchone()
        else:
            rows = self.workbench.execute(sql, list(params)).fetchall()
            row = rows[0] if rows else None
        return None if row is None else row[0]

    def fetch(self, name: str, sql: str, schema: pa.Schema | None = None) -> None:
        """Make temp table ``name`` in the workbench from ``sql`` run on the target."""
        if self.postgres is None:
            self.workbench.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
            return
        with self.postgres.conn.cursor() as cursor:
            cursor.execute(sql.encode())
            columns = [d.name for d in cursor.description or ()]
            rows = cursor.fetchall()
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        table = pa.table(data, schema=schema) if schema is not None else pa.table(data)
        self.workbench.register("__etl_fetched", table)
        try:
            self.workbench.execute(
                f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM __etl_fetched"
            )
        finally:
            self.workbench.unregister("__etl_fetched")

    def push(self, qualified: str, columns: Sequence[str], select_sql: str) -> int:
        """Append the rows of ``select_sql`` (a workbench query) to target table
        ``qualified`` (an ``etl.*`` table or a temp table of the target)."""
        column_list = ", ".join(f'"{c}"' for c in columns)
        if self.postgres is None:
            rows = self.workbench.execute(
                f"INSERT INTO {qualified} ({column_list}) {select_sql}"
            ).fetchall()
            return int(rows[0][0]) if rows else 0
        reader = self.workbench.sql(select_sql).to_arrow_reader(100_000)
        options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
        copy_sql = f"COPY {qualified} ({column_list}) FROM STDIN (FORMAT csv, HEADER false)"
        written = 0
        with self.postgres.conn.cursor() as cursor, cursor.copy(copy_sql.encode()) as copy:
            for batch in reader:
                if batch.num_rows:
                    written += batch.num_rows
                    buffer = io.BytesIO()
                    pa_csv.write_csv(batch, buffer, write_options=options)
                    copy.write(buffer.getbuffer())
        return written

    def delete_ids(self, qualified: str, column: str, ids_sql: str) -> None:
        """Delete the rows of target table ``qualified`` whose ``column`` is among the ids of
        ``ids_sql`` (a one-column workbench query)."""
        if self.postgres is None:
            self.workbench.execute(
                f'DELETE FROM {qualified} WHERE "{column}" IN (SELECT * FROM ({ids_sql}))'
            )
            return
        ids = [int(row[0]) for row in self.workbench.execute(ids_sql).fetchall()]
        if ids:
            self.postgres.conn.execute(
                f'DELETE FROM {qualified} WHERE "{column}" = ANY(%s)'.encode(), [ids]
            )
