"""Where a CDM lives: a database URL plus the physical names of its three schemas.

DuckDB (one file, no server) is the embedded default; PostgreSQL is the production engine.
A bare path such as ``node.duckdb`` is accepted wherever a URL is, because that is what an
operator types.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.schema import CreateSchema, CreateTable

from ehds.core.errors import InputError
from ehds.omop.schema.layout import SchemaNames, Tier, table_tier
from ehds.omop.schema.models import metadata


class DatabaseUrlError(InputError):
    pass


class Backend(enum.StrEnum):
    DUCKDB = "duckdb"
    POSTGRESQL = "postgresql"


def parse_url(text: str) -> URL:
    """Accept ``duckdb:///file``, ``postgresql[+psycopg]://...`` or a plain DuckDB file path."""
    if "://" not in text:
        if not text.endswith((".duckdb", ".db")):
            raise DatabaseUrlError(
                f"--db {text!r}: expected a URL (duckdb:///FILE or postgresql://...) "
                "or a DuckDB file path ending in .duckdb"
            )
        return make_url(f"duckdb:///{Path(text).expanduser().resolve()}")
    try:
        url = make_url(text)
    except sa.exc.ArgumentError as exc:
        raise DatabaseUrlError(f"--db: not a database URL ({exc})") from None
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "duckdb":
        return url
    raise DatabaseUrlError(
        f"--db: unsupported engine {url.get_backend_name()!r}; use duckdb or postgresql"
    )


@dataclass(frozen=True)
class CdmDatabase:
    """A CDM location. Cheap to create; engines are made on demand and disposed by callers."""

    url: URL
    schemas: SchemaNames = field(default_factory=SchemaNames)

    def __post_init__(self) -> None:
        if self.backend is Backend.DUCKDB and self.url.database:
            stem = Path(self.url.database).stem
            if stem in (self.schemas.cdm, self.schemas.vocab, self.schemas.results):
                raise DatabaseUrlError(
                    f"DuckDB file {Path(self.url.database).name!r}: DuckDB names a database "
                    f"after its file, which would clash with schema {stem!r}; "
                    "choose another file name"
                )

    @classmethod
    def parse(cls, text: str, schemas: SchemaNames | None = None) -> CdmDatabase:
        return cls(parse_url(text), schemas or SchemaNames())

    @property
    def backend(self) -> Backend:
        return Backend(self.url.get_backend_name())

    @property
    def duckdb_path(self) -> Path:
        if self.backend is not Backend.DUCKDB or not self.url.database:
            raise DatabaseUrlError("a DuckDB file path is needed here (not :memory:)")
        return Path(self.url.database)

    @property
    def libpq_conninfo(self) -> str:
        """The URL as psycopg wants it (no SQLAlchemy driver suffix)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def describe(self) -> str:
        """The URL with the password hidden: safe to print and to log."""
        return self.url.render_as_string(hide_password=True)

    def engine(self, *, read_only: bool = False) -> sa.Engine:
        """A SQLAlchemy engine whose models' logical schemas map to this database's names."""
        connect_args: dict[str, object] = {}
        if self.backend is Backend.DUCKDB and read_only:
            connect_args["read_only"] = True
        engine = sa.create_engine(self.url, connect_args=connect_args)
        return engine.execution_options(schema_translate_map=self.schemas.translate_map())

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[sa.Connection]:
        """A connection whose engine is disposed on exit: DuckDB allows one configuration per
        open file in a process, so no pooled connection may outlive its use."""
        engine = self.engine(read_only=read_only)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()

    @cached_property
    def physical_metadata(self) -> sa.MetaData:
        """The models' tables re-homed under the physical schema names: for DDL and for
        Core queries issued outside an engine with a translate map (bulk paths)."""
        physical = sa.MetaData()
        for table in metadata.sorted_tables:
            tier = table_tier(table.name)
            table.to_metadata(physical, schema=self.schemas.physical(tier))
        return physical

    def table(self, name: str) -> sa.Table:
        tier = table_tier(name)
        return self.physical_metadata.tables[f"{self.schemas.physical(tier)}.{name}"]

    def qualified(self, name: str) -> str:
        """``schema.table`` for hand-written SQL (names are validated identifiers)."""
        return f"{self.schemas.physical(table_tier(name))}.{name}"

    def ddl(
        self, tables: Iterable[str], *, if_not_exists: bool = False, primary_keys: bool = True
    ) -> list[str]:
        """CREATE SCHEMA and CREATE TABLE statements for ``tables``, compiled for this engine.

        ``primary_keys=False`` leaves the keys out (NOT NULL stays), for bulk loads that add
        them once the rows are in (``primary_key_ddl``): one index build is much cheaper than
        one index insert per row, in both engines."""
        dialect = self.engine().dialect
        names = list(tables)
        tiers = sorted({table_tier(n) for n in names})
        statements = [
            str(CreateSchema(self.schemas.physical(t), if_not_exists=True).compile(dialect=dialect))
            for t in tiers
        ]
        for name in names:
            table = self.table(name) if primary_keys else _without_primary_key(self.table(name))
            create = CreateTable(table, if_not_exists=if_not_exists)
            statements.append(str(create.compile(dialect=dialect)))
        return statements

    def primary_key_ddl(self, name: str) -> str | None:
        """``ALTER TABLE ... ADD PRIMARY KEY (...)``, or None for a table without a key. Both
        engines give the key the name an inline PRIMARY KEY gets, so the result is the
        schema ``ddl`` creates."""
        columns = [c.name for c in self.table(name).primary_key.columns]
        if not columns:
            return None
        quoted = ", ".join(f'"{c}"' for c in columns)
        return f"ALTER TABLE {self.qualified(name)} ADD PRIMARY KEY ({quoted})"


def _without_primary_key(table: sa.Table) -> sa.Table:
    columns = [sa.Column(c.name, c.type, nullable=c.nullable) for c in table.columns]
    return sa.Table(table.name, sa.MetaData(), *columns, schema=table.schema)


def tables_of(tiers: Iterable[Tier]) -> list[str]:
    wanted = set(tiers)
    return [t.name for t in metadata.sorted_tables if table_tier(t.name) in wanted]
