"""Issued certificates chain to the CA and carry the role, name, EKU and SANs they must."""

from __future__ import annotations

import ipaddress
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ehds.pki.authority import (
    CertificateAuthority,
    generate_key,
    init_authority,
    verify_issued_by,
)
from ehds.pki.errors import (
    CertificateError,
    IdentityError,
    PkiInputError,
    PkiStateError,
    UntrustedCertificateError,
)
from ehds.pki.identity import Identity, Role
from ehds.pki.index import CertificateIndex
from ehds.pki.issue import issue_certificate, load_credentials
from ehds.pki.revocation import revoke_certificate


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return init_authority(tmp_path / "pki", "eu-cancer")


def _pki(authority: CertificateAuthority) -> Path:
    return authority.directory.root


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(oid)]


def test_node_certificate_is_a_client_certificate_chaining_to_the_ca(
    authority: CertificateAuthority,
) -> None:
    issued = issue_certificate(_pki(authority), Role.NODE, "hospital-a")
    cert = x509.load_pem_x509_certificate(issued.paths.certificate.read_bytes())

    assert _subject(cert, NameOID.COMMON_NAME) == ["hospital-a"]
    assert _subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["node"]
    assert _subject(cert, NameOID.ORGANIZATION_NAME) == ["eu-cancer"]
    assert cert.issuer == authority.certificate.subject
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _sans(cert) == [x509.DNSName("hospital-a")]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not constraints.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign

    # Full RFC 5280 path validation, as a TLS server validates a client.
    verifier = PolicyBuilder().store(Store([authority.certificate])).build_client_verifier()
    verified = verifier.verify(cert, [])
    assert verified.chain == [cert, authority.certificate]
    # And it is not usable as a server certificate.
    server = PolicyBuilder().store(Store([authority.certificate]))
    with pytest.raises(VerificationError):
        server.build_server_verifier(x509.DNSName("hospital-a")).verify(cert, [])

    assert Identity.from_certificate(cert) == Identity("hospital-a", Role.NODE)
    assert issued.record.serial == cert.serial_number
    assert issued.record.not_after == cert.not_valid_after_utc


def test_researcher_certificate_is_a_client_certificate(authority: CertificateAuthority) -> None:
    issued = issue_certificate(_pki(authority), Role.RESEARCHER, "alice", days=30)
    cert = issued.certificate
    assert _subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["researcher"]
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    PolicyBuilder().store(Store([authority.certificate])).build_client_verifier().verify(cert, [])
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=29) < lifetime <= timedelta(days=30)


def test_coordinator_certificate_is_a_server_certificate_for_localhost(
    authority: CertificateAuthority,
) -> None:
    cert = issue_certificate(_pki(authority), Role.COORDINATOR, "coordinator").certificate
    assert _subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["coordinator"]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _sans(cert) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    builder = PolicyBuilder().store(Store([authority.certificate]))
    builder.build_server_verifier(x509.DNSName("localhost")).verify(cert, [])
    builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(
        cert, []
    )
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("elsewhere.example")).verify(cert, [])
    with pytest.raises(VerificationError):
        builder.build_client_verifier().verify(cert, [])


