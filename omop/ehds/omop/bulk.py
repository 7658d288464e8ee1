"""Bulk writes into a CDM database, inside one transaction.

Every bulk operation (loading a CDM, loading a vocabulary, generating a synthetic CDM) runs in
a single transaction on the target: both engines have transactional DDL, so readers keep
seeing the old tables until commit, and a failure anywhere leaves the database exactly as it
was. This is the "staging then atomic swap" of the foundation issue, done by the engine's MVCC.

Sources are always read by DuckDB (CSV, Parquet, zip contents, other DuckDB files): the
``workbench`` connection. For a DuckDB target the workbench *is* the target connection, so data
moves ``INSERT ... SELECT`` inside the engine; for PostgreSQL the workbench is an in-memory
DuckDB and rows stream to the server through ``COPY ... FROM STDIN``. No row passes through
Python objects on either path.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv

from ehds.core.errors import StateError
from ehds.omop.database import Backend, CdmDatabase

_COPY_BATCH_ROWS = 200_000


class TargetBusyError(StateError):
    pass


class BulkWriter(ABC):
    """A transaction on a CDM database with bulk insert paths."""

    def __init__(self, db: CdmDatabase, workbench: duckdb.DuckDBPyConnection) -> None:
        self.db = db
        self.workbench = workbench

    def replace_tables(self, tables: Iterable[str]) -> None:
        """Drop and re-create ``tables`` empty, with the schemas they live in."""
        names = list(tables)
        for name in names:
            self.execute(f"DROP TABLE IF EXISTS {self.db.qualified(name)}")
        for statement in self.db.ddl(names):
            self.execute(statement)

    def ensure_tables(self, tables: Iterable[str]) -> None:
        for statement in self.db.ddl(tables, if_not_exists=True):
            self.execute(statement)

    def insert_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> None:
        """Append an Arrow table whose column names are a subset of ``table``'s columns."""
        self._insert_batches(table, data.schema.names, _batches(data))

    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def insert_select(self, table: str, columns: Sequence[str], select_sql: str) -> None:
        """Append the rows of ``select_sql``, a query over the workbench, to ``table``."""

    @abstractmethod
    def _insert_batches(
        self, table: str, columns: Sequence[str], batches: Iterable[pa.RecordBatch]
    ) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


def _batches(data: pa.Table | pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        yield from data.to_batches(max_chunksize=_COPY_BATCH_ROWS)
    else:
        yield from data


def _column_list(columns: Sequence[str]) -> str:
    return ", ".join(columns)


class DuckDbWriter(BulkWriter):
    def __init__(self, db: CdmDatabase, memory_limit: str | None) -> None:
        path = db.duckdb_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            raise TargetBusyError(
                f"cannot open {path} for writing: another process holds it ({type(exc).__name__})"
            ) from None
        if memory_limit:
            conn.execute(f"SET memory_limit = '{memory_limit}'")
        conn.execute("SET preserve_insertion_order = false")
        conn.begin()
        super().__init__(db, conn)
        self._serial = 0

    def execute(self, sql: str) -> None:
        self.workbench.execute(sql)

    def insert_select(self, table: str, columns: Sequence[str], select_sql: str) -> None:
        self.workbench.execute(
            f"INSERT INTO {self.db.qualified(table)} ({_column_list(columns)}) {select_sql}"
        )

    def _insert_batches(
        self, table: str, columns: Sequence[str], batches: Iterable[pa.RecordBatch]
    ) -> None:
        self._serial += 1
        view = f"__ehds_arrow_{self._serial}"
        for batch in batches:
            self.workbench.register(view, batch)
            try:
                self.workbench.execute(
                    f"INSERT INTO {self.db.qualified(table)} ({_column_list(columns)}) "
                    f"SELECT {_column_list(columns)} FROM {view}"
                )
            finally:
                self.workbench.unregister(view)

    def commit(self) -> None:
        self.workbench.commit()

    def rollback(self) -> None:
        self.workbench.rollback()

    def close(self) -> None:
        self.workbench.close()


class PostgresWriter(BulkWriter):
    def __init__(self, db: CdmDatabase, memory_limit: str | None) -> None:
        workbench = duckdb.connect()
        if memory_limit:
            workbench.execute(f"SET memory_limit = '{memory_limit}'")
        super().__init__(db, workbench)
        self.conn = psycopg.connect(db.libpq_conninfo, autocommit=False)

    def execute(self, sql: str) -> None:
        self.conn.execute(sql.encode())

    def insert_select(self, table: str, columns: Sequence[str], select_sql: str) -> None:
        reader = self.workbench.sql(select_sql).to_arrow_reader(_COPY_BATCH_ROWS)
        self._insert_batches(table, columns, reader)

    def _insert_batches(
        self, table: str, columns: Sequence[str], batches: Iterable[pa.RecordBatch]
    ) -> None:
        copy_sql = (
            f"COPY {self.db.qualified(table)} ({_column_list(columns)}) "
            "FROM STDIN (FORMAT csv, HEADER false)"
        )
        # Arrow quotes every string, so "" is an empty string and an empty field is NULL.
        options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
        with self.conn.cursor() as cursor, cursor.copy(copy_sql.encode()) as copy:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                buffer = io.BytesIO()
                pa_csv.write_csv(batch, buffer, write_options=options)
                copy.write(buffer.getbuffer())

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()
        self.workbench.close()


@contextmanager
def bulk_writer(db: CdmDatabase, *, memory_limit: str | None = None) -> Iterator[BulkWriter]:
    """Open a transaction on ``db``; commit when the block succeeds, roll back otherwise."""
    writer: BulkWriter
    if db.backend is Backend.DUCKDB:
        writer = DuckDbWriter(db, memory_limit)
    else:
        writer = PostgresWriter(db, memory_limit)
    try:
        yield writer
        writer.commit()
    except BaseException:
        writer.rollback()
        raise
    finally:
        writer.close()
