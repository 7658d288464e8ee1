"""French SNDS connector: beneficiaries (IR_BEN_R), outpatient claims (DCIR: ER_PRS_F,
ER_PHA_F, ER_CAM_F), hospital stays (PMSI MCO: T_MCOaaB, C, D, UM, A), long-term conditions
(IR_IMB_R) and causes of death (KI_CCI_R, KI_ECD_R) -> OMOP, in DuckDB SQL.

Mapping choices: docs/connectors/snds.md.
"""

from ehds.connectors.snds.connector import SNDS_TABLES, SndsConnector

__all__ = ["SNDS_TABLES", "SndsConnector"]
