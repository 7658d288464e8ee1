"""``ehds etl fhir SOURCE... --db URL``: load FHIR R4 bulk-export NDJSON (plain or gzip) and
Bundles into an OMOP CDM (see docs/connectors/fhir.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ehds.cli.etl_common import add_etl_arguments, run_connector_from_args


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fhir = commands.add_parser(
        "fhir",
        help="FHIR R4 bulk-export NDJSON (.ndjson, .ndjson.gz) and Bundles (.json) into OMOP",
    )
    fhir.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SOURCE",
        help="NDJSON or Bundle files, or folders searched for them",
    )
    fhir.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes that validate and map (default: one per CPU)",
    )
    fhir.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip validation by fhir.resources (about 15 times faster; a malformed resource "
        "is then rejected only where the mapping reads a wrong value)",
    )
    add_etl_arguments(fhir)
    fhir.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ehds.connectors.fhir.connector import FhirConnector, default_workers

    connector = FhirConnector(
        args.sources,
        workers=args.workers if args.workers is not None else default_workers(),
        validate=args.validate,
    )
    return run_connector_from_args(connector, args)
