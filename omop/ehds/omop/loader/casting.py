"""From a source column to a model column: the SQL that converts, and the SQL that finds
the values that cannot be converted.

The fast path converts inside one ``INSERT ... SELECT``; engine constraints (NOT NULL,
PRIMARY KEY) catch missing values and duplicates. Two checks the engines do not make are
added to the SELECT, because DuckDB's casts are lenient where OMOP is not: ``'10204.5'`` and
``10204.5`` silently round to an INTEGER, and a VARCHAR(50) holds any length in DuckDB
(PostgreSQL refuses it, so both engines must refuse it alike). A failed check calls
``error()`` with a constant message; the failure path (``diagnostics``) then locates the row.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import sqlalchemy as sa

from ehds.omop.loader.errors import Location, WrongTypeError

INT_MIN = -2_147_483_648
INT_MAX = 2_147_483_647
_CHECK_FAILED = "error('ehds load: a value failed its column check')"

_INTEGRAL = re.compile(r"^(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|INT\d*)$")
_FRACTIONAL = re.compile(r"^(DOUBLE|FLOAT|REAL|DECIMAL(\(\d+,\s*\d+\))?)$")
_TEXT = "VARCHAR"


class Kind(enum.StrEnum):
    INTEGER = "INTEGER"
    NUMBER = "DOUBLE"
    DATE = "DATE"
    TIMESTAMP = "TIMESTAMP"
    TEXT = "VARCHAR"


@dataclass(frozen=True)
class TargetColumn:
    """A model column as the loader needs it: type family, length limit, NOT NULL."""

    name: str
    kind: Kind
    length: int | None
    required: bool

    def expected(self, date_hint: str = "YYYY-MM-DD") -> str:
        if self.kind is Kind.INTEGER:
            return "integer"
        if self.kind is Kind.NUMBER:
            return "number"
        if self.kind is Kind.DATE:
            return f"date {date_hint}"
        if self.kind is Kind.TIMESTAMP:
            return f"timestamp {date_hint} hh:mm:ss"
        return f"text of at most {self.length} characters" if self.length else "text"

    @property
    def read_type(self) -> str:
        """The type a CSV reader parses this column as: integers as DOUBLE, so that
        ``10204.0`` loads and ``10204.5`` can be refused instead of rounded."""
        return Kind.NUMBER.value if self.kind is Kind.INTEGER else self.kind.value


def target_columns(table: sa.Table) -> tuple[TargetColumn, ...]:
    return tuple(_target_column(column) for column in table.columns)


def _target_column(column: sa.Column[object]) -> TargetColumn:
    kind: Kind
    length: int | None = None
    type_ = column.type
    if isinstance(type_, sa.Integer):
        kind = Kind.INTEGER
    elif isinstance(type_, sa.Float | sa.Double | sa.Numeric):
        kind = Kind.NUMBER
    elif isinstance(type_, sa.DateTime):
        kind = Kind.TIMESTAMP
    elif isinstance(type_, sa.Date):
        kind = Kind.DATE
    elif isinstance(type_, sa.String):
        kind = Kind.TEXT
        length = type_.length
    else:  # pragma: no cover - the generated models use only the types above
        raise TypeError(f"{column.table.name}.{column.name}: unsupported type {type_!r}")
    return TargetColumn(column.name, kind, length, not column.nullable)


def _family(source_type: str) -> str:
    upper = source_type.upper()
    if _INTEGRAL.match(upper):
        return "integral"
    if _FRACTIONAL.match(upper):
        return "fractional"
    if upper.startswith(("TIMESTAMP", "DATETIME")):
        return "timestamp"
    if upper == "DATE":
        return "date"
    if upper in (_TEXT, "TEXT", "STRING") or upper.startswith("VARCHAR"):
        return "text"
    return "other"


_COMPATIBLE: dict[Kind, frozenset[str]] = {
    Kind.INTEGER: frozenset({"integral", "fractional", "text"}),
    Kind.NUMBER: frozenset({"integral", "fractional", "text"}),
    Kind.DATE: frozenset({"date", "timestamp", "text"}),
    Kind.TIMESTAMP: frozenset({"date", "timestamp", "text"}),
    Kind.TEXT: frozenset({"integral", "fractional", "date", "timestamp", "text"}),
}


def check_compatible(source_type: str, target: TargetColumn, location: Location) -> None:
    """Refuse, before reading any row, a source column whose type can never convert."""
    if _family(source_type) not in _COMPATIBLE[target.kind]:
        raise WrongTypeError(
            f"the source column is {source_type.upper()}",
            location=location,
            column=target.name,
            expected=target.expected(),
        )


def _blank_to_null(ref: str) -> str:
    return f"NULLIF(trim({ref}), '')"


def load_expr(ref: str, source_type: str, target: TargetColumn) -> str:
    """The fast-path expression: ``ref`` converted to the target type, ``error()`` on a
    value that would be silently altered (fraction, overflow is an engine error anyway)."""
    family = _family(source_type)
    kind = target.kind
    if kind is Kind.INTEGER:
        if family == "integral":
            return f"CAST({ref} AS INTEGER)"
        number = f"CAST({_blank_to_null(ref)} AS DOUBLE)" if family == "text" else ref
        return (
            f"CASE WHEN {number} <> trunc({number}) THEN {_CHECK_FAILED} "
            f"ELSE CAST({number} AS INTEGER) END"
        )
    if kind is Kind.TEXT:
        text = ref if family == "text" else f"CAST({ref} AS VARCHAR)"
        if target.length is None:
            return text
        n = target.length
        # strlen (bytes) >= length (characters): the cheap test settles almost every value.
        return (
            f"CASE WHEN strlen({text}) > {n} AND length({text}) > {n} THEN {_CHECK_FAILED} "
            f"ELSE {text} END"
        )
    value = _blank_to_null(ref) if family == "text" else ref
    return f"CAST({value} AS {kind.value})"


def invalid_expr(ref: str, source_type: str, target: TargetColumn) -> str:
    """True where a non-NULL value cannot become the target type (the failure path)."""
    family = _family(source_type)
    kind = target.kind
    if kind is Kind.TEXT:
        return "FALSE"
    if family == "text":
        value = _blank_to_null(ref)
        typed = f"TRY_CAST({value} AS {Kind.NUMBER.value if kind is Kind.INTEGER else kind.value})"
        unparsable = f"({value} IS NOT NULL AND {typed} IS NULL)"
        if kind is not Kind.INTEGER:
            return unparsable
        return f"({unparsable} OR {_not_integer(typed)})"
    if kind is Kind.INTEGER:
        return _not_integer(f"CAST({ref} AS DOUBLE)")
    return "FALSE"


def _not_integer(number: str) -> str:
    return (
        f"coalesce(NOT (isfinite({number}) AND {number} = trunc({number}) "
        f"AND {number} BETWEEN {INT_MIN} AND {INT_MAX}), FALSE)"
    )


def too_long_expr(ref: str, source_type: str, target: TargetColumn) -> str:
    if target.kind is not Kind.TEXT or target.length is None:
        return "FALSE"
    text = ref if _family(source_type) == "text" else f"CAST({ref} AS VARCHAR)"
    return f"coalesce(length({text}) > {target.length}, FALSE)"


def null_expr(ref: str, source_type: str, target: TargetColumn) -> str:
    """True where the loaded value would be NULL."""
    if target.kind is not Kind.TEXT and _family(source_type) == "text":
        return f"({_blank_to_null(ref)} IS NULL)"
    return f"({ref} IS NULL)"


def key_expr(ref: str, source_type: str, target: TargetColumn) -> str:
    """The loaded value, for finding duplicate keys (NULL where it would not convert)."""
    family = _family(source_type)
    if target.kind is Kind.TEXT:
        return ref if family == "text" else f"CAST({ref} AS VARCHAR)"
    value = _blank_to_null(ref) if family == "text" else ref
    if target.kind is Kind.INTEGER:
        return f"TRY_CAST(TRY_CAST({value} AS DOUBLE) AS INTEGER)"
    return f"TRY_CAST({value} AS {target.kind.value})"
