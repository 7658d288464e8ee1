"""``ehds omop ...``: build, load, generate and profile OMOP CDM v5.4 databases."""

from __future__ import annotations

import argparse
from pathlib import Path

from ehds.cli.db_arguments import add_db_arguments, db_from_args


def _load(args: argparse.Namespace) -> int:
    from ehds.omop.loader import load_cdm

    report = load_cdm(
        Path(args.source), db_from_args(args), renumber_duplicate_keys=args.renumber_duplicate_keys
    )
    print(report.render())
    return 0


def _vocab_load(args: argparse.Namespace) -> int:
    from ehds.omop.vocabulary import load_vocabulary

    report = load_vocabulary(Path(args.source), db_from_args(args))
    print(report.render())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ehds.omop.synth import SynthOptions, generate

    options = SynthOptions(
        persons=args.persons, seed=args.seed, profile=args.profile, id_offset=args.id_offset
    )
    report = generate(db_from_args(args), options)
    print(report.render())
    return 0


def _init(args: argparse.Namespace) -> int:
    from ehds.omop.install import create_empty_cdm

    db = db_from_args(args)
    tables = create_empty_cdm(db)
    print(f"{len(tables)} OMOP CDM v5.4 tables present in {db.describe()}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from ehds.omop.profile import profile_cdm

    print(profile_cdm(db_from_args(args)).render())
    return 0


def _dq(args: argparse.Namespace) -> int:
    import json

    from ehds.omop.dq import run_dq

    report = run_dq(db_from_args(args), only=args.check or None)
    if args.format == "json":
        text = json.dumps(report.to_dqd_json(), indent=2) + "\n"
    elif args.format == "html":
        text = report.render_html()
    else:
        text = report.render_table() + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(report.summary())
        print(f"{args.format} report written to {args.out}")
    else:
        print(text, end="")
    failing = {"none": [], "any": report.failed(), "conformance": report.failed("conformance")}
    return 1 if failing[args.fail_on] else 0


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    omop = areas.add_parser(
        "omop", help="OMOP CDM v5.4: load, vocabulary, synthesize, profile, data quality"
    )
    commands = omop.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create an empty CDM (all 39 tables, 3 schemas)")
    add_db_arguments(init)
    init.set_defaults(handler=_init)

    load = commands.add_parser(
        "load",
        help="load a CDM (CSV or Parquet folder, zip, or DuckDB file; v5.3 is upgraded)",
    )
    load.add_argument("--from", dest="source", required=True, metavar="DIR|ZIP|DUCKDB_FILE")
    load.add_argument(
        "--renumber-duplicate-keys",
        action="store_true",
        help="keep rows whose integer primary key repeats an earlier row's, with a fresh id "
        "(for broken public extracts such as Eunomia GiBleed); the default refuses them",
    )
    add_db_arguments(load)
    load.set_defaults(handler=_load)

    vocab = commands.add_parser("vocab", help="OMOP standardized vocabularies")
    vocab_commands = vocab.add_subparsers(dest="vocab_command", required=True, metavar="COMMAND")
    vocab_load = vocab_commands.add_parser("load", help="load an OHDSI Athena download")
    vocab_load.add_argument("--from", dest="source", required=True, metavar="DIR|ZIP")
    add_db_arguments(vocab_load)
    vocab_load.set_defaults(handler=_vocab_load)

    synth = commands.add_parser("synth", help="generate a synthetic CDM for a country profile")
    synth.add_argument("--persons", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--profile", choices=["fr", "fi", "dk"], default="fr")
    synth.add_argument(
        "--id-offset",
        type=int,
        default=0,
        help="added to every generated id, so that several nodes hold disjoint ids",
    )
    add_db_arguments(synth)
    synth.set_defaults(handler=_synth)

    profile = commands.add_parser(
        "profile", help="record counts, persons by sex and age band, date ranges, versions"
    )
    add_db_arguments(profile)
    profile.set_defaults(handler=_profile)

    dq = commands.add_parser(
        "dq",
        help="data-quality checks (OHDSI DQD style): conformance, completeness, plausibility",
    )
    dq.add_argument("--format", choices=["table", "json", "html"], default="table")
    dq.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    dq.add_argument(
        "--fail-on",
        choices=["none", "conformance", "any"],
        default="none",
        help="exit 1 when a check of this kind fails (default: none, exit 0)",
    )
    dq.add_argument(
        "--check",
        action="append",
        metavar="NAME",
        help="run only this check (DQD name, e.g. isForeignKey); repeatable",
    )
    add_db_arguments(dq)
    dq.set_defaults(handler=_dq)
