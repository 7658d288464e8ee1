"""``ehds study ...``: submit a study file, follow it, fetch its results.

    ehds study [--config researcher.yaml] submit FILE.yaml [--wait [--timeout S]]
    ehds study [--config researcher.yaml] status ID
    ehds study [--config researcher.yaml] watch ID
    ehds study [--config researcher.yaml] results ID [--format FORMAT] [-o FILE]
    ehds study [--config researcher.yaml] list
    ehds study [--config researcher.yaml] cancel ID [--reason TEXT]

The client configuration comes from ``--config`` (before or after the command) or the
``EHDS_CLIENT_CONFIG`` environment variable. A study file is checked completely before the
configuration is even read, so a bad file never reaches the coordinator. ``submit --wait`` and
``watch`` exit with 0 when the study COMPLETED and 1 when it ended otherwise (FAILED,
CANCELLED), so that scripts can tell; errors exit with 2.

Results: an analysis producing summarised results (`ehds.analyses.results`: counts,
characterization, incidence, ...) is shown as its long table, every node's rows and the pool's,
with the study id as ``result_id``: ``table`` (readable, with who contributed and how many
cells each node suppressed), ``json`` (an array of row objects), ``csv``, ``parquet`` (needs
``-o FILE``). ``document`` is the whole result document as the coordinator serves it. For other
analyses (``person_count``), ``json`` is the whole document and ``csv``/``table`` the pooled
table, as before.

The plain-text renderers here (`format_table`, `render_results`, ...) are also used by
``ehds admin``; they need nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ehds.coordinator.client import CoordinatorClient
    from ehds.federation.model import Study

CONFIG_ENV: Final = "EHDS_CLIENT_CONFIG"
DEFAULT_WAIT_SECONDS: Final = 3600.0
FORMATS: Final = ("table", "json", "csv", "parquet", "document")


# --------------------------------------------------------------------------- rendering


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def format_time(value: datetime | None) -> str:
    """UTC, to the second: ``2025-03-01 14:02:07Z``."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text columns: numbers right-aligned, text left-aligned, None as ``-``.

    The last column is not padded, so a long free-text column (a reason, a title) there does
    not leave trailing blanks.
    """
    cells = [[_text(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    widths = [max([len(str(h)), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]

    def line(values: Sequence[str], align: Sequence[bool]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, align, strict=True)
        ]
        if parts and not align[-1]:
            parts[-1] = values[-1]
        return "  ".join(parts).rstrip()

    out = [line([str(h) for h in header], numeric), line(["-" * w for w in widths], numeric)]
    out += [line(row, numeric) for row in cells]
    return "\n".join(out)


def format_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV (CRLF line ends); None as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def pooled_table(document: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The pooled aggregate as rows, by the analysis' own `table` (falls back to JSON for an
    analysis this client does not know, e.g. one newer than it)."""
    from ehds.analyses.registry import default_registry
    from ehds.core.errors import InputError
    from ehds.federation.model import AnalysisRef

    pooled = document.get("pooled") or {}
    analysis = document.get("analysis") or {}
    try:
        ref = AnalysisRef(str(analysis.get("name", "")), str(analysis.get("version", "")))
        return default_registry().get(ref).table(pooled)
    except InputError:
        return ["result"], [[json.dumps(pooled, sort_keys=True)]]


