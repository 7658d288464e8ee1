"""PMSI MCO (short-stay hospital discharges): T_MCOaaB + T_MCOaaC -> visit_occurrence;
T_MCOaaB, T_MCOaaUM, T_MCOaaD diagnoses -> condition_occurrence; T_MCOaaA acts ->
procedure_occurrence.

A stay is (year, ETA_NUM, RSA_NUM). T_MCOaaB holds the stay, T_MCOaaC the patient link
(NIR_ANO_17, which is IR_BEN_R's BEN_NIR_PSA) and the stay dates (EXE_SOI_DTD, EXE_SOI_DTF);
without its C row a stay cannot be attached to a person and is rejected. SNDS practice is
followed for stay selection: a stay grouped in error (GHM starting with 90) or whose C row
has a non-zero return code (NIR_RET, NAI_RET, SEX_RET, SEJ_RET, FHO_RET, PMS_RET, DAT_RET,
COH_NAI_RET, COH_SEX_RET) is rejected with its reason. NIR_ANO_17 carries no twin rank: a
stay whose NIR_ANO_17 matches several IR_BEN_R persons is rejected as ambiguous.
"""

from __future__ import annotations

import duckdb

from ehds.connectors.snds import concepts as c
from ehds.connectors.snds import rejections as r
from ehds.connectors.snds.rejections import file_rejections, sql_text
from ehds.connectors.snds.sources import PMSI_RETURN_CODES


def _stay_key(alias: str) -> str:
    """``T_MCO<year>/<ETA_NUM>|<RSA_NUM>`` of the row ``alias`` (NULL when a part is missing)."""
    return (
        f"'T_MCO' || {alias}._year || '/' || snds_text({alias}.ETA_NUM) || '|' "
        f"|| CAST(snds_int({alias}.RSA_NUM) AS VARCHAR)"
    )


def map_pmsi(con: duckdb.DuckDBPyConnection) -> None:
    _map_stays(con)
    _map_diagnoses(con)
    _map_acts(con)


def _map_stays(con: duckdb.DuckDBPyConnection) -> None:
    bad_code = " OR ".join(f"coalesce(snds_int(c.{name}), 0) <> 0" for name in PMSI_RETURN_CODES)
    con.execute(f"""
        CREATE TABLE mco_c AS
        SELECT s.*, {_stay_key("s")} AS vkey,
               row_number() OVER (PARTITION BY {_stay_key("s")} ORDER BY _file, _line) AS _dup
        FROM src_t_mcoaac s
    """)
    con.execute("""
        CREATE TABLE psa_persons AS
        SELECT substr(pkey, length('IR_BEN_R/') + 1, strpos(substr(pkey, 10), '|') - 1) AS psa,
               count(*) AS n, min(pkey) AS pkey
        FROM persons GROUP BY psa
    """)
    con.execute(f"""
        CREATE TABLE mcob_checked AS
        WITH k AS (
            SELECT b.*, {_stay_key("b")} AS vkey,
                   CAST(to_json(b) AS VARCHAR) AS _record
            FROM src_t_mcoaab b
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY vkey ORDER BY _file, _line) AS _dup
            FROM k
        ), linked AS (
            SELECT b.*, c.vkey IS NOT NULL AS has_c, ({bad_code}) AS bad_code,
                   p.n AS persons, p.pkey,
                   coalesce(snds_date(c.EXE_SOI_DTD), snds_date(c.ENT_DAT)) AS start_date,
                   coalesce(snds_date(c.EXE_SOI_DTF), snds_date(c.SOR_DAT)) AS end_date
            FROM ranked b
            LEFT JOIN mco_c c ON c.vkey = b.vkey AND c._dup = 1
            LEFT JOIN psa_persons p ON p.psa = trim(c.NIR_ANO_17)
        )
        SELECT *,
            CASE WHEN vkey IS NULL THEN {sql_text(r.MISSING_KEY)}
                 WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_KEY)}
                 WHEN NOT has_c THEN {sql_text(r.PMSI_NO_PATIENT_LINK)}
                 WHEN upper(trim(GRG_GHM)) LIKE '90%' THEN {sql_text(r.PMSI_ERROR_GHM)}
                 WHEN bad_code THEN {sql_text(r.PMSI_LINK_INVALID)}
                 WHEN persons IS NULL THEN {sql_text(r.PERSON_UNLINKED)}
                 WHEN persons > 1 THEN {sql_text(r.PERSON_AMBIGUOUS)}
                 WHEN start_date IS NULL THEN {sql_text(r.INVALID_DATE)}
                 WHEN end_date < start_date THEN {sql_text(r.END_BEFORE_START)}
            END AS _reason,
            CASE WHEN vkey IS NULL THEN 'ETA_NUM or RSA_NUM missing'
                 WHEN _dup > 1 THEN 'another T_MCOaaB row has the same year, ETA_NUM, RSA_NUM'
                 WHEN NOT has_c THEN 'no T_MCOaaC row (patient link) for the stay'
                 WHEN upper(trim(GRG_GHM)) LIKE '90%' THEN 'GRG_GHM in CMD 90 (grouping error)'
                 WHEN bad_code THEN 'a T_MCOaaC return code ({", ".join(PMSI_RETURN_CODES)}) '
                     || 'is not 0'
                 WHEN persons IS NULL THEN 'T_MCOaaC.NIR_ANO_17 matches no IR_BEN_R.BEN_NIR_PSA'
                 WHEN persons > 1 THEN 'T_MCOaaC.NIR_ANO_17 matches several IR_BEN_R persons '
                     || '(BEN_RNG_GEM cannot be told)'
                 WHEN start_date IS NULL THEN 'T_MCOaaC EXE_SOI_DTD (or ENT_DAT) missing or '
                     || 'not a date'
                 ELSE 'T_MCOaaC EXE_SOI_DTF before EXE_SOI_DTD'
            END AS _detail
        FROM linked
    """)
    file_rejections(con, "mcob_checked", "T_MCOaaB", "vkey")
    # Patient links without a stay are counted too.
    con.execute(f"""
        INSERT INTO rejected
        SELECT c._file, c._file || ':' || CAST(c._line AS VARCHAR), 'T_MCOaaC', c.vkey,
               {sql_text(r.PMSI_NO_STAY)}, 'no T_MCOaaB row with the same year, ETA_NUM, RSA_NUM',
               CAST(to_json(c) AS VARCHAR)
        FROM mco_c c
        WHERE c.vkey IS NULL OR c.vkey NOT IN (SELECT vkey FROM mcob_checked WHERE vkey IS NOT NULL)
    """)
    con.execute("""
        CREATE TABLE pmsi_stays AS
        SELECT vkey, pkey, start_date, end_date, _file, _line,
               DGN_PAL, DGN_REL, ENT_MOD, ENT_PRV, SOR_MOD
        FROM mcob_checked WHERE _reason IS NULL
    """)
    con.execute(f"""
        CREATE TABLE stage__visit_occurrence__pmsi_mco AS
        SELECT vkey AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key,
               CAST(CASE WHEN trim(ENT_PRV) = {sql_text(c.PMSI_PROVENANCE_EMERGENCY)}
                             AND end_date > start_date THEN {c.VISIT_ER_AND_INPATIENT}
                         WHEN end_date > start_date THEN {c.VISIT_INPATIENT}
                         ELSE {c.VISIT_OUTPATIENT} END AS INTEGER) AS visit_concept_id,
               start_date AS visit_start_date, coalesce(end_date, start_date) AS visit_end_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS visit_type_concept_id,
               'PMSI MCO' AS visit_source_value,
               snds_text(ENT_MOD) || coalesce('/' || snds_text(ENT_PRV), '')
                   AS admitted_from_source_value,
               snds_text(SOR_MOD) AS discharged_to_source_value
        FROM pmsi_stays
    """)


