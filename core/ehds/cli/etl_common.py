"""Options and the run step every ``ehds etl <source>`` command shares: the target database,
the mode (replace or incremental), the id offset and the JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ehds.cli.db_arguments import add_db_arguments, db_from_args

if TYPE_CHECKING:
    from ehds.connectors.connector import Connector


def add_etl_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_arguments(parser)
    parser.add_argument(
        "--mode",
        choices=("replace", "incremental"),
        default="replace",
        help="replace: re-fill the connector's tables (default); incremental: replace the rows "
        "of keys seen before and append the others",
    )
    parser.add_argument(
        "--id-offset",
        type=int,
        default=0,
        metavar="N",
        help="new ids start above N (keeps ids of several sources apart); default 0",
    )
    parser.add_argument(
        "--report-json", type=Path, metavar="FILE", help="also write the run report as JSON"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="where the temporary stage folder goes (default: the system temp folder)",
    )
    parser.add_argument(
        "--dq",
        choices=("summary", "none"),
        default="summary",
        help="after the load, run the data-quality checks (ehds omop dq) and print their summary "
        "(default); none: skip them",
    )


def run_connector_from_args(connector: Connector, args: argparse.Namespace) -> int:
    """Run ``connector`` as the options say, print its report and the data-quality summary."""
    from ehds.connectors.connector import run_connector

    db = db_from_args(args)
    report = run_connector(
        connector,
        db,
        mode=args.mode,
        id_offset=args.id_offset,
        work_dir=getattr(args, "work_dir", None),
    )
    print(report.render())
    if args.dq == "summary":
        from ehds.omop.dq import run_dq

        print(run_dq(db).summary())
        print(f"details: ehds omop dq --db {db.describe()} --format table|json|html")
    if args.report_json is not None:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(
            json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return 0
