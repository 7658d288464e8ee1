"""The ``--db`` and schema options every command that opens a CDM shares."""

from __future__ import annotations

import argparse

from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import SchemaNames


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        required=True,
        help="target database: duckdb:///FILE, a FILE.duckdb path, or postgresql://USER@HOST/DB",
    )
    parser.add_argument("--cdm-schema", default="cdm", help="schema of the clinical tables")
    parser.add_argument("--vocab-schema", default="vocab", help="schema of the vocabulary")
    parser.add_argument("--results-schema", default="results", help="schema for cohorts")


def db_from_args(args: argparse.Namespace) -> CdmDatabase:
    schemas = SchemaNames(args.cdm_schema, args.vocab_schema, args.results_schema)
    return CdmDatabase.parse(args.db, schemas)
