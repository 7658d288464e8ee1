"""Arrow and OMOP model types as Spark types.

The staged rows are typed by the framework's Arrow schema (``staged_schema``) and the layout
by the OMOP models; Spark needs both as a `StructType`. Datetimes are Spark's
``TIMESTAMP_NTZ``: the models' ``DateTime`` has no time zone, Arrow's ``timestamp[us]`` neither,
and DuckDB writes (and reads back) such Parquet columns as ``TIMESTAMP`` without a zone.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa
from pyspark.sql import types as T  # noqa: N812  (Spark's own convention)

from ehds.core.errors import InputError
from ehds.omop.schema.models import metadata


class UnsupportedTypeError(InputError):
    """A column's type has no Spark counterpart here."""


def arrow_to_spark(kind: pa.DataType, where: str) -> T.DataType:
    """The Spark type of an Arrow type; ``where`` names the column in the error."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return T.StringType()
    if pa.types.is_int64(kind):
        return T.LongType()
    if pa.types.is_int32(kind):
        return T.IntegerType()
    if pa.types.is_int16(kind) or pa.types.is_int8(kind):
        return T.IntegerType()
    if pa.types.is_floating(kind):
        return T.DoubleType()
    if pa.types.is_date(kind):
        return T.DateType()
    if pa.types.is_timestamp(kind):
        return T.TimestampType() if kind.tz else T.TimestampNTZType()
    if pa.types.is_boolean(kind):
        return T.BooleanType()
    raise UnsupportedTypeError(f"{where}: Arrow type {kind} has no Spark type here")


def arrow_schema_to_spark(schema: pa.Schema, where: str) -> T.StructType:
    return T.StructType(
        [
            T.StructField(f.name, arrow_to_spark(f.type, f"{where}.{f.name}"), f.nullable)
            for f in schema
        ]
    )


def model_column_type(column: sa.Column[object]) -> T.DataType:
    """The Spark type of an OMOP model column (as `parquet_layout.export_layout` writes it)."""
    kind = column.type
    if isinstance(kind, sa.BigInteger):
        return T.LongType()
    if isinstance(kind, sa.Integer):
        return T.IntegerType()
    if isinstance(kind, sa.Float | sa.Numeric):
        return T.DoubleType()
    if isinstance(kind, sa.DateTime):
        return T.TimestampNTZType()
    if isinstance(kind, sa.Date):
        return T.DateType()
    return T.StringType()


def model_table(table: str) -> sa.Table:
    for candidate in metadata.sorted_tables:
        if candidate.name == table:
            return candidate
    raise InputError(f"{table}: not an OMOP CDM v5.4 table")


def model_schema(table: str) -> T.StructType:
    """The layout schema of an OMOP table: the model's columns, in order, with Spark types.
    Every field is nullable to Spark (NOT NULL is the target database's to enforce)."""
    return T.StructType(
        [T.StructField(c.name, model_column_type(c), True) for c in model_table(table).columns]
    )
