"""`ehds node serve|check|migrate|policy|review|privacy`: run a node agent, check its
configuration, migrate its state database, explain its policy, review the results it holds for
release, and show its privacy budget."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ehds.node.config import CdmConfig
    from ehds.node.review import ReviewStore


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

    migrate = commands.add_parser(
        "migrate",
        help="create or bring the state database to this version's schema (serve does it too)",
        description="Creates the node's state database (`state` in node.yaml) or migrates it to "
        "the newest schema, then prints 'state database at revision REV'. No node needs to "
        "run (a Kubernetes initContainer runs it before the node starts); it refuses while a "
        "running node holds the state file.",
    )
    migrate.add_argument("--config", type=Path, required=True, help="node.yaml")
    migrate.set_defaults(handler=_migrate)

    _register_policy(commands)
    _register_review(commands)
    _register_privacy(commands)


def _register_policy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="explain the site policy")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    explain = actions.add_parser(
        "explain",
        help="what the policy allows, and its verdict on a hypothetical task",
        description="Prints the pinned HDAB keys (with key ids), the analyses with versions and "
        "release modes, the researchers, the threshold and the retention. With --analysis, "
        "--researcher and/or --permit: each rule's answer for that task, in the order the node "
        "applies them, and the verdict (exit 1 when a rule refuses).",
    )
    explain.add_argument("--config", type=Path, required=True, help="node.yaml")
    explain.add_argument("--analysis", metavar="NAME[@VERSION]", help="the task's analysis")
    explain.add_argument("--researcher", metavar="NAME", help="who would submit the study")
    explain.add_argument("--permit", type=Path, metavar="FILE", help="the data permit document")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(handler=_policy_explain)


def _register_review(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    review = commands.add_parser(
        "review",
        help="results held for release (policy release: manual): list, show, release, reject",
        description="Results of analyses the policy releases manually wait at the node until "
        "an operator releases or rejects them. Decisions are recorded in the node's state "
        "database; the running node applies them within a second, audits them and sends the "
        "result (release) or RELEASE_REJECTED (reject).",
    )
    actions = review.add_subparsers(dest="review_command", required=True, metavar="COMMAND")
    listing = actions.add_parser("list", help="the results held for release")
    show = actions.add_parser(
        "show", help="exactly what would be sent: the rows of a held result and its SHA-256"
    )
    show.add_argument("task_id", metavar="TASK")
    show.add_argument(
        "--raw", action="store_true", help="write the exact bytes that would be sent to stdout"
    )
    release = actions.add_parser("release", help="release a held result to the coordinator")
    release.add_argument("task_id", metavar="TASK")
    reject = actions.add_parser("reject", help="reject a held result (RELEASE_REJECTED)")
    reject.add_argument("task_id", metavar="TASK")
    for action in (listing, show, release, reject):
        action.add_argument("--config", type=Path, required=True, help="node.yaml")
    for action in (release, reject):
        action.add_argument(
            "--as",
            dest="operator",
            metavar="NAME",
            help="who decides, as the audit chain names them (default: the OS user)",
        )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_review_list)
    show.set_defaults(handler=_review_show)
    release.set_defaults(handler=_review_decide, decision="release")
    reject.set_defaults(handler=_review_decide, decision="reject")


def _register_privacy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    privacy = commands.add_parser(
        "privacy", help="the differential-privacy budget: ledger of charges, remaining budgets"
    )
    actions = privacy.add_subparsers(dest="privacy_command", required=True, metavar="COMMAND")
    ledger = actions.add_parser(
        "ledger",
        help="every charge, and the budget spent and left per data permit and researcher",
        description="Reads the node's state database (beside a running node). Remaining "
        "budgets are computed against privacy.budget of the policy file as it is now.",
    )
    ledger.add_argument("--config", type=Path, required=True, help="node.yaml")
    ledger.add_argument("--permit", metavar="ID", help="only this data permit's charges")
    ledger.add_argument("--json", action="store_true", help="machine-readable output")
    ledger.set_defaults(handler=_privacy_ledger)


def _privacy_ledger(args: argparse.Namespace) -> int:
    from ehds.node.config import load_node_config
    from ehds.node.policy import load_policy
    from ehds.node.privacy_report import read_ledger, render, to_json

    config = load_node_config(args.config)
    budget = load_policy(config.policy).privacy.budget
    report = read_ledger(config.state, budget, args.permit)
    if args.json:
        print(json.dumps(to_json(report), indent=2))
    else:
        print(render(report), end="")
    return 0


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
    site = result.policy
    document = {
        "node": result.node_name,
        "policy": {
            "path": str(result.config.policy),
            "version": site.version,
            "digest": site.digest,
            "min_cell_count": site.policy.min_cell_count,
            "hdab_keys": [{"name": key.name, "key_id": key.key_id} for key in site.trusted],
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
            f"ehds: error: cannot read cdm_source in the CDM {_cdm_shown(result.config.cdm)} "
            "(run with -v for the reason)",
            file=sys.stderr,
        )
        status = 1
    return status


def _cdm_shown(cdm: CdmConfig) -> str:
    """Where the CDM is, safe to print: a PostgreSQL URL holds a password."""
    if cdm.spark is not None:
        return str(cdm.spark.parquet)
    assert cdm.url is not None
    return cdm.database(cdm.url).describe()


def _migrate(args: argparse.Namespace) -> int:
    from ehds.node.config import load_node_config
    from ehds.node.state import NodeState
    from ehds.node.state_db import schema_revision, sqlite_engine

    path = load_node_config(args.config).state
    # The node's own start-up path: the same lock (a running node refuses it) and migrations.
    with NodeState.open(path):
        engine = sqlite_engine(path)
        try:
            revision = schema_revision(engine, path)
        finally:
            engine.dispose()
    print(f"state database at revision {revision}")
    return 0


def _policy_explain(args: argparse.Namespace) -> int:
    from ehds.core.errors import InputError
    from ehds.node.identity import certificate_name
    from ehds.node.policy_explain import explain, render, to_json
    from ehds.node.service import load_node

    config, site = load_node(args.config)
    permit: bytes | None = None
    if args.permit is not None:
        try:
            permit = args.permit.read_bytes()
        except OSError as exc:
            raise InputError(f"--permit {args.permit}: cannot read ({exc.strerror})") from None
    explanation = explain(
        site,
        node=certificate_name(config.tls.certificate),
        now=datetime.now(UTC),
        analysis=args.analysis,
        researcher=args.researcher,
        permit=permit,
    )
    if args.json:
        print(json.dumps(to_json(explanation), indent=2))
    else:
        print(render(explanation), end="")
    return 1 if explanation.refusal is not None else 0


def _review_store(config_path: Path) -> ReviewStore:
    from ehds.node.config import load_node_config
    from ehds.node.review import ReviewStore

    return ReviewStore(load_node_config(config_path).state)


def _review_list(args: argparse.Namespace) -> int:
    with _review_store(args.config) as store:
        held = store.held()
    if args.json:
        rows = [
            {
                "task_id": h.task_id,
                "study_id": h.study_id,
                "analysis": {"name": h.analysis.name, "version": h.analysis.version},
                "requested_by": h.requested_by,
                "permit": h.permit,
                "computed_at": None if h.computed_at is None else h.computed_at.isoformat(),
                "size": h.size,
                "sha256": h.sha256,
                "pending": h.pending,
            }
            for h in held
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not held:
        print("no results held for release")
        return 0
    for h in held:
        when = "" if h.computed_at is None else h.computed_at.strftime("%Y-%m-%d %H:%M:%SZ")
        pending = f"  [{h.pending}, not applied yet]" if h.pending else ""
        print(
            f"{h.task_id}  {h.analysis}  study {h.study_id}  for {h.requested_by or '-'}  "
            f"permit {h.permit or '-'}  {when}  {h.size} bytes  sha256 {h.sha256[:16]}{pending}"
        )
    return 0


def _review_show(args: argparse.Namespace) -> int:
    from ehds.node.review import describe

    with _review_store(args.config) as store:
        held, payload = store.show(args.task_id)
    if args.raw:
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
        return 0
    print(f"task {held.task_id} (study {held.study_id}), {held.analysis}")
    print(f"requested by {held.requested_by or '-'} under permit {held.permit or '-'}")
    print(f"{held.size} bytes of {held.content_type}, sha256 {held.sha256}")
    if held.pending:
        print(f"decision recorded, not applied yet: {held.pending}")
    print()
    print(describe(payload), end="")
    return 0


def _os_user() -> str:
    from ehds.node.review import ReviewError

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ReviewError("cannot tell who you are from the OS: give --as NAME") from None


def _review_decide(args: argparse.Namespace) -> int:
    from ehds.node.review import operator_actor
    from ehds.node.state_schema import Decision

    actor = operator_actor(args.operator or _os_user())
    decision = Decision(args.decision)
    with _review_store(args.config) as store:
        store.decide(args.task_id, decision, actor)
    print(
        f"task {args.task_id}: {decision.value} recorded by {actor}; the running node applies "
        "it within a second"
    )
    return 0
