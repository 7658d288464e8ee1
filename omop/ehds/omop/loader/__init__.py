"""Loading OMOP CDMs as OHDSI distributes them (CSV or Parquet in a folder or zip, the
Parquet layout, another DuckDB file; CDM 5.3 upgraded to 5.4) into DuckDB or PostgreSQL.

Modules, one concept each: ``sources`` and ``duckdb_source`` find the tables of a source,
``source_tables`` reads them, ``csv_reader`` is the one CSV reader (CDM and Athena dialects),
``versions`` detects and upgrades versions, ``casting`` converts columns, ``plan`` maps a
source table onto a model table, ``load`` runs it all in one transaction, ``diagnostics``
locates what went wrong, ``report`` tells what happened and ``errors`` types the failures.
"""

from ehds.omop.loader.errors import (
    CdmLoadError,
    DuplicateKeyError,
    LoadFailedError,
    Location,
    MalformedRowError,
    MissingColumnError,
    MissingValueError,
    SourceError,
    UnknownColumnError,
    UnknownTableError,
    UnsupportedVersionError,
    ValueTooLongError,
    WrongTypeError,
)
from ehds.omop.loader.load import load_cdm
from ehds.omop.loader.report import LoadReport, TableLoad

__all__ = [
    "CdmLoadError",
    "DuplicateKeyError",
    "LoadFailedError",
    "LoadReport",
    "Location",
    "MalformedRowError",
    "MissingColumnError",
    "MissingValueError",
    "SourceError",
    "TableLoad",
    "UnknownColumnError",
    "UnknownTableError",
    "UnsupportedVersionError",
    "ValueTooLongError",
    "WrongTypeError",
    "load_cdm",
]
