"""Issuing a participant's key and certificate, and loading them back for gRPC.

    subject   O=<federation>, OU=<role>, CN=<name>
    coordinator: extendedKeyUsage serverAuth; SANs from --dns/--ip
                 (default DNS:localhost, IP:127.0.0.1)
    node, researcher: extendedKeyUsage clientAuth; SAN DNS:<name> unless given

The output folder receives ``NAME.key`` (0600), ``NAME.pem`` and ``ca.pem``: everything a
participant needs for ``grpc.ssl_channel_credentials`` or ``grpc.ssl_server_credentials``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ehds.pki.authority import (
    CLOCK_SKEW,
    CertificateAuthority,
    end_entity_key_usage,
    generate_key,
    load_authority,
    verify_issued_by,
)
from ehds.pki.directory import PRIVATE_MODE, PkiDirectory, write_new
from ehds.pki.errors import CertificateError, PkiInputError, PkiStateError
from ehds.pki.identity import Role, validate_name
from ehds.pki.index import CertificateIndex, IssuedCertificate, format_time
from ehds.pki.pem import (
    as_certificate,
    certificate_pem,
    load_certificate_file,
    parse_ec_private_key,
    private_key_pem,
    read_file,
)

DEFAULT_DAYS = 365
DEFAULT_COORDINATOR_DNS = ("localhost",)
DEFAULT_COORDINATOR_IPS = ("127.0.0.1",)
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DNS_LENGTH = 253


class Credentials(NamedTuple):
    """A participant's PEM key and certificate and the federation CA certificate.

    ``grpc.ssl_channel_credentials(c.root_certificates, c.private_key, c.certificate_chain)``
    """

    private_key: bytes
    certificate_chain: bytes
    root_certificates: bytes


@dataclass(frozen=True)
class CredentialPaths:
    key: Path
    certificate: Path
    ca_certificate: Path

    @classmethod
    def of(cls, folder: Path, name: str) -> CredentialPaths:
        return cls(folder / f"{name}.key", folder / f"{name}.pem", folder / "ca.pem")


@dataclass(frozen=True)
class IssuedFiles:
    record: IssuedCertificate
    certificate: x509.Certificate
    paths: CredentialPaths


def _dns_name(text: str) -> x509.DNSName:
    host = text.lower().rstrip(".")
    if (
        not host
        or len(host) > _MAX_DNS_LENGTH
        or not all(_DNS_LABEL.fullmatch(label) for label in host.split("."))
    ):
        raise PkiInputError(f"invalid DNS name {text!r}")
    return x509.DNSName(host)


def _ip_address(text: str) -> x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        raise PkiInputError(f"invalid IP address {text!r}") from None


def subject_alternative_names(
    role: Role, name: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    """The SANs given, or the role's default when none is."""
    if not dns_names and not ip_addresses:
        if role is Role.COORDINATOR:
            dns_names, ip_addresses = DEFAULT_COORDINATOR_DNS, DEFAULT_COORDINATOR_IPS
        else:
            dns_names = (name,)
    names: list[x509.GeneralName] = [_dns_name(host) for host in dns_names]
    names += [_ip_address(address) for address in ip_addresses]
    return list(dict.fromkeys(names))  # drop duplicates, keep the order


def _build_certificate(
    authority: CertificateAuthority,
    role: Role,
    name: str,
    *,
    public_key: ec.EllipticCurvePublicKey,
    sans: list[x509.GeneralName],
    now: datetime,
    not_after: datetime,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, authority.federation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if role is Role.COORDINATOR
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return authority.sign_certificate(builder)


def _check_output(paths: CredentialPaths, ca_certificate: x509.Certificate) -> None:
    for path in (paths.key, paths.certificate):
        if path.exists():
            raise PkiStateError(
                f"{path} exists; refusing to overwrite it (remove it, or choose another --out)"
            )
    if paths.ca_certificate.exists():
        existing = load_certificate_file(paths.ca_certificate)
        if existing != ca_certificate:
            raise PkiStateError(f"{paths.ca_certificate} holds the certificate of another CA")


def issue_certificate(
    pki_dir: Path,
    role: Role,
    name: str,
    *,
    out_dir: Path | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> IssuedFiles:
    """Generate a P-256 key and a certificate signed by the CA of ``pki_dir``; record it.

    Refuses a name that already has a live (neither revoked nor expired) certificate, and
    never overwrites a key or certificate file. ``out_dir`` defaults to ``PKI_DIR/issued``.
    """
    validate_name(name)
    sans = subject_alternative_names(role, name, dns_names, ip_addresses)
    if days < 1:
        raise PkiInputError(f"validity must be at least 1 day, got {days}")
    now = now or datetime.now(UTC)
    not_after = now + timedelta(days=days)
    directory = PkiDirectory(pki_dir)
    paths = CredentialPaths.of(out_dir or directory.issued, name)
    with directory.locked():
        authority = load_authority(pki_dir)
        if not_after > authority.certificate.not_valid_after_utc:
            raise PkiInputError(
                f"{days} days would outlive the CA, which expires "
                f"{format_time(authority.certificate.not_valid_after_utc)}"
            )
        index = CertificateIndex.load(directory.index)
        live = index.live(name, now)
        if live is not None:
            raise PkiStateError(
                f"{name!r} already has a live {live.role.value} certificate "
                f"(serial {live.serial:x}); revoke it first"
            )
        _check_output(paths, authority.certificate)
        key = generate_key()
        certificate = _build_certificate(
            authority,
            role,
            name,
            public_key=key.public_key(),
            sans=sans,
            now=now,
            not_after=not_after,
        )
        record = IssuedCertificate(
            name=name,
            role=role,
            serial=certificate.serial_number,
            not_after=certificate.not_valid_after_utc,
        )
        paths.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            write_new(paths.key, private_key_pem(key), PRIVATE_MODE)
            written.append(paths.key)
            write_new(paths.certificate, certificate_pem(certificate))
            written.append(paths.certificate)
            if not paths.ca_certificate.exists():
                write_new(paths.ca_certificate, certificate_pem(authority.certificate))
            index.with_issued(record).save(directory.index)
        except BaseException:
            for path in written:  # an unrecorded certificate could never be revoked by name
                path.unlink(missing_ok=True)
            raise
        return IssuedFiles(record, certificate, paths)


def load_credentials(folder: Path, name: str) -> Credentials:
    """``NAME.key``, ``NAME.pem`` and ``ca.pem`` from ``folder``, checked to belong together.

    :class:`CertificateError` if the key is not the certificate's, or the certificate was not
    issued by ``ca.pem``.
    """
    validate_name(name)
    paths = CredentialPaths.of(folder, name)
    key_pem = read_file(paths.key)
    cert_pem = read_file(paths.certificate)
    ca_pem = read_file(paths.ca_certificate)
    key = parse_ec_private_key(key_pem, str(paths.key))
    certificate = as_certificate(cert_pem)
    if key.public_key() != certificate.public_key():
        raise CertificateError(f"{paths.key} is not the key of {paths.certificate}")
    verify_issued_by(certificate, ca_pem)
    return Credentials(key_pem, cert_pem, ca_pem)
