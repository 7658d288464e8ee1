"""DCIR (outpatient claims): ER_PRS_F -> visit_occurrence; ER_PHA_F -> drug_exposure;
ER_CAM_F -> procedure_occurrence.

A DCIR line (one row of ER_PRS_F) is identified by the 9 DCIR join keys; its detail tables
(ER_PHA_F pharmacy, ER_CAM_F CCAM acts) join on the same 9 keys. A visit is one *decompte*
(the claim: the line keys without PRS_ORD_NUM and REM_TYP_AFF), from its earliest care start
(EXE_SOI_DTD) to its latest care end (EXE_SOI_DTF); a decompte made only of pharmacy lines is a
pharmacy visit. Lines with DPN_QLF = 71 are information copies of care already paid in
hospital (recorded in the PMSI) and are rejected as such, so they are counted but not mapped
twice.
"""

from __future__ import annotations

import duckdb

from ehds.connectors.snds import concepts as c
from ehds.connectors.snds import rejections as r
from ehds.connectors.snds.rejections import file_rejections, sql_text
from ehds.connectors.snds.sources import DCIR_CLAIM_KEYS, DCIR_KEYS


def _key_expr(keys: tuple[str, ...], alias: str) -> str:
    """Canonical text of DCIR keys: dates as ISO dates, numbers without padding."""
    parts = []
    for name in keys:
        column = f"{alias}.{name}"
        if name.endswith("_DTD"):
            parts.append(f"CAST(snds_parse_date({column}) AS VARCHAR)")
        elif name == "ORG_CLE_NUM":
            parts.append(f"snds_text({column})")
        else:
            parts.append(f"CAST(snds_int({column}) AS VARCHAR)")
    return " || '|' || ".join(parts)  # NULL when any key is missing


def map_dcir(con: duckdb.DuckDBPyConnection) -> None:
    _map_lines(con)
    _map_visits(con)
    _map_pharmacy(con)
    _map_acts(con)


