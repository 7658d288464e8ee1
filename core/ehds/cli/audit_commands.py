"""``ehds audit ...``: export a process's audit chain, verify a chain.

    ehds audit export (--config node.yaml|coordinator.yaml | --db URL) [--since ISO]
                      [--format jsonl] [-o FILE]
    ehds audit verify (FILE.jsonl | --config X.yaml | --db URL) [--against OTHER.jsonl]...
                      [--certificate PEM]... [--partial]

Both read the state database read-only, so they are safe beside a running node or
coordinator. ``verify`` exits with 0 when the chain is intact, 1 when it is not (the first bad
entry is named), 2 on errors. Signatures are checked with the keys of ``--certificate``
(certificates or public keys; with ``--config`` the process's own ``tls.certificate`` too);
``--against`` takes other processes' exported chains, whose anchors about this chain show a
truncated tail or a rewritten entry (those files' own hash chains are checked first, their
signatures are not). ``--partial``: the chain is an ``export --since`` piece.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ehds.core.errors import InputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    from ehds.audit.state_source import StateDatabase


def _since(text: str) -> datetime:
    """ISO date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since: not an ISO date or time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _state(args: argparse.Namespace) -> StateDatabase:
    from ehds.audit.state_source import state_from_config, state_from_url

    if args.config is not None:
        return state_from_config(args.config)
    return state_from_url(args.db)


def _file_lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as stream:
            yield from stream
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


def _write(lines: Iterator[bytes], out: BinaryIO) -> int:
    count = 0
    for line in lines:
        out.write(line + b"\n")
        count += 1
    return count


def _export(args: argparse.Namespace) -> int:
    from ehds.audit import format_time
    from ehds.audit.state_source import export_lines, open_read_only

    engine = open_read_only(_state(args))
    try:
        since = None if args.since is None else format_time(_since(args.since))
        lines = export_lines(engine, since=since)
        if args.output is None:
            _write(lines, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        try:
            with args.output.open("wb") as out:
                count = _write(lines, out)
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror}") from None
    finally:
        engine.dispose()
    print(f"exported {count} audit entries to {args.output}", file=sys.stderr)
    return 0


def _keys(paths: list[Path]) -> dict[str, EllipticCurvePublicKey]:
    from ehds.core.signing import key_id, load_public_key

    keys = {}
    for path in paths:
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys


def _chain_of_certificate(path: Path) -> str | None:
    """The chain name a process writes: str(Identity) of its certificate, if it names one."""
    from ehds.pki.errors import CertificateError
    from ehds.pki.identity import Identity

    try:
        return str(Identity.from_certificate(path.read_bytes()))
    except (OSError, CertificateError):
        return None


def _first_chain(lines: Iterator[bytes]) -> str | None:
    from ehds.audit import AuditEntry

    for raw in lines:
        if raw.strip():
            return AuditEntry.parse(raw.rstrip(b"\r\n")).chain
    return None


def _verify(args: argparse.Namespace) -> int:
    from ehds.audit import AuditRef, anchors_for, verify_lines
    from ehds.audit.state_source import export_lines, open_read_only

    certificates: list[Path] = list(args.certificate or [])
    chain: str | None = None
    engine = None
    source: Callable[[], Iterator[bytes]]
    if args.file is not None:
        file: Path = args.file
        source = lambda: _file_lines(file)  # noqa: E731
    else:
        state = _state(args)
        if state.certificate is not None:
            certificates.append(state.certificate)
            chain = _chain_of_certificate(state.certificate)
        engine = open_read_only(state)
        opened = engine
        source = lambda: export_lines(opened)  # noqa: E731
    try:
        keys = _keys(certificates)
        anchors: list[AuditRef] = []
        if args.against:
            chain = chain or _first_chain(source())
            for other in args.against:
                report = verify_lines(_file_lines(other))
                if not report.ok:
                    print(f"{other}: {report.summary()}")
                    return 1
                if chain is not None:
                    anchors.extend(anchors_for(_file_lines(other), chain))
        report = verify_lines(
            source(), keys=keys or None, anchors=anchors, chain=chain, partial=args.partial
        )
    finally:
        if engine is not None:
            engine.dispose()
    print(report.summary())
    if not keys:
        print("ehds: note: signatures not checked (no --certificate given)", file=sys.stderr)
    return 0 if report.ok else 1


def _add_source(parser: argparse.ArgumentParser, *, file: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    if file:
        group.add_argument(
            "file", nargs="?", type=Path, metavar="FILE.jsonl", help="an exported chain"
        )
    group.add_argument(
        "--config",
        type=Path,
        metavar="X.yaml",
        help="node.yaml or coordinator.yaml: that process's state database",
    )
    group.add_argument("--db", metavar="URL", help="a state database's SQLAlchemy URL")


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = areas.add_parser("audit", help="export and verify tamper-evident audit chains")
    commands = audit.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser(
        "export", help="write a process's audit chain as JSONL (one canonical entry per line)"
    )
    _add_source(export, file=False)
    export.add_argument(
        "--since",
        metavar="ISO",
        help="from the first entry at or after this UTC date/time, and every entry after it",
    )
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: stdout")
    export.set_defaults(handler=_export)

    verify = commands.add_parser(
        "verify", help="check a chain: hashes, links, signatures, anchors from other chains"
    )
    _add_source(verify, file=True)
    verify.add_argument(
        "--against",
        action="append",
        type=Path,
        metavar="OTHER.jsonl",
        help="another process's exported chain, whose anchors about this chain are checked",
    )
    verify.add_argument(
        "--certificate",
        action="append",
        type=Path,
        metavar="PEM",
        help="a signer's certificate or public key (repeat for renewed keys)",
    )
    verify.add_argument(
        "--partial",
        action="store_true",
        help="the chain is a piece (export --since) that need not start at entry 1",
    )
    verify.set_defaults(handler=_verify)
