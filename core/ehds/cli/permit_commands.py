"""``ehds permit ...``: issue and check data permits, register them at the coordinator.

    ehds permit issue --key HDAB.key --issuer NAME --id ID --holder NAME [--holder NAME ...]
                      --nodes A,B --analyses X,Y --purpose TEXT [--from DATE] --until DATE
                      -o permit.json
    ehds permit verify permit.json --hdab-key [NAME=]NAME.pub.pem [--hdab-key ...]
                      [--node N] [--analysis A] [--holder H] [--at DATE] [--json]
    ehds permit register permit.json [--config researcher.yaml|operator.yaml] [--json]
    ehds permit list [--config ...] [--json]
    ehds permit show ID [--config ...] [--json | --document]

``issue`` is what an HDAB runs (its key from ``ehds pki hdab-key``); ``verify`` is the same
check a node makes (`ehds.permits.check_permit`), offline, and exits 1 with the reason code
when the permit is refused. A DATE is ``YYYY-MM-DD`` (midnight UTC) or an ISO date-time
(UTC unless it names a zone); ``--until`` is excluded: ``--until 2027-11-25`` ends the permit
at the start of that day. A trusted key's name (the ``issuer`` it is trusted for) is
``NAME=`` before its path or else its file name without ``.pub.pem``.

``register``, ``list`` and ``show`` talk to the coordinator with the client configuration of
``--config`` or ``EHDS_CLIENT_CONFIG``: a researcher registers and sees the permits they
hold, an operator or auditor sees all. ``register`` checks the file's form before sending it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from ehds.cli.study_commands import CONFIG_ENV, add_client_options, format_table, format_time

if TYPE_CHECKING:
    from ehds.federation.model import PermitInfo
    from ehds.permits import HdabKey

_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


class PermitFields(Protocol):
    """What a local `ehds.permits.Permit` and a registered `PermitInfo` both show."""

    @property
    def id(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def holders(self) -> tuple[str, ...]: ...
    @property
    def purpose(self) -> str: ...
    @property
    def nodes(self) -> tuple[str, ...]: ...
    @property
    def analyses(self) -> tuple[str, ...]: ...
    @property
    def valid_from(self) -> datetime: ...
    @property
    def valid_until(self) -> datetime: ...
    @property
    def issued_at(self) -> datetime: ...


# --------------------------------------------------------------------------- rendering


def permit_status(permit: PermitFields, now: datetime) -> str:
    if now < permit.valid_from:
        return "not yet valid"
    if now >= permit.valid_until:
        return "expired"
    return "valid"


def render_permit(permit: PermitFields, now: datetime) -> list[str]:
    """The permit as aligned ``label  value`` lines (after a first line naming it)."""
    return [
        f"permit {permit.id}: {permit_status(permit, now)}",
        f"  issuer        {permit.issuer}",
        f"  holders       {', '.join(permit.holders)}",
        f"  nodes         {', '.join(permit.nodes)}",
        f"  analyses      {', '.join(permit.analyses)}",
        f"  valid         {format_time(permit.valid_from)} until {format_time(permit.valid_until)}",
        f"  issued        {format_time(permit.issued_at)}",
        f"  purpose       {permit.purpose}",
    ]


def permit_json(permit: PermitFields, now: datetime) -> dict[str, Any]:
    from ehds.permits import format_time as rfc3339

    return {
        "id": permit.id,
        "issuer": permit.issuer,
        "status": permit_status(permit, now),
        "holders": list(permit.holders),
        "purpose": permit.purpose,
        "nodes": list(permit.nodes),
        "analyses": list(permit.analyses),
        "valid_from": rfc3339(permit.valid_from),
        "valid_until": rfc3339(permit.valid_until),
        "issued_at": rfc3339(permit.issued_at),
    }


def info_json(info: PermitInfo, now: datetime) -> dict[str, Any]:
    """A registered permit for ``--json``: its content, who registered it, the document's hash
    (the document itself: ``show --document``)."""
    from ehds.core.signing import sha256_hex
    from ehds.permits import format_time as rfc3339

    return {
        **permit_json(info, now),
        "registered_by": info.registered_by,
        "registered_at": rfc3339(info.registered_at),
        "document_sha256": sha256_hex(info.document),
    }


def render_info(info: PermitInfo, now: datetime) -> str:
    from ehds.core.signing import sha256_hex

    lines = render_permit(info, now)
    lines += [
        f"  registered    {format_time(info.registered_at)} by {info.registered_by or '-'}",
        f"  sha256        {sha256_hex(info.document)}",
    ]
    return "\n".join(lines)


def render_list(permits: Sequence[PermitInfo], now: datetime) -> str:
    if not permits:
        return "(no permits)"
    header = ["id", "issuer", "status", "valid from", "valid until", "holders", "nodes", "analyses"]
    rows = [
        [
            p.id,
            p.issuer,
            permit_status(p, now),
            format_time(p.valid_from),
            format_time(p.valid_until),
            ",".join(p.holders),
            ",".join(p.nodes),
            ",".join(p.analyses),
        ]
        for p in permits
    ]
    return format_table(header, rows)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


# --------------------------------------------------------------------------- arguments


def parse_date(text: str, option: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO date-time (UTC unless it names a zone)."""
    from ehds.core.errors import InputError

    try:
        if _DATE.fullmatch(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"{option}: not a date (YYYY-MM-DD) or ISO date-time (2026-11-25T10:00:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _names(values: Sequence[str]) -> tuple[str, ...]:
    """Repeated and/or comma-separated option values, in order, blanks dropped."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def trusted_key(value: str) -> HdabKey:
    """``NAME=PATH`` or ``PATH``, whose name is its file name without ``.pub.pem``/``.pem``."""
    from ehds.permits import load_hdab_key
    from ehds.pki.identity import NAME_PATTERN

    name, sep, rest = value.partition("=")
    if sep and NAME_PATTERN.fullmatch(name):
        return load_hdab_key(name, Path(rest))
    path = Path(value)
    name = path.name
    for suffix in (".pub.pem", ".pem", ".pub"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return load_hdab_key(name, path)


def _read(path: Path) -> bytes:
    from ehds.core.errors import InputError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


def _write_new(path: Path, data: bytes) -> None:
    from ehds.core.errors import InputError

    try:
        with path.open("xb") as handle:
            handle.write(data)
    except FileExistsError:
        raise InputError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None


# --------------------------------------------------------------------------- commands


def _issue(args: argparse.Namespace) -> int:
    from ehds.core.signing import Signer, sha256_hex
    from ehds.permits import Permit, PermitFormatError, issue_permit
    from ehds.permits.errors import HdabKeyError

    now = datetime.now(UTC).replace(microsecond=0)
    valid_from = parse_date(args.valid_from, "--from") if args.valid_from else now
    valid_until = parse_date(args.valid_until, "--until")
    try:
        permit = Permit(
            id=args.id,
            issuer=args.issuer,
            holders=_names(args.holder),
            purpose=args.purpose,
            nodes=_names(args.nodes),
            analyses=_names(args.analyses),
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=now,
        )
    except PermitFormatError as exc:
        raise PermitFormatError(f"permit to issue: {exc}") from None
    signer = Signer.from_file(args.key)
    try:
        document = issue_permit(signer, permit)
    except HdabKeyError as exc:
        raise HdabKeyError(f"{args.key}: {exc}") from None
    _write_new(args.output, document)
    print(f"permit {permit.id} issued by {permit.issuer} (key {signer.key_id[:16]})")
    for line in render_permit(permit, now)[1:]:
        print(line)
    print(f"  written to    {args.output} (sha256 {sha256_hex(document)})", flush=True)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ehds.permits import PermitRefusedError, check_permit

    trusted = [trusted_key(value) for value in args.hdab_key]
    document = _read(args.file)
    now = parse_date(args.at, "--at") if args.at else datetime.now(UTC)
    try:
        signed = check_permit(
            document,
            trusted=trusted,
            now=now,
            node=args.node,
            analysis=args.analysis,
            holder=args.holder,
        )
    except PermitRefusedError as exc:
        if args.json:
            _print_json(
                {"ok": False, "code": exc.reason.value, "message": exc.reason.message}
                | ({"detail": exc.detail} if exc.detail else {})
            )
        else:
            print(f"{args.file}: refused: {exc}", flush=True)
            if exc.detail:
                print(f"  {exc.detail}", flush=True)
        return 1
    if args.json:
        _print_json(
            {"ok": True, "key": signed.key_id, "sha256": signed.digest}
            | {"permit": permit_json(signed.permit, now)}
        )
        return 0
    given = {"node": args.node, "analysis": args.analysis, "holder": args.holder}
    asked = [f"{label} {value}" for label, value in given.items() if value is not None]
    covers = f", covers {', '.join(asked)}" if asked else ""
    print(f"{args.file}: OK, signed by {signed.permit.issuer}{covers}")
    for line in render_permit(signed.permit, now):
        print(f"  {line}")
    print(f"    key           {signed.key_id}")
    print(f"    sha256        {signed.digest}", flush=True)
    return 0


def _register(args: argparse.Namespace) -> int:
    from ehds.cli.study_commands import open_client
    from ehds.permits import parse_permit

    document = _read(args.file)
    parse_permit(document, source=str(args.file))  # a malformed file is never sent
    with open_client(args) as client:
        info = client.register_permit(document)
    now = datetime.now(UTC)
    if args.json:
        _print_json(info_json(info, now))
        return 0
    print(f"permit {info.id} registered", flush=True)
    print(render_info(info, now), flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    from ehds.cli.study_commands import open_client

    with open_client(args) as client:
        permits = client.list_permits()
    now = datetime.now(UTC)
    if args.json:
        _print_json([info_json(info, now) for info in permits])
    else:
        print(render_list(permits, now), flush=True)
    return 0


def _show(args: argparse.Namespace) -> int:
    from ehds.cli.study_commands import open_client

    with open_client(args) as client:
        info = client.get_permit(args.permit_id)
    now = datetime.now(UTC)
    if args.document:
        sys.stdout.buffer.write(info.document)
        sys.stdout.buffer.flush()
    elif args.json:
        _print_json(info_json(info, now))
    else:
        print(render_info(info, now), flush=True)
    return 0


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    permit = areas.add_parser(
        "permit", help="data permits: issue, verify, register at the coordinator"
    )
    commands = permit.add_subparsers(dest="command", required=True, metavar="COMMAND")

    issue = commands.add_parser("issue", help="sign a data permit with an HDAB key")
    issue.add_argument(
        "--key", type=Path, required=True, metavar="HDAB.key", help="HDAB private key"
    )
    issue.add_argument("--issuer", required=True, metavar="NAME", help="the HDAB's name")
    issue.add_argument("--id", required=True, metavar="ID", help="permit id, e.g. FI-2026-042")
    issue.add_argument(
        "--holder",
        action="append",
        required=True,
        metavar="NAME",
        help="researcher holding the permit (repeatable, or comma-separated)",
    )
    issue.add_argument(
        "--nodes", action="append", required=True, metavar="A,B", help="nodes covered"
    )
    issue.add_argument(
        "--analyses", action="append", required=True, metavar="X,Y", help="analysis names covered"
    )
    issue.add_argument("--purpose", required=True, metavar="TEXT", help="purpose of the processing")
    issue.add_argument(
        "--from", dest="valid_from", default=None, metavar="DATE", help="start (default: now)"
    )
    issue.add_argument(
        "--until", dest="valid_until", required=True, metavar="DATE", help="end (excluded)"
    )
    issue.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="permit file to write"
    )
    issue.set_defaults(handler=_issue)

    verify = commands.add_parser("verify", help="check a permit file as a node would")
    verify.add_argument("file", type=Path, metavar="PERMIT.json")
    verify.add_argument(
        "--hdab-key",
        action="append",
        required=True,
        metavar="[NAME=]PEM",
        help="a trusted HDAB public key (repeatable); NAME defaults to the file name",
    )
    verify.add_argument("--node", default=None, help="check that the permit covers this node")
    verify.add_argument("--analysis", default=None, help="... this analysis (name)")
    verify.add_argument("--holder", default=None, help="... is held by this researcher")
    verify.add_argument(
        "--at", default=None, metavar="DATE", help="check at this time (default: now)"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=_verify)

    register_ = commands.add_parser("register", help="register a permit at the coordinator")
    register_.add_argument("file", type=Path, metavar="PERMIT.json")
    register_.set_defaults(handler=_register)

    listing = commands.add_parser("list", help="the permits registered (that you hold)")
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="one registered permit")
    show.add_argument("permit_id", metavar="ID")
    show.add_argument(
        "--document", action="store_true", help="print the signed document exactly as registered"
    )
    show.set_defaults(handler=_show)

    for command in (register_, listing, show):
        add_client_options(command, CONFIG_ENV, "researcher.yaml or operator.yaml")
        command.add_argument("--json", action="store_true", help="machine-readable output")
