"""Compare a live database's CDM schema with the official specification.

The schema is reflected through ``information_schema`` (SQL standard; implemented by DuckDB and
PostgreSQL alike), never from our own Python models: the point is to prove what the database
really holds. Differences not excused by ``deviations.yaml`` are reported.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import yaml

from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.schema.layout import table_tier
from ehds.omop.schema.spec import FieldType, TableSpec

DEVIATIONS_FILE = Path(__file__).with_name("deviations.yaml")

# information_schema.columns.data_type, per engine, for each spec datatype kind.
_EXPECTED_TYPES = {
    Backend.POSTGRESQL: {
        "integer": "integer",
        "float": "double precision",
        "date": "date",
        "datetime": "timestamp without time zone",
        "varchar": "character varying",
        "varchar(max)": "text",
    },
    Backend.DUCKDB: {
        "integer": "INTEGER",
        "float": "DOUBLE",
        "date": "DATE",
        "datetime": "TIMESTAMP",
        "varchar": "VARCHAR",
        "varchar(max)": "VARCHAR",
    },
}


@dataclass(frozen=True)
class ReflectedColumn:
    name: str
    data_type: str
    max_length: int | None
    nullable: bool
    primary_key: bool


@dataclass(frozen=True)
class Difference:
    table: str
    field: str
    aspect: str
    detail: str

    def __str__(self) -> str:
        return f"{self.table}.{self.field} [{self.aspect}]: {self.detail}"


@dataclass(frozen=True)
class Deviation:
    engine: str
    table: str
    field: str
    aspect: str
    reason: str

    def excuses(self, backend: Backend, diff: Difference) -> bool:
        return (
            fnmatch.fnmatchcase(backend.value, self.engine)
            and fnmatch.fnmatchcase(diff.table, self.table)
            and fnmatch.fnmatchcase(diff.field, self.field)
            and self.aspect == diff.aspect
        )


def load_deviations(path: Path = DEVIATIONS_FILE) -> list[Deviation]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = raw.get("deviations") or []
    deviations = []
    for index, entry in enumerate(entries):
        reason = str(entry.get("reason", "")).strip()
        if not reason:
            raise ValueError(f"{path.name}: deviations[{index}] has no reason")
        deviations.append(
            Deviation(
                engine=str(entry["engine"]),
                table=str(entry["table"]),
                field=str(entry["field"]),
                aspect=str(entry["aspect"]),
                reason=reason,
            )
        )
    return deviations


_COLUMNS_SQL = sa.text(
    "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable "
    "FROM information_schema.columns WHERE table_schema = :schema "
    "ORDER BY table_name, ordinal_position"
)
_PK_SQL = sa.text(
    "SELECT kcu.table_name, kcu.column_name "
    "FROM information_schema.table_constraints tc "
    "JOIN information_schema.key_column_usage kcu "
    "  ON kcu.constraint_name = tc.constraint_name "
    " AND kcu.constraint_schema = tc.constraint_schema "
    " AND kcu.table_name = tc.table_name "
    "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = :schema"
)


def reflect(db: CdmDatabase, tables: list[str]) -> dict[str, list[ReflectedColumn]]:
    """The columns of ``tables`` as the live database describes them."""
    schemas = {db.schemas.physical(table_tier(t)) for t in tables}
    found: dict[str, list[ReflectedColumn]] = {}
    with db.connect() as conn:
        for schema in sorted(schemas):
            pk = {
                (row.table_name, row.column_name)
                for row in conn.execute(_PK_SQL, {"schema": schema})
            }
            for row in conn.execute(_COLUMNS_SQL, {"schema": schema}):
                if row.table_name not in tables:
                    continue
                found.setdefault(row.table_name, []).append(
                    ReflectedColumn(
                        name=row.column_name,
                        data_type=row.data_type,
                        max_length=row.character_maximum_length,
                        nullable=row.is_nullable == "YES",
                        primary_key=(row.table_name, row.column_name) in pk,
                    )
                )
    return found


def _type_key(ftype: FieldType) -> str:
    if ftype.kind == "varchar" and ftype.length is None:
        return "varchar(max)"
    return ftype.kind


def compare(
    spec: list[TableSpec], reflected: dict[str, list[ReflectedColumn]], backend: Backend
) -> list[Difference]:
    diffs: list[Difference] = []
    expected_types = _EXPECTED_TYPES[backend]
    for table in spec:
        columns = {c.name: c for c in reflected.get(table.name, [])}
        if not columns:
            diffs.append(Difference(table.name, "*", "missing_table", "not in the database"))
            continue
        for field in table.fields:
            column = columns.pop(field.name, None)
            if column is None:
                diffs.append(Difference(table.name, field.name, "missing_field", "absent"))
                continue
            want = expected_types[_type_key(field.type)]
            if column.data_type != want:
                diffs.append(
                    Difference(
                        table.name,
                        field.name,
                        "type",
                        f"spec {field.type} expects {want}, database has {column.data_type}",
                    )
                )
            elif (
                field.type.kind == "varchar"
                and field.type.length is not None
                and column.max_length != field.type.length
            ):
                diffs.append(
                    Difference(
                        table.name,
                        field.name,
                        "varchar_length",
                        f"spec {field.type}, database length {column.max_length}",
                    )
                )
            if column.nullable == field.required:
                diffs.append(
                    Difference(
                        table.name,
                        field.name,
                        "nullable",
                        f"spec required={field.required}, database nullable={column.nullable}",
                    )
                )
            if column.primary_key != field.primary_key:
                diffs.append(
                    Difference(
                        table.name,
                        field.name,
                        "primary_key",
                        f"spec primary key={field.primary_key}, database={column.primary_key}",
                    )
                )
        diffs.extend(
            Difference(table.name, name, "extra_field", "not in the specification")
            for name in columns
        )
    return diffs


def unexcused(
    diffs: list[Difference], backend: Backend, deviations: list[Deviation]
) -> list[Difference]:
    return [d for d in diffs if not any(dev.excuses(backend, d) for dev in deviations)]