def test_coordinator_sans_come_from_dns_and_ip_options(authority: CertificateAuthority) -> None:
    cert = issue_certificate(
        _pki(authority),
        Role.COORDINATOR,
        "central",
        dns_names=["Coordinator.EHDS.example", "coordinator.ehds.example"],
        ip_addresses=["10.1.2.3", "2001:db8::1"],
    ).certificate
    assert _sans(cert) == [
        x509.DNSName("coordinator.ehds.example"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]


def test_issue_writes_key_0600_certificate_and_ca_and_records_it(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    issued = issue_certificate(_pki(authority), Role.NODE, "hospital-b", out_dir=out)
    assert issued.paths.key == out / "hospital-b.key"
    assert stat.S_IMODE(issued.paths.key.stat().st_mode) == 0o600
    assert (out / "ca.pem").read_bytes() == (_pki(authority) / "ca.pem").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "hospital-b.key", "hospital-b.pem"]

    index = CertificateIndex.load(_pki(authority) / "index.json")
    assert index.certificates == (issued.record,)
    document = json.loads((_pki(authority) / "index.json").read_text())
    assert document["certificates"] == [
        {
            "name": "hospital-b",
            "role": "node",
            "serial": f"{issued.certificate.serial_number:x}",
            "not_after": issued.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "revoked": False,
            "revoked_at": None,
        }
    ]


def test_load_credentials_returns_matching_pem_bytes(authority: CertificateAuthority) -> None:
    issued = issue_certificate(_pki(authority), Role.NODE, "hospital-c")
    key_pem, cert_pem, ca_pem = load_credentials(_pki(authority) / "issued", "hospital-c")
    assert cert_pem == issued.paths.certificate.read_bytes()
    assert key_pem == issued.paths.key.read_bytes()
    assert ca_pem == (_pki(authority) / "ca.pem").read_bytes()


def test_load_credentials_refuses_a_key_that_is_not_the_certificates(
    authority: CertificateAuthority,
) -> None:
    issue_certificate(_pki(authority), Role.NODE, "hospital-c")
    issue_certificate(_pki(authority), Role.NODE, "hospital-d")
    issued = _pki(authority) / "issued"
    (issued / "hospital-c.key").write_bytes((issued / "hospital-d.key").read_bytes())
    with pytest.raises(CertificateError, match="is not the key of"):
        load_credentials(issued, "hospital-c")


def test_load_credentials_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PkiInputError, match=r"nobody\.key: no such file"):
        load_credentials(tmp_path, "nobody")


@pytest.mark.parametrize(
    "name", ["", "Hospital", "-leading", "under_score", "dot.ted", "a" * 64, "é", "a b"]
)
def test_issue_rejects_a_bad_name(authority: CertificateAuthority, name: str) -> None:
    with pytest.raises(PkiInputError, match="invalid name"):
        issue_certificate(_pki(authority), Role.NODE, name)
    assert CertificateIndex.load(_pki(authority) / "index.json").certificates == ()


def test_longest_valid_name_is_accepted(authority: CertificateAuthority) -> None:
    name = "a" + "-" * 61 + "z"
    assert issue_certificate(_pki(authority), Role.NODE, name).record.name == name


@pytest.mark.parametrize(
    ("dns", "ip", "message"),
    [(["bad_host"], [], "invalid DNS name"), ([], ["300.1.1.1"], "invalid IP address")],
)
def test_issue_rejects_bad_sans(
    authority: CertificateAuthority, dns: list[str], ip: list[str], message: str
) -> None:
    with pytest.raises(PkiInputError, match=message):
        issue_certificate(_pki(authority), Role.COORDINATOR, "c", dns_names=dns, ip_addresses=ip)


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_issue_rejects_a_validity_outside_the_cas(
    authority: CertificateAuthority, days: int
) -> None:
    with pytest.raises(PkiInputError, match="day"):
        issue_certificate(_pki(authority), Role.NODE, "hospital-a", days=days)


