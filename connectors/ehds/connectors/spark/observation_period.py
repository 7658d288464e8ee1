"""``observation_period`` on Spark: the FHIR connector's derivation, in Spark SQL.

As in ``ehds.connectors.fhir.observation_period`` (whose constants this reuses): one period per
person, from the first to the last date of that person's staged events of any clinical table,
type 'EHR', keyed ``ObservationPeriod/<person key>``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)

from ehds.connectors.fhir.codes import EHR_TYPE_CONCEPT
from ehds.connectors.fhir.observation_period import EVENT_DATES, PERIOD_KEY_PREFIX


def observation_periods(staged: Mapping[str, DataFrame]) -> DataFrame | None:
    """The staged ``observation_period`` rows, or None when no event was staged."""
    events = [
        frame.where(F.col(column).isNotNull()).select(
            F.col("person_id__key").alias("person"), F.col(column).alias("day")
        )
        for table, columns in EVENT_DATES.items()
        if (frame := staged.get(table)) is not None
        for column in columns
    ]
    if not events:
        return None
    union = functools.reduce(DataFrame.unionByName, events)
    return (
        union.where(F.col("person").isNotNull())
        .groupBy("person")
        .agg(
            F.min("day").alias("observation_period_start_date"),
            F.max("day").alias("observation_period_end_date"),
        )
        .select(
            F.concat(F.lit(PERIOD_KEY_PREFIX), F.col("person")).alias("_key"),
            F.col("person").alias("person_id__key"),
            "observation_period_start_date",
            "observation_period_end_date",
            F.lit(EHR_TYPE_CONCEPT).cast("int").alias("period_type_concept_id"),
        )
    )
