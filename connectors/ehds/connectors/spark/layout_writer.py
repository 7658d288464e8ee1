"""Spark DataFrames to the Parquet CDM layout, typed as the OMOP models.

Each table is written as a whole (Spark's overwrite of the table's folder): a job owns the
tables it writes, as the embedded connectors' replace mode does. Columns are selected in the
models' order and cast to the models' types, so that DuckDB's ``ehds omop load --from`` and
the node's Spark engine read the same types an ``export_layout`` would have written; rows are
sorted by the table's id within each file.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)

from ehds.connectors.ids import id_column
from ehds.connectors.spark.spark_types import model_column_type, model_table
from ehds.core.errors import InputError
from ehds.omop.parquet_layout import is_layout, table_dir, write_marker


class LayoutTargetError(InputError):
    """The output folder is neither empty nor a layout, so it is not overwritten."""


def prepare_layout(root: Path) -> None:
    """Make ``root`` a layout: an absent or empty folder gets the marker; a folder that holds
    other things is refused (a job never writes into arbitrary folders)."""
    if root.exists() and not root.is_dir():
        raise LayoutTargetError(f"{root}: exists and is not a folder")
    if root.is_dir() and not is_layout(root) and any(root.iterdir()):
        raise LayoutTargetError(
            f"{root}: a folder that is not a Parquet CDM layout (no marker); "
            "give an empty or new folder"
        )
    write_marker(root)


def to_model_columns(frame: DataFrame, table: str) -> DataFrame:
    """``frame`` with exactly the model's columns of ``table``, in order and typed; a column
    ``frame`` lacks is null. Extra columns of ``frame`` are dropped."""
    present = set(frame.columns)
    columns: list[Column] = []
    for column in model_table(table).columns:
        kind = model_column_type(column)
        value = F.col(column.name) if column.name in present else F.lit(None)
        columns.append(value.cast(kind).alias(column.name))
    return frame.select(*columns)


def write_table(frame: DataFrame, root: Path, table: str) -> None:
    """Write ``frame`` as the layout's ``table`` folder, replacing what was there."""
    typed = to_model_columns(frame, table)
    key = id_column(table)
    # Sorted within each file (a global sort would cost Spark a sampling job per table).
    ordered = typed.sortWithinPartitions(key or typed.columns[0])
    ordered.write.mode("overwrite").parquet(str(table_dir(root, table).resolve()))
