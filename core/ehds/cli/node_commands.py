"""`ehds node serve|check`: run a node agent, or check its configuration without connecting."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = areas.add_parser(
        "node",
        help="run a federation node (dials out to the coordinator)",
        description="A node runs approved analyses on its own OMOP CDM and releases only what "
        "its site policy (policy.yaml) allows.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="connect to the coordinator and run tasks until SIGTERM/SIGINT",
        description="Prints 'node NAME ready (health HOST:PORT)' once the health port answers, "
        "then holds a stream to the coordinator (reconnecting as needed) until SIGTERM or "
        "SIGINT. SIGHUP re-reads the policy.",
    )
    serve.add_argument("--config", type=Path, required=True, help="node.yaml")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, unauthenticated connection: local development only",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check",
        help="validate node.yaml, the policy, the certificate and the CDM; print the Hello profile",
    )
    check.add_argument("--config", type=Path, required=True, help="node.yaml")
    check.set_defaults(handler=_check)


def _serve(args: argparse.Namespace) -> int:
    from ehds.node.service import serve

    if args.insecure:
        from ehds.federation.transport import INSECURE_WARNING

        print(INSECURE_WARNING, file=sys.stderr, flush=True)

    def announce(line: str) -> None:
        print(line, flush=True)

    serve(args.config, insecure=args.insecure, announce=announce)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ehds.node.service import check

    result = check(args.config)
    profile = result.profile
    document = {
        "node": result.node_name,
        "policy": {
            "path": str(result.config.policy),
            "version": result.policy.version,
            "min_cell_count": result.policy.min_cell_count,
        },
        "hello_profile": dataclasses.asdict(profile),
    }
    print(json.dumps(document, indent=2))
    status = 0
    for ref in result.unknown_analyses:
        print(
            f"ehds: warning: the policy allows {ref}, which this software does not have",
            file=sys.stderr,
        )
    if not result.cdm_readable:
        print(
            f"ehds: error: cannot read cdm_source in the CDM {result.config.cdm.url} "
            "(run with -v for the reason)",
            file=sys.stderr,
        )
        status = 1
    return status