def node_rows(document: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["node", "state", "error", "reason", "vocabulary"]
    rows = [
        [
            entry.get("node"),
            entry.get("state"),
            entry.get("error_code") or "",
            entry.get("reason") or "",
            entry.get("vocabulary_version") or "",
        ]
        for entry in document.get("nodes", [])
    ]
    return header, rows


def suppressed_cells(document: dict[str, Any]) -> dict[str, int]:
    """Suppressed cells per contributing node: what ``aggregate`` counted, else counted here
    from the released rows."""
    pooled = document.get("pooled") or {}
    counted = pooled.get("suppressed_cells") if isinstance(pooled, dict) else None
    if isinstance(counted, dict):
        return {str(node): int(n) for node, n in counted.items()}
    cells: dict[str, int] = {}
    for entry in document.get("nodes", []):
        result = entry.get("result")
        if isinstance(result, dict) and isinstance(result.get("rows"), list):
            cells[str(entry.get("node"))] = sum(
                1 for row in result["rows"] if isinstance(row, dict) and row.get("suppressed")
            )
    return cells


def _header_lines(document: dict[str, Any]) -> list[str]:
    analysis = document.get("analysis") or {}
    contributors = ", ".join(document.get("contributors", [])) or "none"
    return [
        f"study {document.get('study_id', '?')}: {analysis.get('name', '?')} "
        f"{analysis.get('version', '?')}, cells under {document.get('min_cell_count', '?')} "
        "suppressed at each node",
        "",
        format_table(*node_rows(document)),
        "",
        f"pooled over: {contributors}",
    ]


def render_summarised(document: dict[str, Any], fmt: str) -> str:
    """A summarised result document as ``json`` rows, ``csv`` or a readable ``table``."""
    from ehds.analyses import results

    rows = results.document_rows(document)
    result_id = str(document.get("study_id", ""))
    if fmt == "json":
        return results.to_json_text(rows, result_id)
    if fmt == "csv":
        return results.to_csv(rows, result_id)
    parts = [*_header_lines(document), results.render(rows, suppressed_cells(document))]
    return "\n".join(parts)


def render_results(document: dict[str, Any], fmt: str) -> str:
    """The result document as text: ``document`` (all of it, JSON); for summarised results
    see `render_summarised`; otherwise ``json`` (all of it), ``csv`` (the pooled table) or
    ``table`` (who contributed, then the pooled table)."""
    from ehds.analyses.results import is_summarised

    if fmt == "document" or (fmt == "json" and not is_summarised(document.get("pooled"))):
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if fmt == "parquet":
        from ehds.core.errors import InputError

        raise InputError("--format parquet writes a file: give -o FILE.parquet")
    if is_summarised(document.get("pooled")):
        return render_summarised(document, fmt)
    header, rows = pooled_table(document)
    if fmt == "csv":
        return format_csv(header, rows)
    parts = [*_header_lines(document), format_table(header, rows)]
    return "\n".join(parts) + "\n"


def _node_progress(study: Study) -> str:
    parts = []
    for node in study.nodes:
        state = node.state.name.lower()
        if node.state.name == "RUNNING" and node.fraction > 0:
            state += f"({node.fraction:.0%})"
        parts.append(f"{node.node_name}:{state}")
    return " ".join(parts)


def progress_text(study: Study) -> str:
    """State, the round of an iterative analysis (from round 1), nodes done out of total (of
    that round), and each node's state."""
    ended = sum(1 for node in study.nodes if node.state.is_final)
    round_text = f"round {study.round} " if study.round else ""
    return (
        f"{study.state.name:<11} {round_text}nodes done {ended}/{len(study.nodes)}  "
        f"{_node_progress(study)}"
    ).rstrip()


def progress_line(study: Study) -> str:
    """One line per change while watching: the time (UTC), then `progress_text`."""
    return f"{datetime.now(UTC):%H:%M:%S} {progress_text(study)}"


def render_status(study: Study) -> str:
    spec = study.spec
    targets = ", ".join(spec.target_nodes) if spec.target_nodes else "every node"
    lines = [
        f"study {study.id}: {study.state.name}",
        f"  title         {spec.title}",
        f"  analysis      {spec.analysis}",
        f"  submitted     {format_time(study.created_at)} by {study.submitted_by or '-'}",
        f"  updated       {format_time(study.updated_at)}",
        f"  targets       {targets} (at least {spec.min_nodes} must contribute)",
        f"  deadline      {spec.deadline_seconds} s",
    ]
    if spec.data_permit_id:
        lines.append(f"  data permit   {spec.data_permit_id}")
    if study.round:
        lines.append(f"  round         {study.round} (the nodes below are this round's tasks)")
    if study.state_reason:
        lines.append(f"  reason        {study.state_reason}")
    rows = [
        [
            node.node_name,
            node.state.name,
            "" if node.error_code.name == "UNSPECIFIED" else node.error_code.name,
            node.reason,
            node.vocabulary_version,
        ]
        for node in study.nodes
    ]
    lines += ["", format_table(["node", "state", "error", "reason", "vocabulary"], rows)]
    return "\n".join(lines)


def render_list(studies: Sequence[Study]) -> str:
    if not studies:
        return "(no studies)"
    rows = [
        [
            study.id,
            study.state.name,
            str(study.spec.analysis),
            f"{sum(1 for n in study.nodes if n.state.is_final)}/{len(study.nodes)}",
            format_time(study.created_at),
            study.spec.title,
        ]
        for study in studies
    ]
    return format_table(["id", "state", "analysis", "nodes done", "created", "title"], rows)


# --------------------------------------------------------------------------- commands


def config_path(args: argparse.Namespace, env: str = CONFIG_ENV) -> Path:
    """``--config``, else the environment variable, else a usage error."""
    from ehds.core.errors import InputError

    if args.config is not None:
        return Path(args.config)
    value = os.environ.get(env, "").strip()
    if value:
        return Path(value)
    raise InputError(f"no client configuration: pass --config FILE.yaml or set {env}")


def open_client(args: argparse.Namespace, env: str = CONFIG_ENV) -> CoordinatorClient:
    from ehds.coordinator.client import CoordinatorClient
    from ehds.coordinator.client_config import load_client_config

    config = load_client_config(config_path(args, env))
    if args.insecure:
        from ehds.federation.transport import INSECURE_WARNING

        print(INSECURE_WARNING, file=sys.stderr)
    return CoordinatorClient(config, insecure=args.insecure)


def _say(text: str) -> None:
    print(text, flush=True)


def _follow(client: CoordinatorClient, study_id: str, timeout: float | None) -> Study:
    """Print a progress line per change until the study ends; return the final snapshot."""
    last_text = ""
    final = None
    for study in client.watch(study_id, timeout=timeout):
        text = progress_text(study)
        if text != last_text:  # a snapshot may differ only in what this line does not show
            _say(progress_line(study))
            last_text = text
        final = study
    assert final is not None
    return final


def _ended(study: Study) -> int:
    if study.state.name == "COMPLETED":
        return 0
    reason = f": {study.state_reason}" if study.state_reason else ""
    print(f"ehds: study {study.id} ended {study.state.name}{reason}", file=sys.stderr)
    return 1


def _submit(args: argparse.Namespace) -> int:
    from ehds.coordinator.study_file import load_study_file

    spec = load_study_file(args.file)  # before anything else: a bad file is never sent
    with open_client(args) as client:
        study = client.submit(spec)
        targets = len(study.nodes) if study.nodes else "all"
        _say(f"study {study.id} submitted: {spec.title} ({spec.analysis}, {targets} nodes)")
        if not args.wait:
            return 0
        final = _follow(client, study.id, args.timeout)
        _say(render_status(final))
        if final.state.name == "COMPLETED":
            _say("")
            _say(render_results(client.results(study.id), "table").rstrip("\n"))
        return _ended(final)


def _status(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        _say(render_status(client.get(args.study_id)))
    return 0


def _watch(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return _ended(_follow(client, args.study_id, args.timeout))


def _results(args: argparse.Namespace) -> int:
    from ehds.core.errors import InputError

    if args.format == "parquet" and args.output is None:
        raise InputError("--format parquet writes a file: give -o FILE.parquet")
    with open_client(args) as client:
        document = client.results(args.study_id)
    if args.output is None:
        sys.stdout.write(render_results(document, args.format))
        sys.stdout.flush()
        return 0
    output: Path = args.output
    try:
        if args.format == "parquet":
            from ehds.coordinator.client import export_document

            export_document(document, output, "parquet")
        else:
            text = render_results(document, args.format)
            output.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from None
    _say(f"results of study {args.study_id} written to {output} ({args.format})")
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        _say(render_list(client.list()))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        study = client.cancel(args.study_id, args.reason)
    _say(f"study {study.id}: {study.state.name}")
    return 0


def add_client_options(parser: argparse.ArgumentParser, env: str, example: str) -> None:
    """``--config`` and ``--insecure``, accepted before or after the command name."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"client configuration ({example}); default: ${env}",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plain-text gRPC to a coordinator started with --insecure (local tests only)",
    )


def add_command_client_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the command it overrides, absent it leaves the group's value.
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--insecure", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    study = areas.add_parser("study", help="submit studies to the coordinator and get results")
    add_client_options(study, CONFIG_ENV, "researcher.yaml")
    commands = study.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="check a study file and submit it")
    submit.add_argument("file", type=Path, metavar="FILE.yaml")
    submit.add_argument(
        "--wait", action="store_true", help="follow it until it ends and print the results"
    )
    submit.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"with --wait: give up waiting after this long (default {DEFAULT_WAIT_SECONDS:.0f})",
    )
    submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", help="a study's state and each node's")
    status.add_argument("study_id", metavar="ID")
    status.set_defaults(handler=_status)

    watch = commands.add_parser("watch", help="a progress line per change until it ends")
    watch.add_argument("study_id", metavar="ID")
    watch.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="stop watching after this"
    )
    watch.set_defaults(handler=_watch)

    results = commands.add_parser("results", help="per-node and pooled results of a study")
    results.add_argument("study_id", metavar="ID")
    results.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default), json, csv, parquet (needs -o) or document (the whole result "
        "document); summarised results export their long table, every node's rows and the "
        "pool's",
    )
    results.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="write to FILE instead of standard output",
    )
    results.set_defaults(handler=_results)

    listing = commands.add_parser("list", help="your studies, newest first")
    listing.set_defaults(handler=_list)

    cancel = commands.add_parser("cancel", help="cancel a study that has not ended")
    cancel.add_argument("study_id", metavar="ID")
    cancel.add_argument("--reason", default="", help="why (sent to the nodes, audited)")
    cancel.set_defaults(handler=_cancel)

    for command in (submit, status, watch, results, listing, cancel):
        add_command_client_options(command)
