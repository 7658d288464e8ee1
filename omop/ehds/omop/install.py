"""Create an empty OMOP CDM v5.4 (all 39 tables in their three schemas) in a database."""

from __future__ import annotations

from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase, tables_of
from ehds.omop.schema.layout import Tier


def create_empty_cdm(db: CdmDatabase) -> list[str]:
    """Create whatever schemas and tables are missing; existing tables are left as they are."""
    tables = tables_of(list(Tier))
    with bulk_writer(db) as writer:
        writer.ensure_tables(tables)
    return tables
