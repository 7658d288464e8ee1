"""IR_BEN_R -> person; IR_BEN_R and the CepiDc tables (KI_CCI_R, KI_ECD_R) -> death and
causes of death.

Person key: ``IR_BEN_R/<BEN_NIR_PSA>|<BEN_RNG_GEM>``, the SNDS practice for a beneficiary
(BEN_NIR_PSA alone is shared by the children of one insured person born the same day; the
twin rank BEN_RNG_GEM tells them apart). When IR_BEN_R holds several rows for one key, the
most recently updated one (BEN_DTE_MAJ) is kept and the others are rejected as duplicates.

CepiDc rows identify the person by BEN_IDT_ANO, which IR_BEN_R carries; one death per person:
the certificate's date and underlying cause (DCD_CIM_COD) when a certificate is linked, else
IR_BEN_R's BEN_DCD_DTE without a cause.
"""

from __future__ import annotations

import duckdb

from ehds.connectors.snds import concepts as c
from ehds.connectors.snds import rejections as r
from ehds.connectors.snds.rejections import file_rejections, sql_text


def map_persons(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE TABLE ben_checked AS
        WITH b AS (
            SELECT s.*, person_key(BEN_NIR_PSA, BEN_RNG_GEM) AS pkey,
                   snds_int(BEN_NAI_ANN) AS yob, snds_int(BEN_NAI_MOI) AS mob,
                   CAST(to_json(s) AS VARCHAR) AS _record
            FROM src_ir_ben_r s
        ), ranked AS (
            SELECT *, row_number() OVER (
                PARTITION BY pkey ORDER BY snds_date(BEN_DTE_MAJ) DESC NULLS LAST, _file, _line
            ) AS _dup
            FROM b
        )
        SELECT *,
            CASE WHEN pkey IS NULL THEN {sql_text(r.MISSING_KEY)}
                 WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_KEY)}
                 WHEN yob IS NULL OR yob < 1870 OR yob > year(current_date)
                     THEN {sql_text(r.INVALID_BIRTH_YEAR)}
            END AS _reason,
            CASE WHEN pkey IS NULL THEN 'BEN_NIR_PSA or BEN_RNG_GEM missing or not an integer'
                 WHEN _dup > 1 THEN 'another IR_BEN_R row has the same (BEN_NIR_PSA, '
                     || 'BEN_RNG_GEM) and a later or equal BEN_DTE_MAJ'
                 ELSE 'BEN_NAI_ANN missing, not a year, before 1870 or in the future'
            END AS _detail
        FROM ranked
    """)
    file_rejections(con, "ben_checked", "IR_BEN_R", "pkey")
    con.execute("""
        CREATE TABLE persons AS
        SELECT pkey, yob, snds_text(BEN_IDT_ANO) AS idt, snds_date(BEN_DCD_DTE) AS dcd,
               _file, _line
        FROM ben_checked WHERE _reason IS NULL
    """)
    con.execute(f"""
        CREATE TABLE stage__person__ir_ben_r AS
        SELECT b.pkey AS _key, b._file || ':' || CAST(b._line AS VARCHAR) AS _source,
               CAST(CASE snds_int(BEN_SEX_COD) WHEN 1 THEN {c.GENDER_MALE}
                    WHEN 2 THEN {c.GENDER_FEMALE} ELSE 0 END AS INTEGER) AS gender_concept_id,
               CAST(yob AS INTEGER) AS year_of_birth,
               CAST(CASE WHEN mob BETWEEN 1 AND 12 THEN mob END AS INTEGER) AS month_of_birth,
               CAST(0 AS INTEGER) AS race_concept_id,
               CAST(0 AS INTEGER) AS ethnicity_concept_id,
               substr(b.pkey, length('IR_BEN_R/') + 1) AS person_source_value,
               snds_text(BEN_SEX_COD) AS gender_source_value
        FROM ben_checked b WHERE _reason IS NULL
    """)
    # BEN_IDT_ANO -> person, for the CepiDc tables (the smallest key when several match).
    con.execute("""
        CREATE TABLE idt_persons AS
        SELECT idt, min(pkey) AS pkey, min(yob) AS yob FROM persons
        WHERE idt IS NOT NULL GROUP BY idt
    """)


def map_deaths(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE TABLE cci_checked AS
        WITH k AS (
            SELECT s.*, p.pkey, p.yob, snds_date(s.BEN_DCD_DTE) AS death_date,
                   CAST(to_json(s) AS VARCHAR) AS _record
            FROM src_ki_cci_r s LEFT JOIN idt_persons p ON p.idt = snds_text(s.BEN_IDT_ANO)
        ), v AS (
            SELECT *,
                CASE WHEN pkey IS NULL THEN {sql_text(r.PERSON_UNLINKED)}
                     WHEN death_date IS NULL THEN {sql_text(r.INVALID_DATE)}
                     WHEN year(death_date) < yob THEN {sql_text(r.DEATH_BEFORE_BIRTH)}
                END AS _first_reason
            FROM k
        ), ranked AS (
            SELECT *, row_number() OVER (
                PARTITION BY pkey, _first_reason IS NULL
                ORDER BY death_date DESC, DCD_IDT_ENC, _file, _line
            ) AS _dup
            FROM v
        )
        SELECT *,
            CASE WHEN _first_reason IS NOT NULL THEN _first_reason
                 WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_DEATH_CERTIFICATE)} END AS _reason,
            CASE _first_reason
                WHEN {sql_text(r.PERSON_UNLINKED)} THEN 'BEN_IDT_ANO matches no IR_BEN_R row'
                WHEN {sql_text(r.INVALID_DATE)} THEN 'BEN_DCD_DTE missing or not a date'
                WHEN {sql_text(r.DEATH_BEFORE_BIRTH)}
                    THEN 'BEN_DCD_DTE before the birth year of the person'
                ELSE 'another certificate of the person is kept (latest BEN_DCD_DTE)'
            END AS _detail
        FROM ranked
    """)
    file_rejections(con, "cci_checked", "KI_CCI_R", "pkey")
    # Deaths known only from IR_BEN_R, when no certificate is linked.
    con.execute(f"""
        INSERT INTO rejected
        SELECT _file, _file || ':' || CAST(_line AS VARCHAR), 'IR_BEN_R.BEN_DCD_DTE', pkey,
               {sql_text(r.DEATH_BEFORE_BIRTH)},
               'BEN_DCD_DTE before BEN_NAI_ANN: the death date is ignored, the person kept',
               NULL
        FROM persons WHERE dcd IS NOT NULL AND year(dcd) < yob
    """)
    con.execute(f"""
        CREATE TABLE stage__death__snds AS
        SELECT pkey AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key, death_date,
               CAST({c.TYPE_DEATH_CERTIFICATE} AS INTEGER) AS death_type_concept_id,
               CASE WHEN cim10(DCD_CIM_COD) IS NOT NULL THEN {sql_text(c.VOCAB_CIM10)} END
                   AS cause_concept_id__vocab,
               cim10(DCD_CIM_COD) AS cause_concept_id__code,
               snds_text(DCD_CIM_COD) AS cause_source_value
        FROM cci_checked WHERE _reason IS NULL
        UNION ALL
        SELECT pkey, _file || ':' || CAST(_line AS VARCHAR), pkey, dcd,
               CAST({c.TYPE_CLAIM} AS INTEGER), NULL, NULL, NULL
        FROM persons
        WHERE dcd IS NOT NULL AND year(dcd) >= yob
          AND pkey NOT IN (SELECT pkey FROM cci_checked WHERE _reason IS NULL)
    """)


