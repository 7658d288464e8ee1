"""The official OMOP CDM v5.4 specification (OHDSI/CommonDataModel CSV files), parsed strictly.

The generator builds the SQLAlchemy models from this, and the conformance test compares live
databases with it. Neither trusts the other: both read the CSV.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

FIELD_FILE = "OMOP_CDMv5.4_Field_Level.csv"
TABLE_FILE = "OMOP_CDMv5.4_Table_Level.csv"

_VARCHAR = re.compile(r"^varchar\((\d+|max)\)$")
_SIMPLE_TYPES = {"integer", "float", "date", "datetime"}


class SpecError(ValueError):
    """The specification files do not have the shape this code expects."""


@dataclass(frozen=True)
class FieldType:
    """A spec datatype: ``integer``, ``float``, ``date``, ``datetime`` or ``varchar`` (length
    ``None`` for ``varchar(MAX)``)."""

    kind: str
    length: int | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> FieldType:
        low = text.strip().lower()
        if low in _SIMPLE_TYPES:
            return cls(low)
        match = _VARCHAR.match(low)
        if match is None:
            raise SpecError(f"{where}: unknown cdmDatatype {text!r}")
        size = match.group(1)
        return cls("varchar", None if size == "max" else int(size))

    def __str__(self) -> str:
        if self.kind != "varchar":
            return self.kind
        return f"varchar({'MAX' if self.length is None else self.length})"


@dataclass(frozen=True)
class FieldSpec:
    table: str
    name: str
    type: FieldType
    required: bool
    primary_key: bool


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: str  # CDM, VOCAB or RESULTS, as the specification groups them
    fields: tuple[FieldSpec, ...]

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.primary_key)


def _yes(value: str, where: str) -> bool:
    if value not in {"Yes", "No"}:
        raise SpecError(f"{where}: expected Yes or No, got {value!r}")
    return value == "Yes"


def load_spec(directory: Path) -> list[TableSpec]:
    """Read both spec CSVs; tables keep the specification's order, fields their row order."""
    table_path = directory / TABLE_FILE
    field_path = directory / FIELD_FILE
    with table_path.open(newline="", encoding="utf-8") as handle:
        table_rows = list(csv.DictReader(handle))
    with field_path.open(newline="", encoding="utf-8") as handle:
        field_rows = list(csv.DictReader(handle))

    fields: dict[str, list[FieldSpec]] = {}
    for line, row in enumerate(field_rows, start=2):
        where = f"{field_path.name}:{line}"
        table = row["cdmTableName"].strip().lower()
        fields.setdefault(table, []).append(
            FieldSpec(
                table=table,
                # The spec quotes reserved words ("offset" in note_nlp).
                name=row["cdmFieldName"].strip().strip('"').lower(),
                type=FieldType.parse(row["cdmDatatype"], where),
                required=_yes(row["isRequired"], where),
                primary_key=_yes(row["isPrimaryKey"], where),
            )
        )
    tables = []
    for line, row in enumerate(table_rows, start=2):
        name = row["cdmTableName"].strip().lower()
        if name not in fields:
            raise SpecError(f"{table_path.name}:{line}: table {name!r} has no fields")
        tables.append(TableSpec(name, row["schema"].strip().upper(), tuple(fields.pop(name))))
    if fields:
        raise SpecError(f"{field_path.name}: fields of undeclared tables {sorted(fields)}")
    return tables
