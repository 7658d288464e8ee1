"""The federation certificate authority: creation, loading, signing, issuer verification.

The CA key is ECDSA P-256 (gRPC's BoringSSL accepts it) and signs with SHA-256. The CA may
only sign end-entity certificates (basicConstraints CA:true, pathlen 0) and CRLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ehds.pki.directory import PRIVATE_MODE, PkiDirectory, write_new, write_replace
from ehds.pki.errors import PkiInputError, PkiStateError, UntrustedCertificateError
from ehds.pki.index import CertificateIndex, IssuedCertificate
from ehds.pki.pem import (
    CertificateLike,
    as_certificate,
    certificate_pem,
    load_certificate_file,
    load_ec_private_key,
    private_key_pem,
)

DEFAULT_FEDERATION = "ehds-federation"
CA_VALIDITY = timedelta(days=3650)
CRL_VALIDITY = timedelta(days=365)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this much in the past, so that a peer whose clock lags accepts them."""

_MAX_FEDERATION_LENGTH = 60  # leaves room for " CA" in the 64-character CN


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def end_entity_key_usage() -> x509.KeyUsage:
    """digitalSignature only: what an ECDHE-ECDSA TLS handshake needs."""
    return _key_usage(cert_sign=False)


def _validate_federation(federation: str) -> str:
    if not federation.strip() or len(federation) > _MAX_FEDERATION_LENGTH:
        raise PkiInputError(f"federation name must be 1 to {_MAX_FEDERATION_LENGTH} characters")
    if not federation.isprintable():
        raise PkiInputError("federation name must be printable text")
    return federation


@dataclass(frozen=True)
class CertificateAuthority:
    directory: PkiDirectory
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def federation(self) -> str:
        values = self.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        value = values[0].value if values else DEFAULT_FEDERATION
        return value if isinstance(value, str) else DEFAULT_FEDERATION

    def _key_identifier(self) -> x509.AuthorityKeyIdentifier:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign an end-entity certificate: sets the issuer and the authority key identifier."""
        builder = builder.issuer_name(self.certificate.subject).add_extension(
            self._key_identifier(), critical=False
        )
        return builder.sign(self.private_key, hashes.SHA256())

    def sign_crl(
        self, revoked: Iterable[IssuedCertificate], number: int, now: datetime
    ) -> x509.CertificateRevocationList:
        """A CRL listing ``revoked``, valid for a year (never past the CA's own validity)."""
        next_update = min(now + CRL_VALIDITY, self.certificate.not_valid_after_utc)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(self._key_identifier(), critical=False)
        )
        for record in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(record.serial)
                .revocation_date(record.revoked_at or now)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.private_key, hashes.SHA256())

    def write_crl(self, index: CertificateIndex, now: datetime) -> x509.CertificateRevocationList:
        """Sign a CRL from the index's revoked certificates and write it to ``crl.pem``."""
        crl = self.sign_crl(index.revoked(), index.crl_number, now)
        write_replace(self.directory.crl, crl.public_bytes(serialization.Encoding.PEM))
        return crl


def _self_signed_ca(
    key: ec.EllipticCurvePrivateKey, federation: str, now: datetime
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def init_authority(
    pki_dir: Path, federation: str = DEFAULT_FEDERATION, *, now: datetime | None = None
) -> CertificateAuthority:
    """Create the CA, an empty index and an empty CRL in ``pki_dir``; never overwrites a PKI."""
    federation = _validate_federation(federation)
    now = now or datetime.now(UTC)
    directory = PkiDirectory(pki_dir)
    pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with directory.locked():
        existing = [path.name for path in directory.pki_files() if path.exists()]
        if existing:
            raise PkiStateError(
                f"{pki_dir} already holds a PKI ({', '.join(existing)}); refusing to overwrite it"
            )
        key = generate_key()
        certificate = _self_signed_ca(key, federation, now)
        # The key first: a CA certificate must never exist without its key.
        write_new(directory.ca_key, private_key_pem(key), PRIVATE_MODE)
        write_new(directory.ca_certificate, certificate_pem(certificate))
        authority = CertificateAuthority(directory, certificate, key)
        index = CertificateIndex(crl_number=1)
        index.save(directory.index)
        authority.write_crl(index, now)
        return authority


def load_authority(pki_dir: Path) -> CertificateAuthority:
    """The CA of ``pki_dir``; :class:`PkiStateError` if there is none or key and cert differ."""
    directory = PkiDirectory(pki_dir)
    if not directory.ca_certificate.exists() or not directory.ca_key.exists():
        raise PkiStateError(f"{pki_dir}: no federation CA (run `ehds pki init --dir {pki_dir}`)")
    certificate = load_certificate_file(directory.ca_certificate)
    key = load_ec_private_key(directory.ca_key)
    if key.public_key() != certificate.public_key():
        raise PkiStateError(f"{directory.ca_key} is not the key of {directory.ca_certificate}")
    return CertificateAuthority(directory, certificate, key)


def load_ca_certificate(pki_dir: Path) -> x509.Certificate:
    """The CA certificate of ``pki_dir`` (what verifiers need; the key is not read)."""
    return load_certificate_file(PkiDirectory(pki_dir).ca_certificate)


def verify_issued_by(certificate: CertificateLike, ca_certificate: CertificateLike) -> None:
    """:class:`UntrustedCertificateError` unless the CA's key signed ``certificate``.

    Checks the issuer name and the signature, which is what tells a foreign certificate (one
    from another CA, even one that copies this CA's name) apart; not the validity period.
    """
    cert = as_certificate(certificate)
    ca = as_certificate(ca_certificate)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise UntrustedCertificateError(
            f"certificate {cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x}) "
            f"was not issued by {ca.subject.rfc4514_string()!r}"
        ) from None
