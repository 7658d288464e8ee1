"""Revocation: the CRL lists the serial, is signed by the CA, and a foreign CRL is refused."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.pki.authority import CRL_VALIDITY, CertificateAuthority, init_authority
from ehds.pki.errors import PkiStateError, UntrustedCertificateError, UntrustedCrlError
from ehds.pki.identity import Role
from ehds.pki.index import CertificateIndex
from ehds.pki.issue import issue_certificate
from ehds.pki.revocation import RevocationList, refresh_crl, revoke_certificate


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return init_authority(tmp_path / "pki", "eu-cancer")


def _pki(authority: CertificateAuthority) -> Path:
    return authority.directory.root


def _crl(pki: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())


def test_revoke_lists_the_serial_in_a_crl_signed_by_the_ca(
    authority: CertificateAuthority,
) -> None:
    pki = _pki(authority)
    revoked = issue_certificate(pki, Role.NODE, "hospital-a").certificate
    kept = issue_certificate(pki, Role.NODE, "hospital-b").certificate
    coordinator = issue_certificate(pki, Role.COORDINATOR, "central").certificate

    records = revoke_certificate(pki, "hospital-a")
    assert [(r.name, r.serial, r.revoked) for r in records] == [
        ("hospital-a", revoked.serial_number, True)
    ]

    crl = _crl(pki)
    public_key = authority.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    assert crl.issuer == authority.certificate.subject
    assert [entry.serial_number for entry in crl] == [revoked.serial_number]
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == CRL_VALIDITY

    revocations = RevocationList.load(pki, authority.certificate)
    assert revocations.is_revoked(revoked)
    assert not revocations.is_revoked(kept)
    assert not revocations.is_revoked(coordinator)
    assert revocations.number == 2

    index = CertificateIndex.load(pki / "index.json")
    assert [(c.name, c.revoked) for c in index.certificates] == [
        ("hospital-a", True),
        ("hospital-b", False),
        ("central", False),
    ]
    assert index.certificates[0].revoked_at is not None


def test_revocation_list_loads_a_crl_file_and_pem_ca(authority: CertificateAuthority) -> None:
    pki = _pki(authority)
    issued = issue_certificate(pki, Role.RESEARCHER, "alice")
    revoke_certificate(pki, "alice")
    revocations = RevocationList.load(pki / "crl.pem", (pki / "ca.pem").read_bytes())
    assert revocations.path == pki / "crl.pem"
    assert revocations.is_revoked(issued.paths.certificate.read_bytes())
    assert revocations.revoked_serials == frozenset({issued.record.serial})


def test_reload_picks_up_a_later_revocation(authority: CertificateAuthority) -> None:
    pki = _pki(authority)
    cert = issue_certificate(pki, Role.NODE, "hospital-a").certificate
    revocations = RevocationList.load(pki, authority.certificate)
    assert not revocations.is_revoked(cert)
    revoke_certificate(pki, "hospital-a")
    assert not revocations.is_revoked(cert)  # a snapshot until reloaded
    revocations.reload()
    assert revocations.is_revoked(cert)


def test_a_crl_signed_by_another_ca_is_refused(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    pki = _pki(authority)
    cert = issue_certificate(pki, Role.NODE, "hospital-a").certificate
    # Another CA with the same name, so its CRL even names our CA as issuer.
    impostor = init_authority(tmp_path / "impostor", "eu-cancer")
    forged = tmp_path / "forged-crl.pem"
    shutil.copy(_pki(impostor) / "crl.pem", forged)
    with pytest.raises(UntrustedCrlError, match="not signed by the federation CA"):
        RevocationList.load(forged, authority.certificate)

    # Nor can a loaded list be swapped for a foreign CRL: reload refuses, the old CRL stays.
    revoke_certificate(pki, "hospital-a")
    revocations = RevocationList.load(pki, authority.certificate)
    shutil.copy(forged, pki / "crl.pem")
    with pytest.raises(UntrustedCrlError):
        revocations.reload()
    assert revocations.is_revoked(cert)


def test_a_crl_of_a_differently_named_ca_is_refused(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    other = init_authority(tmp_path / "other", "elsewhere")
    with pytest.raises(UntrustedCrlError):
        RevocationList.load(_pki(other), authority.certificate)


def test_a_tampered_crl_file_is_refused(authority: CertificateAuthority) -> None:
    (_pki(authority) / "crl.pem").write_text(
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    )
    with pytest.raises(UntrustedCrlError, match=r"not a PEM X\.509 CRL"):
        RevocationList.load(_pki(authority), authority.certificate)


def test_an_expired_crl_is_refused_until_re_signed(authority: CertificateAuthority) -> None:
    pki = _pki(authority)
    later = datetime.now(UTC) + CRL_VALIDITY + timedelta(days=1)
    with pytest.raises(UntrustedCrlError, match="ehds pki crl"):
        RevocationList.load(pki, authority.certificate, now=later)
    crl = refresh_crl(pki, now=later - timedelta(hours=1))
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    RevocationList.load(pki, authority.certificate, now=later)


def test_is_revoked_refuses_a_certificate_of_another_ca(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    impostor = init_authority(tmp_path / "impostor", "eu-cancer")
    foreign = issue_certificate(_pki(impostor), Role.NODE, "hospital-a").certificate
    revocations = RevocationList.load(_pki(authority), authority.certificate)
    with pytest.raises(UntrustedCertificateError):
        revocations.is_revoked(foreign)


def test_revoke_of_an_unknown_or_already_revoked_name_is_a_state_error(
    authority: CertificateAuthority,
) -> None:
    pki = _pki(authority)
    with pytest.raises(PkiStateError, match="never issued"):
        revoke_certificate(pki, "nobody")
    issue_certificate(pki, Role.NODE, "hospital-a")
    revoke_certificate(pki, "hospital-a")
    crl_before = (pki / "crl.pem").read_bytes()
    with pytest.raises(PkiStateError, match="already revoked"):
        revoke_certificate(pki, "hospital-a")
    assert (pki / "crl.pem").read_bytes() == crl_before


def test_revoke_keeps_earlier_revocations_in_the_crl(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    pki = _pki(authority)
    first = issue_certificate(pki, Role.NODE, "hospital-a").certificate
    revoke_certificate(pki, "hospital-a")
    second = issue_certificate(pki, Role.NODE, "hospital-a", out_dir=tmp_path).certificate
    third = issue_certificate(pki, Role.NODE, "hospital-b").certificate
    revoke_certificate(pki, "hospital-b")
    assert {entry.serial_number for entry in _crl(pki)} == {
        first.serial_number,
        third.serial_number,
    }
    revocations = RevocationList.load(pki, authority.certificate)
    assert not revocations.is_revoked(second)


def test_a_concurrent_command_is_refused_not_interleaved(
    authority: CertificateAuthority,
) -> None:
    pki = _pki(authority)
    with authority.directory.locked(), pytest.raises(PkiStateError, match="another ehds pki"):
        issue_certificate(pki, Role.NODE, "hospital-a")
    issue_certificate(pki, Role.NODE, "hospital-a")
