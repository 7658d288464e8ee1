"""Conversions between PEM text and ``cryptography`` objects."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.pki.errors import CertificateError, PkiInputError

CertificateLike = x509.Certificate | bytes | str
"""A certificate object or its PEM text, e.g. gRPC's ``x509_pem_cert`` auth property."""


def as_certificate(certificate: CertificateLike) -> x509.Certificate:
    if isinstance(certificate, x509.Certificate):
        return certificate
    data = certificate.encode("ascii") if isinstance(certificate, str) else certificate
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM X.509 certificate: {exc}") from None


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8, the form gRPC's ``ssl_*_credentials`` read."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiInputError(f"{path}: no such file") from None


def load_certificate_file(path: Path) -> x509.Certificate:
    try:
        return as_certificate(read_file(path))
    except CertificateError as exc:
        raise CertificateError(f"{path}: {exc}") from None


def parse_ec_private_key(data: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM ECDSA P-256 key; ``source`` names it in errors."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise CertificateError(f"{source}: not an ECDSA P-256 private key")
    return key


def load_ec_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return parse_ec_private_key(read_file(path), str(path))
