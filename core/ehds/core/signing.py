"""Canonical JSON and ECDSA signatures: the one way a document is hashed and signed here.

Audit entries, data permits and task assignments are all signed the same way, so that an
auditor or a data access body can check any of them with standard tools and no code of ours:

* the signed bytes are the RFC 8785 (JSON Canonicalization Scheme) form of a JSON object;
* a signature is ECDSA with SHA-256 (the federation's keys are P-256), DER-encoded, base64;
* a key is named by its key id: the SHA-256 (hex) of its DER SubjectPublicKeyInfo, which is
  what ``openssl pkey -pubin -outform DER | sha256sum`` prints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.core.errors import InputError

__all__ = [
    "SignatureFormatError",
    "Signer",
    "canonical_bytes",
    "key_id",
    "load_public_key",
    "sha256_hex",
    "verify_signature",
]


class SignatureFormatError(InputError):
    """A key or signature that cannot be read (not: a signature that does not verify)."""


def canonical_bytes(document: Any) -> bytes:
    """RFC 8785 canonical JSON of ``document`` (dicts, lists, str, int, float, bool, None)."""
    try:
        return rfc8785.dumps(document)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise SignatureFormatError(f"not canonicalisable as JSON: {exc}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256_hex(der)


def _public_key_of(data: bytes, source: str) -> ec.EllipticCurvePublicKey:
    """A PEM public key, or the public key of a PEM certificate."""
    key: object
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureFormatError(
            f"{source}: not a PEM public key or certificate ({exc})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureFormatError(f"{source}: not an elliptic-curve key")
    return key


def load_public_key(source: Path | bytes) -> ec.EllipticCurvePublicKey:
    """A public key from a PEM file (or PEM bytes): ``PUBLIC KEY`` or ``CERTIFICATE``."""
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise SignatureFormatError(f"cannot read {source}: {exc.strerror}") from None
        return _public_key_of(data, str(source))
    return _public_key_of(source, "public key")


class Signer:
    """A private key that signs canonical bytes; ``key_id`` names its public key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "private key") -> Signer:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise SignatureFormatError(
                f"{source}: not an unencrypted PEM private key ({exc})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SignatureFormatError(f"{source}: not an elliptic-curve private key")
        return cls(key)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SignatureFormatError(f"cannot read {path}: {exc.strerror}") from None
        return cls.from_pem(data, str(path))

    def sign(self, data: bytes) -> str:
        """Base64 of the DER ECDSA-SHA256 signature of ``data``."""
        return base64.b64encode(self._key.sign(data, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify_signature(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64 DER) is ``public_key``'s ECDSA-SHA256 signature of ``data``."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    try:
        public_key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
