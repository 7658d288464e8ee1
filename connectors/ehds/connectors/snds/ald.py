"""IR_IMB_R (long-term conditions, ALD, and other exemptions with a medical motive) ->
condition_occurrence.

One condition per exemption row whose medical motive is coded in CIM-10 (MED_NCL_IDT =
'CIM10'; an empty nomenclature is read as CIM-10 when the code has the CIM-10 shape). Rows in
another nomenclature are rejected with ``snds.unsupported_nomenclature``. Start: IMB_ALD_DTD;
end: IMB_ALD_DTF (SNDS placeholders such as 2999-12-31 for an open exemption read as no end).
"""

from __future__ import annotations

import duckdb

from ehds.connectors.snds import concepts as c
from ehds.connectors.snds import rejections as r
from ehds.connectors.snds.rejections import file_rejections, sql_text


def map_long_term_conditions(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE TABLE imb_checked AS
        WITH k AS (
            SELECT s.*, person_key(BEN_NIR_PSA, BEN_RNG_GEM) AS pkey,
                   snds_date(IMB_ALD_DTD) AS start_date, snds_date(IMB_ALD_DTF) AS end_date,
                   cim10(MED_MTF_COD) AS code,
                   upper(coalesce(snds_text(MED_NCL_IDT), 'CIM10')) AS nomenclature,
                   CAST(to_json(s) AS VARCHAR) AS _record
            FROM src_ir_imb_r s
        ), keyed AS (
            SELECT *, 'IR_IMB_R/' || concat_ws('|', substr(pkey, length('IR_BEN_R/') + 1),
                       coalesce(trim(IMB_ALD_NUM), ''), coalesce(trim(IMB_ETM_NAT), ''),
                       coalesce(CAST(start_date AS VARCHAR), ''),
                       coalesce(trim(MED_MTF_COD), '')) AS ckey
            FROM k
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY ckey ORDER BY _file, _line) AS _dup
            FROM keyed
        )
        SELECT *,
            CASE WHEN pkey IS NULL THEN {sql_text(r.MISSING_KEY)}
                 WHEN _dup > 1 THEN {sql_text(r.DUPLICATE_KEY)}
                 WHEN nomenclature NOT IN ('CIM10', 'CIM-10')
                     THEN {sql_text(r.UNSUPPORTED_NOMENCLATURE)}
                 WHEN code IS NULL THEN {sql_text(r.INVALID_CODE)}
                 WHEN start_date IS NULL THEN {sql_text(r.INVALID_DATE)}
                 WHEN end_date < start_date THEN {sql_text(r.END_BEFORE_START)}
            END AS _reason,
            CASE WHEN pkey IS NULL THEN 'BEN_NIR_PSA or BEN_RNG_GEM missing or not an integer'
                 WHEN _dup > 1 THEN 'same person, IMB_ALD_NUM, IMB_ETM_NAT, IMB_ALD_DTD '
                     || 'and MED_MTF_COD as an earlier row'
                 WHEN nomenclature NOT IN ('CIM10', 'CIM-10')
                     THEN 'MED_NCL_IDT is not CIM10: no mapping for that nomenclature'
                 WHEN code IS NULL THEN 'MED_MTF_COD is not a CIM-10 code'
                 WHEN start_date IS NULL THEN 'IMB_ALD_DTD missing or not a date'
                 ELSE 'IMB_ALD_DTF before IMB_ALD_DTD'
            END AS _detail
        FROM ranked
    """)
    file_rejections(con, "imb_checked", "IR_IMB_R", "ckey")
    con.execute(f"""
        CREATE TABLE stage__condition_occurrence__ir_imb_r AS
        SELECT ckey AS _key, _file || ':' || CAST(_line AS VARCHAR) AS _source,
               pkey AS person_id__key,
               start_date AS condition_start_date, end_date AS condition_end_date,
               CAST({c.TYPE_CLAIM} AS INTEGER) AS condition_type_concept_id,
               {sql_text(c.VOCAB_CIM10)} AS condition_concept_id__vocab,
               code AS condition_concept_id__code,
               snds_text(MED_MTF_COD) AS condition_source_value,
               'ALD ' || coalesce(trim(IMB_ALD_NUM), '?') AS condition_status_source_value
        FROM imb_checked WHERE _reason IS NULL
    """)
