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
        self._deferred_keys: set[str] = set()

    def replace_tables(self, tables: Iterable[str], *, defer_primary_keys: bool = False) -> None:
        """Drop and re-create ``tables`` empty, with the schemas they live in.

        ``defer_primary_keys``: create them without their primary keys, which
        ``add_primary_key`` adds once a table is filled (a bulk load then builds each index
        once instead of inserting every row into it); keys still missing are added before
        the commit. DuckDB checks a key added in the transaction that created its table only
        at commit, so a duplicate key then fails the commit; PostgreSQL fails the ALTER."""
        names = list(tables)
        for name in names:
            self.execute(f"DROP TABLE IF EXISTS {self.db.qualified(name)}")
        for statement in self.db.ddl(names, primary_keys=not defer_primary_keys):
            self.execute(statement)
        if defer_primary_keys:
            self._deferred_keys.update(names)

    def add_primary_key(self, table: str) -> None:
        """Add the deferred primary key of ``table`` (no-op when not deferred)."""
        if table in self._deferred_keys:
            self._deferred_keys.discard(table)
            statement = self.db.primary_key_ddl(table)
            if statement:
                self.execute(statement)

    def add_deferred_primary_keys(self) -> None:
        for table in sorted(self._deferred_keys):
            self.add_primary_key(table)

    def ensure_tables(self, tables: Iterable[str]) -> None:
        for statement in self.db.ddl(tables, if_not_exists=True):
            self.execute(statement)

    def insert_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> None:
        """Append an Arrow table whose column names are a subset of ``table``'s columns."""
        self._insert_batches(table, data.schema.names, _batches(data))

    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def insert_select(self, table: str, columns: Sequence[str], select_sql: str) -> int:
        """Append the rows of ``select_sql``, a query over the workbench, to ``table``;
        returns the number of rows appended."""

    @abstractmethod
    def _insert_batches(
        self, table: str, columns: Sequence[str], batches: Iterable[pa.RecordBatch]
    ) -> int: ...

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
    """Quoted: OMOP has a column named ``offset`` (note_nlp), a reserved word in both engines."""
    return ", ".join(c if c.startswith('"') else f'"{c}"' for c in columns)


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

    def insert_select(self, table: str, columns: Sequence[str], select_sql: str) -> int:
        rows = self.workbench.execute(
            f"INSERT INTO {self.db.qualified(table)} ({_column_list(columns)}) {select_sql}"
        ).fetchall()  # drained: DuckDB 2 refuses new work while a result is pending
        return int(rows[0][0]) if rows else 0

    def _insert_batches(
        self, table: str, columns: Sequence[str], batches: Iterable[pa.RecordBatch]
    ) -> int:
        self._serial += 1
        view = f"__ehds_arrow_{self._serial}"
        rows = 0
        for batch in batches:
            rows += batch.num_rows
            self.workbench.register(view, batch)
            try:
                self.workbench.execute(
                    f"INSERT INTO {self.db.qualified(table)} ({_column_list(columns)}) "
                    f"SELECT {_column_list(columns)} FROM {view}"
                )
            finally:
                self.workbench.unregister(view)
        return rows

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

    def insert_select(self, table: str, columns: Sequence[str], select_sql: str) -> int:
        reader = self.workbench.sql(select_sql).to_arrow_reader(_COPY_BATCH_ROWS)
        return self._insert_batches(table, columns, reader)

    def _insert_batches(
        self, table: str, columns: Sequence[str], batches: Iterable[pa.RecordBatch]
    ) -> int:
        copy_sql = (
            f"COPY {self.db.qualified(table)} ({_column_list(columns)}) "
            "FROM STDIN (FORMAT csv, HEADER false)"
        )
        # Arrow quotes every string, so "" is an empty string and an empty field is NULL.
        options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
        rows = 0
        with self.conn.cursor() as cursor, cursor.copy(copy_sql.encode()) as copy:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                rows += batch.num_rows
                buffer = io.BytesIO()
                pa_csv.write_csv(batch, buffer, write_options=options)
                copy.write(buffer.getbuffer())
        return rows

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
        try:
            yield writer
            writer.add_deferred_primary_keys()
        except BaseException:
            writer.rollback()
            raise
        # Not inside the except above: a commit that fails has already rolled back (both
        # engines), and DuckDB's "no transaction is active" would replace the real error.
        writer.commit()
    finally:
        writer.close()
