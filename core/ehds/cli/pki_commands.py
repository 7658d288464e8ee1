"""``ehds pki ...``: the federation CA, participant certificates, revocation, HDAB keys.

``ehds pki hdab-key NAME --out DIR`` is the odd one out: a health data access body is not a
participant and gets no certificate, only a key pair to sign data permits with
(`ehds.permits`); it needs no PKI directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        dest="pki_dir",
        type=Path,
        required=True,
        metavar="PKI_DIR",
        help="the PKI directory (CA key and certificate, CRL, index of issued certificates)",
    )


def _init(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import hashes

    from ehds.pki.authority import init_authority

    authority = init_authority(args.pki_dir, args.name)
    ca = authority.certificate
    print(f"federation CA {ca.subject.rfc4514_string()} created in {args.pki_dir}")
    print(f"  certificate  {authority.directory.ca_certificate} (give it to every participant)")
    print(f"  private key  {authority.directory.ca_key} (0600; keep it here)")
    print(f"  valid until  {ca.not_valid_after_utc:%Y-%m-%d}")
    print(f"  sha256       {ca.fingerprint(hashes.SHA256()).hex(':')}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from ehds.pki.identity import Role
    from ehds.pki.issue import issue_certificate

    issued = issue_certificate(
        args.pki_dir,
        Role.parse(args.role),
        args.name,
        out_dir=args.out,
        dns_names=args.dns,
        ip_addresses=args.ip,
        days=args.days,
    )
    record = issued.record
    print(f"issued {record.role.value} certificate {record.name!r} (serial {record.serial:x})")
    print(f"  private key  {issued.paths.key} (0600)")
    print(f"  certificate  {issued.paths.certificate}")
    print(f"  CA           {issued.paths.ca_certificate}")
    print(f"  valid until  {record.not_after:%Y-%m-%d}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from ehds.pki.revocation import revoke_certificate

    for record in revoke_certificate(args.pki_dir, args.name):
        print(f"revoked {record.role.value} {record.name!r} (serial {record.serial:x})")
    print(f"CRL re-signed: {args.pki_dir / 'crl.pem'}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    from ehds.pki.revocation import refresh_crl

    crl = refresh_crl(args.pki_dir)
    print(f"CRL re-signed: {args.pki_dir / 'crl.pem'} ({len(list(crl))} revoked)")
    if crl.next_update_utc is not None:
        print(f"  next update  {crl.next_update_utc:%Y-%m-%d}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ehds.pki.directory import PkiDirectory
    from ehds.pki.index import CertificateIndex, format_time

    index = CertificateIndex.load(PkiDirectory(args.pki_dir).index)
    now = datetime.now(UTC)
    rows = [("NAME", "ROLE", "STATUS", "NOT_AFTER", "SERIAL")]
    rows += [
        (c.name, c.role.value, c.status(now), format_time(c.not_after), f"{c.serial:x}")
        for c in index.certificates
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*padded, row[-1]]))
    if not index.certificates:
        print("(no certificates issued)")
    return 0


def _hdab_key(args: argparse.Namespace) -> int:
    from ehds.permits import create_hdab_key, load_hdab_key

    private_path, public_path = create_hdab_key(args.out, args.name)
    key = load_hdab_key(args.name, public_path)
    print(f"HDAB key {args.name!r} created (key id {key.key_id})")
    print(f"  private key  {private_path} (0600; the HDAB keeps it, signs permits with it)")
    print(f"  public key   {public_path} (give it to the coordinator and node operators)")
    return 0


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pki = areas.add_parser("pki", help="federation PKI: CA, participant certificates, CRL")
    commands = pki.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create the federation CA and an empty CRL")
    _add_dir(init)
    init.add_argument(
        "--name", default="ehds-federation", metavar="FEDERATION", help="federation name"
    )
    init.set_defaults(handler=_init)

    issue = commands.add_parser(
        "issue", help="issue a key and certificate for a node, coordinator, researcher or operator"
    )
    issue.add_argument("role", choices=["node", "coordinator", "researcher", "operator"])
    issue.add_argument("name", help="participant name: [a-z0-9][a-z0-9-]{0,62}")
    _add_dir(issue)
    issue.add_argument(
        "--out", type=Path, default=None, help="output folder (default: PKI_DIR/issued)"
    )
    issue.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="HOST",
        help="DNS subject alternative name (repeatable; coordinator default: localhost)",
    )
    issue.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDR",
        help="IP subject alternative name (repeatable; coordinator default: 127.0.0.1)",
    )
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    issue.set_defaults(handler=_issue)

    revoke = commands.add_parser("revoke", help="revoke a participant's certificate, re-sign CRL")
    revoke.add_argument("name")
    _add_dir(revoke)
    revoke.set_defaults(handler=_revoke)

    crl = commands.add_parser("crl", help="re-sign the CRL (it is valid for a year)")
    _add_dir(crl)
    crl.set_defaults(handler=_crl)

    listing = commands.add_parser("list", help="list the certificates issued")
    _add_dir(listing)
    listing.set_defaults(handler=_list)

    hdab = commands.add_parser(
        "hdab-key", help="create the key pair a health data access body signs permits with"
    )
    hdab.add_argument("name", help="the HDAB's name (the permits' issuer): [a-z0-9][a-z0-9-]{0,62}")
    hdab.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    hdab.set_defaults(handler=_hdab_key)
