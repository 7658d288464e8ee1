"""``ehds etl ...``: map a partner's own data (FHIR R4, French SNDS, CSV/Parquet by a YAML
mapping) into an OMOP CDM, on the embedded engines or on Spark.

One module per source registers its commands here, so that each connector's options live
beside nothing else.
"""

from __future__ import annotations

import argparse

from ehds.cli import etl_fhir_command, etl_mapping_commands, etl_snds_command, etl_spark_commands


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    etl = areas.add_parser("etl", help="map local sources (FHIR, SNDS, CSV) into OMOP")
    commands = etl.add_subparsers(dest="command", required=True, metavar="COMMAND")
    etl_fhir_command.register(commands)
    etl_snds_command.register(commands)
    etl_mapping_commands.register(commands)
    etl_spark_commands.register(commands)
