"""``init_authority`` creates a usable federation CA, an empty CRL and index, once."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ehds.pki.authority import CA_VALIDITY, init_authority, load_authority, load_ca_certificate
from ehds.pki.errors import PkiInputError, PkiStateError
from ehds.pki.index import CertificateIndex
from ehds.pki.revocation import RevocationList


def test_init_creates_a_p256_ca_with_ca_extensions(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    before = datetime.now(UTC).replace(microsecond=0)
    authority = init_authority(pki, "eu-cancer")

    ca = load_ca_certificate(pki)
    assert ca == authority.certificate
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "eu-cancer"
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "eu-cancer CA"
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    ca.verify_directly_issued_by(ca)  # self-signed, signature valid

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    validity = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert CA_VALIDITY <= validity <= CA_VALIDITY + timedelta(minutes=10)
    assert ca.not_valid_before_utc <= before
    assert ca.not_valid_after_utc >= before + CA_VALIDITY


def test_init_writes_the_key_0600_and_it_matches_the_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_authority(pki)
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    authority = load_authority(pki)
    assert authority.private_key.public_key() == authority.certificate.public_key()
    assert authority.federation == "ehds-federation"


def test_init_creates_an_empty_signed_crl_and_index(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    authority = init_authority(pki)
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    public_key = authority.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    assert crl.issuer == authority.certificate.subject
    assert len(list(crl)) == 0
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1

    revocations = RevocationList.load(pki, authority.certificate)
    assert revocations.revoked_serials == frozenset()
    assert CertificateIndex.load(pki / "index.json") == CertificateIndex(crl_number=1)


def test_init_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_authority(pki)
    key_before = (pki / "ca.key").read_bytes()
    cert_before = (pki / "ca.pem").read_bytes()
    with pytest.raises(PkiStateError, match="already holds a PKI"):
        init_authority(pki)
    assert (pki / "ca.key").read_bytes() == key_before
    assert (pki / "ca.pem").read_bytes() == cert_before


def test_init_refuses_a_directory_with_a_leftover_key(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.key").write_bytes(b"not mine")
    with pytest.raises(PkiStateError, match=r"ca\.key"):
        init_authority(pki)
    assert (pki / "ca.key").read_bytes() == b"not mine"
    assert not (pki / "ca.pem").exists()
    assert not list(pki.glob("*.tmp"))


@pytest.mark.parametrize("federation", ["", "   ", "x" * 61, "tab\there"])
def test_init_rejects_a_bad_federation_name(tmp_path: Path, federation: str) -> None:
    with pytest.raises(PkiInputError, match="federation name"):
        init_authority(tmp_path / "pki", federation)
    assert not (tmp_path / "pki" / "ca.key").exists()


def test_load_authority_without_init_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(PkiStateError, match="ehds pki init"):
        load_authority(tmp_path)


def test_load_authority_refuses_a_key_of_another_ca(tmp_path: Path) -> None:
    init_authority(tmp_path / "a")
    init_authority(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(PkiStateError, match="is not the key of"):
        load_authority(tmp_path / "a")