def test_issue_refuses_a_duplicate_live_name_even_for_another_role(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    issue_certificate(_pki(authority), Role.NODE, "hospital-a")
    with pytest.raises(PkiStateError, match="already has a live node certificate"):
        issue_certificate(_pki(authority), Role.RESEARCHER, "hospital-a", out_dir=tmp_path)
    assert len(CertificateIndex.load(_pki(authority) / "index.json").certificates) == 1
    assert not (tmp_path / "hospital-a.key").exists()


def test_a_revoked_name_can_be_issued_again_without_overwriting_files(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    first = issue_certificate(_pki(authority), Role.NODE, "hospital-a")
    revoke_certificate(_pki(authority), "hospital-a")
    with pytest.raises(PkiStateError, match="refusing to overwrite"):
        issue_certificate(_pki(authority), Role.NODE, "hospital-a")
    assert first.paths.certificate.read_bytes().startswith(b"-----BEGIN CERTIFICATE")

    second = issue_certificate(_pki(authority), Role.NODE, "hospital-a", out_dir=tmp_path)
    assert second.record.serial != first.record.serial
    records = CertificateIndex.load(_pki(authority) / "index.json").certificates
    assert [(r.serial, r.revoked) for r in records] == [
        (first.record.serial, True),
        (second.record.serial, False),
    ]


def test_an_expired_name_can_be_issued_again(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    issue_certificate(_pki(authority), Role.NODE, "hospital-a", days=1)
    later = datetime.now(UTC) + timedelta(days=2)
    again = issue_certificate(_pki(authority), Role.NODE, "hospital-a", out_dir=tmp_path, now=later)
    assert again.record.not_after > later


def test_issue_refuses_an_output_folder_holding_another_cas_certificate(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    other = init_authority(tmp_path / "other-pki")
    out = tmp_path / "bundle"
    issue_certificate(_pki(other), Role.NODE, "hospital-a", out_dir=out)
    with pytest.raises(PkiStateError, match="another CA"):
        issue_certificate(_pki(authority), Role.NODE, "hospital-b", out_dir=out)
    assert not (out / "hospital-b.key").exists()


def test_issue_without_a_ca_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(PkiStateError, match="no federation CA"):
        issue_certificate(tmp_path, Role.NODE, "hospital-a")


def test_verify_issued_by_detects_a_foreign_certificate_even_with_a_copied_ca_name(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    ours = issue_certificate(_pki(authority), Role.NODE, "hospital-a").certificate
    verify_issued_by(ours, authority.certificate)
    verify_issued_by(ours.public_bytes(serialization.Encoding.PEM), authority.certificate)

    # Same federation name, so the same issuer name: only the signature tells them apart.
    impostor = init_authority(tmp_path / "impostor", "eu-cancer")
    assert impostor.certificate.subject == authority.certificate.subject
    foreign = issue_certificate(_pki(impostor), Role.NODE, "hospital-a").certificate
    with pytest.raises(UntrustedCertificateError, match="was not issued by"):
        verify_issued_by(foreign, authority.certificate)
    with pytest.raises(UntrustedCertificateError):
        verify_issued_by(authority.certificate, impostor.certificate)


def _sign(
    authority: CertificateAuthority, subject: list[x509.NameAttribute[str]]
) -> x509.Certificate:
    key = generate_key()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    return authority.sign_certificate(builder)


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ([x509.NameAttribute(NameOID.COMMON_NAME, "hospital-a")], "0 OU"),
        ([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "node")], "0 CN"),
        (
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "node"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "coordinator"),
                x509.NameAttribute(NameOID.COMMON_NAME, "hospital-a"),
            ],
            "2 OU",
        ),
        (
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
                x509.NameAttribute(NameOID.COMMON_NAME, "hospital-a"),
            ],
            "not a federation role",
        ),
        (
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "node"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Hospital A"),
            ],
            "not a valid participant name",
        ),
    ],
)
def test_identity_rejects_a_certificate_without_one_valid_cn_and_ou(
    authority: CertificateAuthority, subject: list[x509.NameAttribute[str]], message: str
) -> None:
    cert = _sign(authority, subject)
    with pytest.raises(IdentityError, match=message):
        Identity.from_certificate(cert)


def test_identity_reads_pem_text_and_bytes(authority: CertificateAuthority) -> None:
    issued = issue_certificate(_pki(authority), Role.COORDINATOR, "central")
    pem = issued.paths.certificate.read_bytes()
    expected = Identity("central", Role.COORDINATOR)
    assert Identity.from_certificate(pem) == expected
    assert Identity.from_certificate(pem.decode("ascii")) == expected
    assert str(expected) == "coordinator central"
    with pytest.raises(CertificateError, match="not a PEM"):
        Identity.from_certificate(b"garbage")
    assert issued.certificate.fingerprint(hashes.SHA256()) == x509.load_pem_x509_certificate(
        pem
    ).fingerprint(hashes.SHA256())
