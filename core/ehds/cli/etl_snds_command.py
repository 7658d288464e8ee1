"""``ehds etl snds SOURCE_DIR --db ... [--stcm FILE.csv]``: map a French SNDS extract
(IR_BEN_R, DCIR, PMSI MCO, IR_IMB_R, CepiDc) into the CDM.

``--stcm`` loads the partner's ``source_to_concept_map`` CSV (CIM10, CCAM, CIP13 codes to
standard concepts) into the target vocabulary first, replacing the mappings of the
vocabularies the file covers. Mapping choices: docs/connectors/snds.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ehds.cli.etl_common import add_etl_arguments, run_connector_from_args


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "snds",
        help="map a French SNDS extract (IR_BEN_R, DCIR, PMSI MCO, ALD, CepiDc) into OMOP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", type=Path, metavar="SOURCE_DIR", help="folder of the extract (CSV or Parquet)"
    )
    parser.add_argument(
        "--stcm",
        type=Path,
        metavar="FILE.csv",
        help="a source_to_concept_map CSV to load into the target vocabulary before the run",
    )
    add_etl_arguments(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ehds.cli.db_arguments import db_from_args
    from ehds.connectors.snds import SndsConnector
    from ehds.connectors.snds.stcm import load_stcm

    if args.stcm is not None:
        count = load_stcm(args.stcm, db_from_args(args))
        print(f"source_to_concept_map: {count} row(s) loaded from {args.stcm}")
    return run_connector_from_args(SndsConnector(args.source), args)