def _map_lines(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE TABLE prs_checked AS
        WITH k AS (
            SELECT s.*, {_key_expr(DCIR_KEYS, "s")} AS line_key,
                   {_key_expr(DCIR_CLAIM_KEYS, "s")} AS claim_key,
                   person_key(BEN_NIR_PSA, BEN_RNG_GEM) AS pkey,
                   snds_date(EXE_SOI_DTD) AS start_date,
                   coalesce(snds_date(EXE_SOI_DTF), snds_date(EXE_SOI_DTD)) AS end_date,
                   CAST(to_json(s) AS VARCHAR) AS _record
            FROM src_er_prs_f s
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY line_key ORDER BY _file, _line) AS _dup
            FROM k
        )
        SELECT *,
            CASE WHEN line_key IS NULL THEN {sql_text(r.MISSING_KEY)}
                 WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_KEY)}
                 WHEN snds_int(DPN_QLF) = 71 THEN {sql_text(r.DCIR_INFORMATION_LINE)}
                 WHEN pkey IS NULL THEN {sql_text(r.MISSING_KEY)}
                 WHEN start_date IS NULL THEN {sql_text(r.INVALID_DATE)}
                 WHEN end_date < start_date THEN {sql_text(r.END_BEFORE_START)}
            END AS _reason,
            CASE WHEN line_key IS NULL THEN 'one of the 9 DCIR join keys is missing or invalid'
                 WHEN _dup > 1 THEN 'another ER_PRS_F row has the same 9 DCIR join keys'
                 WHEN snds_int(DPN_QLF) = 71
                     THEN 'DPN_QLF = 71: information copy of hospital care (in the PMSI)'
                 WHEN pkey IS NULL THEN 'BEN_NIR_PSA or BEN_RNG_GEM missing or not an integer'
                 WHEN start_date IS NULL THEN 'EXE_SOI_DTD missing or not a date'
                 ELSE 'EXE_SOI_DTF before EXE_SOI_DTD'
            END AS _detail
        FROM ranked
    """)
    file_rejections(con, "prs_checked", "ER_PRS_F", "'ER_PRS_F/' || line_key")
    con.execute("""
        CREATE TABLE dcir_lines AS
        SELECT line_key, claim_key, pkey, start_date, end_date, _file, _line
        FROM prs_checked WHERE _reason IS NULL
    """)


def _map_visits(con: duckdb.DuckDBPyConnection) -> None:
    pharmacy_keys = f"SELECT DISTINCT {_key_expr(DCIR_KEYS, 'p')} FROM src_er_pha_f p"
    con.execute(f"""
        CREATE TABLE stage__visit_occurrence__dcir AS
        WITH lines AS (
            SELECT l.*, l.line_key IN ({pharmacy_keys}) AS is_pharmacy FROM dcir_lines l
        )
        SELECT 'ER_PRS_F/' || claim_key AS _key,
               first(_file || ':' || CAST(_line AS VARCHAR) ORDER BY _file, _line) AS _source,
               min(pkey) AS person_id__key,
               CAST(CASE WHEN bool_and(is_pharmacy) THEN {c.VISIT_PHARMACY}
                    ELSE {c.VISIT_OUTPATIENT} END AS INTEGER) AS visit_concept_id,
               min(start_date) AS visit_start_date, max(end_date) AS visit_end_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS visit_type_concept_id,
               'DCIR' AS visit_source_value
        FROM lines GROUP BY claim_key
    """)


def _map_detail(
    con: duckdb.DuckDBPyConnection,
    *,
    source_table: str,
    record_type: str,
    order_column: str,
    code_expr: str,
    code_detail: str,
    extra_check: str = "",
) -> None:
    """Check the detail rows of one DCIR detail table against the valid lines."""
    con.execute(f"""
        CREATE TABLE {record_type.lower()}_checked AS
        WITH k AS (
            SELECT s.*, {_key_expr(DCIR_KEYS, "s")} AS line_key, {code_expr} AS code,
                   CAST(to_json(s) AS VARCHAR) AS _record
            FROM {source_table} s
        ), keyed AS (
            SELECT k.*, '{record_type}/' || k.line_key || '|'
                       || coalesce(CAST(snds_int(k.{order_column}) AS VARCHAR), '') AS dkey,
                   l.pkey, l.claim_key, l.start_date
            FROM k LEFT JOIN dcir_lines l ON l.line_key = k.line_key
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY dkey ORDER BY _file, _line) AS _dup
            FROM keyed
        )
        SELECT *,
            CASE WHEN line_key IS NULL THEN {sql_text(r.MISSING_KEY)}
                 WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_KEY)}
                 WHEN claim_key IS NULL THEN {sql_text(r.DCIR_ORPHAN)}
                 WHEN code IS NULL THEN {sql_text(r.INVALID_CODE)}
                 {extra_check}
            END AS _reason,
            CASE WHEN line_key IS NULL THEN 'one of the 9 DCIR join keys is missing or invalid'
                 WHEN _dup > 1 THEN 'another {record_type} row has the same 9 DCIR join keys '
                     || 'and {order_column}'
                 WHEN claim_key IS NULL
                     THEN 'no mapped ER_PRS_F line with the same 9 DCIR join keys'
                 WHEN code IS NULL THEN '{code_detail}'
                 ELSE 'PHA_ACT_QSN is not positive: a cancellation or correction line'
            END AS _detail
        FROM ranked
    """)
    file_rejections(con, f"{record_type.lower()}_checked", record_type, "dkey")


def _map_pharmacy(con: duckdb.DuckDBPyConnection) -> None:
    _map_detail(
        con,
        source_table="src_er_pha_f",
        record_type="ER_PHA_F",
        order_column="PHA_ORD_NUM",
        code_expr="cip13(PHA_PRS_C13)",
        code_detail="PHA_PRS_C13 is not a 13-digit CIP code",
        extra_check=(
            f"WHEN coalesce(snds_int(PHA_ACT_QSN), 0) <= 0 THEN {sql_text(r.DCIR_REGULARISATION)}"
        ),
    )
    con.execute(f"""
        CREATE TABLE stage__drug_exposure__er_pha_f AS
        SELECT dkey AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key, 'ER_PRS_F/' || claim_key AS visit_occurrence_id__key,
               start_date AS drug_exposure_start_date, start_date AS drug_exposure_end_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS drug_type_concept_id,
               CAST(snds_int(PHA_ACT_QSN) AS DOUBLE) AS quantity,
               {sql_text(c.VOCAB_CIP13)} AS drug_concept_id__vocab,
               code AS drug_concept_id__code, code AS drug_source_value
        FROM er_pha_f_checked WHERE _reason IS NULL
    """)


def _map_acts(con: duckdb.DuckDBPyConnection) -> None:
    _map_detail(
        con,
        source_table="src_er_cam_f",
        record_type="ER_CAM_F",
        order_column="CAM_ORD_NUM",
        code_expr="ccam(CAM_PRS_IDE)",
        code_detail="CAM_PRS_IDE is not a CCAM code (4 letters, 3 digits)",
    )
    con.execute(f"""
        CREATE TABLE stage__procedure_occurrence__er_cam_f AS
        SELECT dkey AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key, 'ER_PRS_F/' || claim_key AS visit_occurrence_id__key,
               start_date AS procedure_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS procedure_type_concept_id,
               {sql_text(c.VOCAB_CCAM)} AS procedure_concept_id__vocab,
               code AS procedure_concept_id__code, code AS procedure_source_value
        FROM er_cam_f_checked WHERE _reason IS NULL
    """)
