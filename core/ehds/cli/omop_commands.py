"""``ehds omop ...``: build, load, generate and profile OMOP CDM v5.4 databases."""

from __future__ import annotations

import argparse
from pathlib import Path

from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import SchemaNames


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        required=True,
        help="target database: duckdb:///FILE, a FILE.duckdb path, or postgresql://USER@HOST/DB",
    )
    parser.add_argument("--cdm-schema", default="cdm", help="schema of the clinical tables")
    parser.add_argument("--vocab-schema", default="vocab", help="schema of the vocabulary")
    parser.add_argument("--results-schema", default="results", help="schema for cohorts")


def _db(args: argparse.Namespace) -> CdmDatabase:
    schemas = SchemaNames(args.cdm_schema, args.vocab_schema, args.results_schema)
    return CdmDatabase.parse(args.db, schemas)


def _load(args: argparse.Namespace) -> int:
    from ehds.omop.loader import load_cdm

    report = load_cdm(
        Path(args.source), _db(args), renumber_duplicate_keys=args.renumber_duplicate_keys
    )
    print(report.render())
    return 0


def _vocab_load(args: argparse.Namespace) -> int:
    from ehds.omop.vocabulary import load_vocabulary

    report = load_vocabulary(Path(args.source), _db(args))
    print(report.render())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ehds.omop.synth import SynthOptions, generate

    options = SynthOptions(
        persons=args.persons, seed=args.seed, profile=args.profile, id_offset=args.id_offset
    )
    report = generate(_db(args), options)
    print(report.render())
    return 0


def _init(args: argparse.Namespace) -> int:
    from ehds.omop.install import create_empty_cdm

    db = _db(args)
    tables = create_empty_cdm(db)
    print(f"{len(tables)} OMOP CDM v5.4 tables present in {db.describe()}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from ehds.omop.profile import profile_cdm

    print(profile_cdm(_db(args)).render())
    return 0


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    omop = areas.add_parser("omop", help="OMOP CDM v5.4: load, vocabulary, synthesize, profile")
    commands = omop.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create an empty CDM (all 39 tables, 3 schemas)")
    _add_db(init)
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
    _add_db(load)
    load.set_defaults(handler=_load)

    vocab = commands.add_parser("vocab", help="OMOP standardized vocabularies")
    vocab_commands = vocab.add_subparsers(dest="vocab_command", required=True, metavar="COMMAND")
    vocab_load = vocab_commands.add_parser("load", help="load an OHDSI Athena download")
    vocab_load.add_argument("--from", dest="source", required=True, metavar="DIR|ZIP")
    _add_db(vocab_load)
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
    _add_db(synth)
    synth.set_defaults(handler=_synth)

    profile = commands.add_parser(
        "profile", help="record counts, persons by sex and age band, date ranges, versions"
    )
    _add_db(profile)
    profile.set_defaults(handler=_profile)
