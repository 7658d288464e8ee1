"""``Rejection``: a source record the ETL could not use, and why.

Nothing is dropped silently: every record a connector cannot map, and every staged row the
commit cannot write (a person that does not exist, a required value missing), becomes a
rejection that lands in the node's own ``etl.quarantine`` table with the run id. ``reason`` is
a dotted code that groups them in the report (``fhir.invalid_json``, ``csv.invalid_value``,
``fk.person_missing``...); ``detail`` names field paths and rules, **never values** (it is
printed); only ``record`` may hold the raw source record, because quarantine stays inside the
node's database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa

QUARANTINE_DIR = "_quarantine"
"""The staging sub-folder that holds rejections (``STAGE/_quarantine/part-*.parquet``)."""

REJECTION_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("location", pa.string(), nullable=False),
        pa.field("record_type", pa.string(), nullable=False),
        pa.field("record_key", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("record", pa.string()),
    ]
)
"""The Parquet columns of a staged rejection, in ``Rejection`` field order."""


@dataclass(frozen=True)
class Rejection:
    """One rejected source record.

    ``source``: the input it came from (a file name); ``location``: where in it
    (``file:line``, ``file:row``); ``record_type``: the source type read (``Patient``,
    ``ER_PRS_F``), which the report counts rejections under; ``record_key``: the record's key
    when it has one."""

    source: str
    location: str
    record_type: str
    record_key: str | None
    reason: str
    detail: str
    record: str | None = None

    def as_row(self) -> dict[str, str | None]:
        return asdict(self)