def map_death_causes(con: duckdb.DuckDBPyConnection) -> None:
    """Every cause on a certificate (KI_ECD_R) -> condition_occurrence at the death date."""
    con.execute(f"""
        CREATE TABLE ecd_checked AS
        WITH k AS (
            SELECT s.*, p.pkey, p.yob, snds_date(s.BEN_DCD_DTE) AS death_date,
                   cim10(ECD_CIM_COD) AS code,
                   'KI_ECD_R/' || concat_ws('|', coalesce(trim(DCD_IDT_ENC), ''),
                       coalesce(trim(CER_LIG_NUM), ''), coalesce(trim(ECD_CAU_RNG), ''),
                       coalesce(trim(ECD_CIM_COD), '')) AS ckey,
                   CAST(to_json(s) AS VARCHAR) AS _record
            FROM src_ki_ecd_r s LEFT JOIN idt_persons p ON p.idt = snds_text(s.BEN_IDT_ANO)
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY ckey ORDER BY _file, _line) AS _dup FROM k
        )
        SELECT *,
            CASE WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_KEY)}
                 WHEN pkey IS NULL THEN {sql_text(r.PERSON_UNLINKED)}
                 WHEN death_date IS NULL THEN {sql_text(r.INVALID_DATE)}
                 WHEN year(death_date) < yob THEN {sql_text(r.DEATH_BEFORE_BIRTH)}
                 WHEN code IS NULL THEN {sql_text(r.INVALID_CODE)}
            END AS _reason,
            CASE WHEN _dup > 1 THEN 'same DCD_IDT_ENC, CER_LIG_NUM, ECD_CAU_RNG and ECD_CIM_COD'
                 WHEN pkey IS NULL THEN 'BEN_IDT_ANO matches no IR_BEN_R row'
                 WHEN death_date IS NULL THEN 'BEN_DCD_DTE missing or not a date'
                 WHEN year(death_date) < yob THEN 'BEN_DCD_DTE before the birth year'
                 ELSE 'ECD_CIM_COD is not a CIM-10 code'
            END AS _detail
        FROM ranked
    """)
    file_rejections(con, "ecd_checked", "KI_ECD_R", "ckey")
    con.execute(f"""
        CREATE TABLE stage__condition_occurrence__ki_ecd_r AS
        SELECT ckey AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key,
               death_date AS condition_start_date, death_date AS condition_end_date,
               CAST({c.TYPE_DEATH_CERTIFICATE} AS INTEGER) AS condition_type_concept_id,
               {sql_text(c.VOCAB_CIM10)} AS condition_concept_id__vocab,
               code AS condition_concept_id__code,
               snds_text(ECD_CIM_COD) AS condition_source_value,
               'cause of death, rank ' || coalesce(trim(ECD_CAU_RNG), '?')
                   AS condition_status_source_value
        FROM ecd_checked WHERE _reason IS NULL
    """)