def _child(con: duckdb.DuckDBPyConnection, source: str, name: str) -> None:
    """``name``: rows of a PMSI child table with their stay key (NULL when no valid stay)."""
    con.execute(f"""
        CREATE TABLE {name} AS
        SELECT s.*, {_stay_key("s")} AS skey,
               p.vkey, p.pkey, p.start_date, p.end_date,
               CAST(to_json(s) AS VARCHAR) AS _record
        FROM {source} s
        LEFT JOIN pmsi_stays p ON p.vkey = {_stay_key("s")}
    """)


def _map_diagnoses(con: duckdb.DuckDBPyConnection) -> None:
    _child(con, "src_t_mcoaad", "mcod")
    _child(con, "src_t_mcoaaum", "mcoum")
    detail_missing = "'no mapped stay (T_MCOaaB + T_MCOaaC) with this year, ETA_NUM, RSA_NUM'"
    for name, record_type, columns in (
        ("mcod", "T_MCOaaD", ("ASS_DGN",)),
        ("mcoum", "T_MCOaaUM", ("DGN_PAL", "DGN_REL")),
    ):
        bad = " OR ".join(
            f"(snds_text({col}) IS NOT NULL AND cim10({col}) IS NULL)" for col in columns
        )
        con.execute(f"""
            CREATE TABLE {name}_checked AS
            SELECT *,
                CASE WHEN vkey IS NULL THEN {sql_text(r.PMSI_STAY_MISSING)}
                     WHEN {bad} THEN {sql_text(r.INVALID_CODE)} END AS _reason,
                CASE WHEN vkey IS NULL THEN {detail_missing}
                     ELSE '{"/".join(columns)} is not a CIM-10 code' END AS _detail
            FROM {name}
        """)
        file_rejections(con, f"{name}_checked", record_type, "skey")
    # Stay-level codes that do not parse are rejected apart; the stay itself stays mapped.
    con.execute(f"""
        INSERT INTO rejected
        SELECT _file, _file || ':' || CAST(_line AS VARCHAR), 'T_MCOaaB.DGN_PAL/DGN_REL', vkey,
               {sql_text(r.INVALID_CODE)}, 'DGN_PAL or DGN_REL is not a CIM-10 code; the stay '
               || 'is mapped without it', NULL
        FROM pmsi_stays
        WHERE (snds_text(DGN_PAL) IS NOT NULL AND cim10(DGN_PAL) IS NULL)
           OR (snds_text(DGN_REL) IS NOT NULL AND cim10(DGN_REL) IS NULL)
    """)
    # Every diagnosis of a stay, ranked DP > DR > unit DP > unit DR > DAS; one condition per
    # (stay, code) with the best rank.
    con.execute(f"""
        CREATE TABLE stage__condition_occurrence__pmsi_mco AS
        WITH d AS (
            SELECT vkey, pkey, start_date, end_date, _file, _line,
                   cim10(DGN_PAL) AS code, DGN_PAL AS raw, 1 AS rank, 'DP' AS role
            FROM pmsi_stays
            UNION ALL SELECT vkey, pkey, start_date, end_date, _file, _line,
                   cim10(DGN_REL), DGN_REL, 2, 'DR' FROM pmsi_stays
            UNION ALL SELECT vkey, pkey, start_date, end_date, _file, _line,
                   cim10(DGN_PAL), DGN_PAL, 3, 'DP UM' FROM mcoum_checked WHERE _reason IS NULL
            UNION ALL SELECT vkey, pkey, start_date, end_date, _file, _line,
                   cim10(DGN_REL), DGN_REL, 4, 'DR UM' FROM mcoum_checked WHERE _reason IS NULL
            UNION ALL SELECT vkey, pkey, start_date, end_date, _file, _line,
                   cim10(ASS_DGN), ASS_DGN, 5, 'DAS' FROM mcod_checked WHERE _reason IS NULL
        ), best AS (
            SELECT *, row_number() OVER (
                PARTITION BY vkey, code ORDER BY rank, _file, _line) AS _n
            FROM d WHERE code IS NOT NULL
        )
        SELECT vkey || '|' || code AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key, vkey AS visit_occurrence_id__key,
               start_date AS condition_start_date, end_date AS condition_end_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS condition_type_concept_id,
               CAST(CASE WHEN rank = 1 THEN {c.STATUS_PRIMARY} ELSE {c.STATUS_SECONDARY} END
                    AS INTEGER) AS condition_status_concept_id,
               role AS condition_status_source_value,
               {sql_text(c.VOCAB_CIM10)} AS condition_concept_id__vocab,
               code AS condition_concept_id__code, snds_text(raw) AS condition_source_value
        FROM best WHERE _n = 1
    """)


