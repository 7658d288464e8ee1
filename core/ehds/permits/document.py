"""The signed permit document: the file an HDAB hands over, and its parser.

    {"format": "ehds-data-permit/1",
     "permit": {"id": ..., "issuer": ..., "holders": [...], "purpose": ..., "nodes": [...],
                "analyses": [...], "valid_from": "...Z", "valid_until": "...Z",
                "issued_at": "...Z"},
     "signature": {"alg": "ES256", "key": "<key id>", "value": "<base64 DER ECDSA-SHA256>"}}

The signature is over the RFC 8785 canonical bytes of the ``permit`` object *as it appears
in the document* (`ehds.core.signing.canonical_bytes`), so the file may be pretty-printed,
re-indented or re-ordered without breaking it, and anyone can check it with a JCS library and
openssl. The key id is the SHA-256 of the HDAB public key's DER SubjectPublicKeyInfo.

Parsing is strict: UTF-8 only, no duplicate keys (two parsers must never read two different
permits out of one signed file), no unknown fields, a size cap. `parse_permit` checks the
form only; whether the signature verifies and under whose key is `ehds.permits.check`'s job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from ehds.core.signing import SignatureFormatError, Signer, canonical_bytes, sha256_hex
from ehds.permits.errors import HdabKeyError, PermitFormatError
from ehds.permits.model import Permit

FORMAT: Final = "ehds-data-permit/1"
ALGORITHM: Final = "ES256"
MAX_DOCUMENT_BYTES: Final = 1024 * 1024
_KEY_ID_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_BASE64_PATTERN: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MAX_SIGNATURE_LENGTH: Final = 200  # a base64 DER P-256 signature is at most 96 characters


@dataclass(frozen=True)
class SignedPermit:
    """A parsed permit document: the permit, who signed it (key id), and the exact bytes."""

    permit: Permit
    key_id: str
    signature: str
    document: bytes

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the document bytes, as received."""
        return sha256_hex(self.document)

    @property
    def signed_bytes(self) -> bytes:
        """The canonical bytes of the ``permit`` object, which the signature is over."""
        return canonical_bytes(_loads(self.document, "permit")["permit"])


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError
        result[key] = value
    return result


class _DuplicateKeyError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(document: bytes, source: str) -> dict[str, Any]:
    if len(document) > MAX_DOCUMENT_BYTES:
        raise PermitFormatError(f"{source}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError:
        raise PermitFormatError(f"{source}: not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKeyError:
        raise PermitFormatError(f"{source}: a JSON object repeats a key") from None
    except (ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise PermitFormatError(f"{source}: not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise PermitFormatError(f"{source}: must be a JSON object")
    return data


def _signature_part(data: Any, source: str) -> tuple[str, str]:
    if not isinstance(data, dict):
        raise PermitFormatError(f"{source}: signature: must be a JSON object")
    for name in ("alg", "key", "value"):
        if name not in data:
            raise PermitFormatError(f"{source}: signature.{name}: required field is missing")
        if not isinstance(data[name], str):
            raise PermitFormatError(f"{source}: signature.{name}: must be a string")
    if len(data) != 3:
        raise PermitFormatError(f"{source}: signature: unknown field")
    if data["alg"] != ALGORITHM:
        raise PermitFormatError(f"{source}: signature.alg: must be {ALGORITHM!r}")
    if not _KEY_ID_PATTERN.fullmatch(data["key"]):
        raise PermitFormatError(f"{source}: signature.key: not a key id (64 lowercase hex digits)")
    value = data["value"]
    if len(value) > _MAX_SIGNATURE_LENGTH or not _BASE64_PATTERN.fullmatch(value):
        raise PermitFormatError(f"{source}: signature.value: not a base64 ECDSA signature")
    return data["key"], value


def parse_permit(document: bytes, *, source: str = "permit document") -> SignedPermit:
    """The permit in ``document``, or `PermitFormatError` naming ``source`` and the field.

    Checks the form only, not the signature: see `ehds.permits.check_permit`.
    """
    data = _loads(document, source)
    if "format" not in data:
        raise PermitFormatError(f"{source}: format: required field is missing")
    if data["format"] != FORMAT:
        raise PermitFormatError(f"{source}: format: must be {FORMAT!r}")
    for name in ("permit", "signature"):
        if name not in data:
            raise PermitFormatError(f"{source}: {name}: required field is missing")
    if len(data) != 3:
        raise PermitFormatError(f"{source}: unknown top-level field")
    try:
        permit = Permit.from_json(data["permit"])
    except PermitFormatError as exc:
        raise PermitFormatError(f"{source}: {exc}") from None
    key, signature = _signature_part(data["signature"], source)
    try:
        canonical_bytes(data["permit"])  # what check_permit verifies; fails for no valid permit
    except SignatureFormatError:
        raise PermitFormatError(f"{source}: permit: not canonicalisable (RFC 8785)") from None
    return SignedPermit(permit=permit, key_id=key, signature=signature, document=bytes(document))


def issue_permit(signer: Signer, permit: Permit) -> bytes:
    """The signed document of ``permit`` (UTF-8 JSON, indented, ending with a newline).

    ``signer`` is the HDAB's P-256 key (`ehds.permits.keys.create_hdab_key`); its name is
    expected to be ``permit.issuer``, which is how verifiers pick the key they trust.
    """
    if signer.public_key.curve.name != "secp256r1":
        raise HdabKeyError("the signing key is not a P-256 key (ES256)")
    content = permit.to_json()
    document = {
        "format": FORMAT,
        "permit": content,
        "signature": {
            "alg": ALGORITHM,
            "key": signer.key_id,
            "value": signer.sign(canonical_bytes(content)),
        },
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
