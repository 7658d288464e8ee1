"""``ehds etl validate MAPPING.yaml`` and ``ehds etl csv MAPPING.yaml --db ...``: a partner's
CSV/Parquet extract mapped into OMOP by a declarative YAML file (docs/connectors/mapping.md).

``validate`` prints ``OK`` or every problem as ``file:line: key: message`` (exit 1 on errors);
``csv`` refuses a mapping with errors before writing anything, then runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ehds.cli.etl_common import add_etl_arguments, run_connector_from_args


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a CSV/Parquet mapping file against the OMOP spec and its source files",
    )
    _add_mapping_arguments(validate)
    validate.add_argument(
        "--no-sources",
        action="store_true",
        help="check the file and the OMOP model only, without opening the source files",
    )
    validate.add_argument(
        "--print-sql",
        choices=("duckdb", "spark"),
        help="also print the compiled query of each table in this dialect",
    )
    validate.set_defaults(handler=_validate)

    run = commands.add_parser(
        "csv", help="map CSV/Parquet files into OMOP with a YAML mapping (see `etl validate`)"
    )
    _add_mapping_arguments(run)
    add_etl_arguments(run)
    run.set_defaults(handler=_run)


def _add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mapping", type=Path, metavar="MAPPING.yaml", help="the mapping file")
    parser.add_argument(
        "--source-dir",
        type=Path,
        metavar="DIR",
        help="folder of the source files (default: the mapping's source_dir, or its own folder)",
    )


def _validate(args: argparse.Namespace) -> int:
    from ehds.connectors.mapping import MappingError, check_mapping, compile_mapping, load_mapping

    try:
        mapping = load_mapping(args.mapping, source_dir=args.source_dir)
    except MappingError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    result = check_mapping(mapping, read_sources=not args.no_sources)
    for problem in result.problems:
        print(problem)
    if result.errors:
        print(f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)")
        return 1
    if args.print_sql:
        for query in compile_mapping(mapping, args.print_sql):
            print(
                f"-- {query.table}\n{query.sql};\n-- {query.table}: rejections\n{query.reject_sql};"
            )
    tables = ", ".join(mapping.table_names())
    print(f"OK: {args.mapping} has {len(mapping.tables)} table mapping(s) into {tables}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ehds.connectors.mapping import MappingConnector, load_mapping

    connector = MappingConnector(load_mapping(args.mapping, source_dir=args.source_dir))
    result = connector.check()
    result.raise_fatal()
    for problem in result.problems:
        suffix = " (its rows are quarantined)" if problem.kind == "missing_column" else ""
        print(f"{problem}{suffix}", file=sys.stderr)
    return run_connector_from_args(connector, args)