def _map_acts(con: duckdb.DuckDBPyConnection) -> None:
    _child(con, "src_t_mcoaaa", "mcoa")
    con.execute(f"""
        CREATE TABLE mcoa_checked AS
        WITH k AS (
            SELECT *, ccam(CDC_ACT) AS code,
                   CASE WHEN snds_text(ENT_DAT_DEL) IS NULL THEN 0
                        ELSE snds_int(ENT_DAT_DEL) END AS delay,
                   row_number() OVER (
                       PARTITION BY skey ORDER BY CDC_ACT, ENT_DAT_DEL, ACV_ACT, PHA_ACT,
                                                  _file, _line) AS n
            FROM mcoa
        )
        SELECT *, start_date + CAST(delay AS INTEGER) AS act_date,
            CASE WHEN vkey IS NULL THEN {sql_text(r.PMSI_STAY_MISSING)}
                 WHEN code IS NULL THEN {sql_text(r.INVALID_CODE)}
                 WHEN delay IS NULL THEN {sql_text(r.INVALID_DATE)}
                 WHEN delay < 0 OR start_date + CAST(delay AS INTEGER) > end_date
                     THEN {sql_text(r.ACT_OUTSIDE_STAY)}
            END AS _reason,
            CASE WHEN vkey IS NULL
                     THEN 'no mapped stay (T_MCOaaB + T_MCOaaC) with this year, ETA_NUM, RSA_NUM'
                 WHEN code IS NULL THEN 'CDC_ACT is not a CCAM code (4 letters, 3 digits)'
                 WHEN delay IS NULL THEN 'ENT_DAT_DEL is not a number of days'
                 ELSE 'stay start + ENT_DAT_DEL falls outside the stay'
            END AS _detail
        FROM k
    """)
    file_rejections(con, "mcoa_checked", "T_MCOaaA", "skey || '|' || CAST(n AS VARCHAR)")
    con.execute(f"""
        CREATE TABLE stage__procedure_occurrence__pmsi_mco AS
        SELECT vkey || '|' || CAST(n AS VARCHAR) AS _key,
               _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key, vkey AS visit_occurrence_id__key,
               act_date AS procedure_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS procedure_type_concept_id,
               CAST(snds_int(NBR_EXE_ACT) AS INTEGER) AS quantity,
               {sql_text(c.VOCAB_CCAM)} AS procedure_concept_id__vocab,
               code AS procedure_concept_id__code, code AS procedure_source_value,
               snds_text(MOD_ACT) AS modifier_source_value
        FROM mcoa_checked WHERE _reason IS NULL
    """)
