"""Rejection reasons of the SNDS connector and the step that files rejected rows.

Each mapping step builds a *checked* relation: the source rows plus ``_reason`` (NULL when the
row maps), ``_detail`` (which field and rule, never a value) and ``_record`` (the raw row as
JSON, kept only in the node's quarantine table). Rows with a reason go to ``rejected``; the
others are mapped.
"""

from __future__ import annotations

from typing import Final

import duckdb

MISSING_KEY: Final = "snds.missing_key"
DUPLICATE_KEY: Final = "snds.duplicate_key"
INVALID_BIRTH_YEAR: Final = "snds.invalid_birth_year"
INVALID_DATE: Final = "snds.invalid_date"
END_BEFORE_START: Final = "snds.end_before_start"
INVALID_CODE: Final = "snds.invalid_code"
UNSUPPORTED_NOMENCLATURE: Final = "snds.unsupported_nomenclature"
PERSON_UNLINKED: Final = "snds.person_unlinked"
PERSON_AMBIGUOUS: Final = "snds.person_ambiguous"
DEATH_BEFORE_BIRTH: Final = "snds.death_before_birth"
DUPLICATE_DEATH_CERTIFICATE: Final = "snds.duplicate_death_certificate"
DCIR_INFORMATION_LINE: Final = "snds.dcir_information_line"
DCIR_ORPHAN: Final = "snds.dcir_orphan"
DCIR_REGULARISATION: Final = "snds.dcir_regularisation"
PMSI_NO_PATIENT_LINK: Final = "snds.pmsi_no_patient_link"
PMSI_NO_STAY: Final = "snds.pmsi_no_stay"
PMSI_ERROR_GHM: Final = "snds.pmsi_error_ghm"
PMSI_LINK_INVALID: Final = "snds.pmsi_link_invalid"
PMSI_STAY_MISSING: Final = "snds.pmsi_stay_missing"
ACT_OUTSIDE_STAY: Final = "snds.act_outside_stay"


def sql_text(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def file_rejections(
    con: duckdb.DuckDBPyConnection, checked: str, record_type: str, key_expr: str = "NULL"
) -> None:
    """Copy the rows of ``checked`` that carry a ``_reason`` into ``rejected``."""
    con.execute(
        f"INSERT INTO rejected SELECT _file, _file || ':' || CAST(_line AS VARCHAR), "
        f"{sql_text(record_type)}, {key_expr}, _reason, _detail, _record "
        f"FROM {checked} WHERE _reason IS NOT NULL"
    )
