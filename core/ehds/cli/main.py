"""The ``ehds`` command: one entry point, one sub-command group per area.

Commands are thin: parse arguments, call one function of the area's library, print. Library
code never exits; typed errors (:class:`ehds.core.errors.EhdsError`) become a one-line
message on stderr and a non-zero exit code here, and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ehds.cli import (
    admin_commands,
    audit_commands,
    cohort_command,
    coordinator_commands,
    demo_command,
    etl_commands,
    fl_commands,
    node_commands,
    omop_commands,
    permit_commands,
    pki_commands,
    study_commands,
)
from ehds.core.errors import EhdsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ehds", description="Federated node software for the European Health Data Space."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    areas = parser.add_subparsers(dest="area", required=True, metavar="AREA")
    omop_commands.register(areas)
    pki_commands.register(areas)
    coordinator_commands.register(areas)
    node_commands.register(areas)
    study_commands.register(areas)
    admin_commands.register(areas)
    audit_commands.register(areas)
    permit_commands.register(areas)
    cohort_command.register(areas)
    demo_command.register(areas)
    fl_commands.register(areas)
    etl_commands.register(areas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.handler(args)
    except EhdsError as exc:
        print(f"ehds: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ehds: interrupted", file=sys.stderr)
        return 130
    return result


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
