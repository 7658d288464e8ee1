"""HDAB keys: the key pair a health data access body signs permits with.

An HDAB is not a participant of the federation (it holds no certificate and never connects):
it is a P-256 key pair. Its private key stays with the HDAB; the coordinator and every node
pin its public key, under the HDAB's name, in their configuration. A permit counts as issued
by a trusted HDAB only when its signature key is one of those pinned keys *and* its
``issuer`` is the name that key is pinned under.

    NAME.key       PEM PKCS#8 private key, 0600: the HDAB keeps it
    NAME.pub.pem   PEM public key: handed to the coordinator and node operators
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.core.signing import key_id, load_public_key
from ehds.permits.errors import HdabKeyError, HdabKeyExistsError
from ehds.pki.authority import generate_key
from ehds.pki.directory import PRIVATE_MODE, PUBLIC_MODE, write_new
from ehds.pki.errors import PkiStateError
from ehds.pki.identity import NAME_PATTERN
from ehds.pki.pem import private_key_pem

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub.pem"


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise HdabKeyError(
            f"invalid HDAB name {name[:70]!r}: 1 to 63 characters from a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class HdabKey:
    """A trusted HDAB public key and the name (``permit.issuer``) it is trusted under."""

    name: str
    public_key: ec.EllipticCurvePublicKey
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.public_key.curve.name != "secp256r1":
            raise HdabKeyError(f"HDAB key {self.name}: not a P-256 key (ES256)")
        object.__setattr__(self, "key_id", key_id(self.public_key))


def load_hdab_key(name: str, path: Path) -> HdabKey:
    """``name``'s public key from ``path`` (a PEM public key or a certificate)."""
    public_key = load_public_key(path)  # errors name the file
    if public_key.curve.name != "secp256r1":
        raise HdabKeyError(f"{path}: not a P-256 key (ES256)")
    return HdabKey(_check_name(name), public_key)


def hdab_key_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """Where `create_hdab_key` writes ``name``'s private and public key."""
    _check_name(name)
    return folder / f"{name}{PRIVATE_SUFFIX}", folder / f"{name}{PUBLIC_SUFFIX}"


def create_hdab_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A new key pair for HDAB ``name`` in ``folder``: (private key path, public key path).

    Refuses (`HdabKeyExistsError`) if either file exists: overwriting an HDAB key would
    silently invalidate every permit it signed. The private key is written 0600 from the start.
    """
    private_path, public_path = hdab_key_paths(folder, name)
    for path in (private_path, public_path):
        if path.exists():
            raise HdabKeyExistsError(f"{path} exists; refusing to overwrite an HDAB key")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HdabKeyError(f"cannot create {folder}: {exc.strerror}") from None
    key = generate_key()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        write_new(private_path, private_key_pem(key), PRIVATE_MODE)
        try:
            write_new(public_path, public_pem, PUBLIC_MODE)
        except BaseException:
            private_path.unlink(missing_ok=True)
            raise
    except PkiStateError as exc:  # created by someone else meanwhile
        raise HdabKeyExistsError(str(exc)) from None
    except OSError as exc:
        raise HdabKeyError(f"cannot write the key files in {folder}: {exc.strerror}") from None
    return private_path, public_path
