"""Declarative CSV/Parquet mapping: a YAML file maps a partner's own extract into OMOP.

    load_mapping(path)           parse (parser.py): typed objects with file:line on every value
    check_mapping(mapping)       OMOP spec, SQL syntax, source headers, DuckDB binding (check.py)
    compile_mapping(m, dialect)  one SQL query per table, DuckDB or Spark SQL (compile.py)
    MappingConnector(mapping)    the connector run by ``ehds etl csv`` (connector.py)

The file format is documented for operators in docs/connectors/mapping.md.
"""

from __future__ import annotations

from ehds.connectors.mapping.check import CheckResult, check_mapping
from ehds.connectors.mapping.compile import TableQuery, compile_mapping
from ehds.connectors.mapping.connector import MappingConnector, MappingRunError
from ehds.connectors.mapping.model import Mapping, MappingError, Problem, SourceFile
from ehds.connectors.mapping.parser import load_mapping

__all__ = [
    "CheckResult",
    "Mapping",
    "MappingConnector",
    "MappingError",
    "MappingRunError",
    "Problem",
    "SourceFile",
    "TableQuery",
    "check_mapping",
    "compile_mapping",
    "load_mapping",
]
