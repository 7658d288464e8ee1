"""HDAB keys: creating a key pair, loading a trusted public key."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.core.errors import InputError
from ehds.core.signing import Signer
from ehds.permits import (
    HdabKey,
    HdabKeyError,
    HdabKeyExistsError,
    Permit,
    check_permit,
    create_hdab_key,
    issue_permit,
    load_hdab_key,
)


def test_create_and_use(tmp_path: Path, permit: Permit) -> None:
    private_path, public_path = create_hdab_key(tmp_path / "keys", "fi-hdab")
    assert private_path == tmp_path / "keys" / "fi-hdab.key"
    assert public_path == tmp_path / "keys" / "fi-hdab.pub.pem"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")

    key = load_hdab_key("fi-hdab", public_path)
    der = key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.key_id == hashlib.sha256(der).hexdigest()  # what openssl | sha256sum prints
    signer = Signer.from_file(private_path)
    assert signer.key_id == key.key_id
    document = issue_permit(signer, permit)
    assert check_permit(document, trusted=[key], now=permit.valid_from).key_id == key.key_id


def test_never_overwrites(tmp_path: Path) -> None:
    private_path, _ = create_hdab_key(tmp_path, "fi-hdab")
    before = private_path.read_bytes()
    with pytest.raises(HdabKeyExistsError, match=r"fi-hdab\.key exists"):
        create_hdab_key(tmp_path, "fi-hdab")
    assert private_path.read_bytes() == before
    private_path.unlink()  # a lone public key also blocks: it may be pinned somewhere
    with pytest.raises(HdabKeyExistsError, match=r"fi-hdab\.pub\.pem exists"):
        create_hdab_key(tmp_path, "fi-hdab")
    assert not private_path.exists()


@pytest.mark.parametrize("name", ["", "FI-HDAB", "fi/hdab", "../fi", "-fi"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(HdabKeyError, match="invalid HDAB name"):
        create_hdab_key(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_only_p256_public_keys(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    path = tmp_path / "p384.pub.pem"
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)
    with pytest.raises(HdabKeyError, match=f"{path}: not a P-256 key"):
        load_hdab_key("fi-hdab", path)
    with pytest.raises(HdabKeyError, match="not a P-256 key"):
        HdabKey("fi-hdab", other)


def test_unreadable_files_are_named_without_content(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pub.pem"
    with pytest.raises(InputError, match=f"cannot read {missing}"):
        load_hdab_key("fi-hdab", missing)
    private_path, _ = create_hdab_key(tmp_path, "fi-hdab")
    with pytest.raises(InputError) as caught:  # a private key given where the public one goes
        load_hdab_key("fi-hdab", private_path)
    assert str(private_path) in str(caught.value)
    assert "PRIVATE" not in str(caught.value)
    assert private_path.read_text().splitlines()[1] not in str(caught.value)
