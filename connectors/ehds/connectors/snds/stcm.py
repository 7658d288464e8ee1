"""Load a partner's ``source_to_concept_map`` CSV into the target vocabulary.

SNDS codes (CIM-10, CCAM, CIP13) reach standard concepts through ``source_to_concept_map``
(CCAM and CIP13 have no 'Maps to' in Athena); a partner keeps those mappings as data, in a CSV
with the CDM columns of the table. Loading replaces the rows of the vocabularies the file
covers (its distinct ``source_vocabulary_id``), so loading the same file twice changes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from ehds.core.errors import InputError
from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase

COLUMNS: tuple[str, ...] = (
    "source_code",
    "source_concept_id",
    "source_vocabulary_id",
    "source_code_description",
    "target_concept_id",
    "target_vocabulary_id",
    "valid_start_date",
    "valid_end_date",
    "invalid_reason",
)
_REQUIRED = (
    "source_code",
    "source_vocabulary_id",
    "target_concept_id",
    "target_vocabulary_id",
)
_DEFAULTS = {
    "source_concept_id": "0",
    "valid_start_date": "1970-01-01",
    "valid_end_date": "2099-12-31",
}


class StcmError(InputError):
    """The source_to_concept_map CSV is malformed (message: file, line, column)."""


def _date(text: str, where: str) -> dt.date:
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise StcmError(f"{where}: not a date (YYYY-MM-DD or YYYYMMDD)")


def _int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise StcmError(f"{where}: not an integer") from None


def read_stcm(path: Path) -> list[dict[str, object]]:
    """The rows of ``path`` (comma-separated, header with the CDM column names, any case)."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise StcmError(f"{path}: cannot be read ({exc.strerror})") from None
    rows: list[dict[str, object]] = []
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [name for name in _REQUIRED if name not in header]
        if missing:
            raise StcmError(f"{path}: missing column(s) {', '.join(missing)}")
        unknown = [name for name in header if name not in COLUMNS]
        if unknown:
            raise StcmError(f"{path}: unknown column(s) {', '.join(unknown)}")
        reader.fieldnames = header
        for line, raw in enumerate(reader, start=2):
            values = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            for name, default in _DEFAULTS.items():
                values[name] = values.get(name) or default
            for name in _REQUIRED:
                if not values.get(name):
                    raise StcmError(f"{path}:{line}: column {name} is empty")
            rows.append(
                {
                    "source_code": values["source_code"],
                    "source_concept_id": _int(
                        values["source_concept_id"], f"{path}:{line}: source_concept_id"
                    ),
                    "source_vocabulary_id": values["source_vocabulary_id"],
                    "source_code_description": values.get("source_code_description") or None,
                    "target_concept_id": _int(
                        values["target_concept_id"], f"{path}:{line}: target_concept_id"
                    ),
                    "target_vocabulary_id": values["target_vocabulary_id"],
                    "valid_start_date": _date(
                        values["valid_start_date"], f"{path}:{line}: valid_start_date"
                    ),
                    "valid_end_date": _date(
                        values["valid_end_date"], f"{path}:{line}: valid_end_date"
                    ),
                    "invalid_reason": values.get("invalid_reason") or None,
                }
            )
    return rows


def load_stcm(path: Path, db: CdmDatabase) -> int:
    """Replace the target's mappings of the vocabularies in ``path`` by the file's rows."""
    rows = read_stcm(path)
    vocabularies = sorted({str(row["source_vocabulary_id"]) for row in rows})
    with bulk_writer(db) as writer:
        writer.ensure_tables(["source_to_concept_map"])
    table = db.table("source_to_concept_map")
    engine = db.engine()
    try:
        with engine.begin() as conn:
            if vocabularies:
                conn.execute(sa.delete(table).where(table.c.source_vocabulary_id.in_(vocabularies)))
            if rows:
                conn.execute(sa.insert(table), rows)
    finally:
        engine.dispose()
    return len(rows)
