"""A local OpenID Connect issuer for tests: keys, the JWKS file it publishes, and tokens.

Tests never reach a real identity provider: `LocalIssuer` generates an RSA and an EC signing key,
writes their public halves as a JWKS file (what an OidcConfig's ``jwks`` points at) and mints
tokens with any claims, expiry and header, including the forged ones that the verifier must
refuse (``alg: none``, HS256 keyed with the issuer's public key).

    issuer = LocalIssuer(tmp_path)
    verifier = OidcVerifier(issuer.config())
    token = issuer.mint("alice", "researcher")

Importable from any test (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ehds.coordinator.service.oidc import OidcConfig

ISSUER = "https://idp.example.test/realms/ehds"
AUDIENCE = "ehds-coordinator"

KeyKind = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """One of the issuer's key pairs, with the kid and algorithm its JWK publishes."""

    kid: str
    algorithm: str
    private_key: PrivateKey

    @classmethod
    def generate(cls, kind: KeyKind, kid: str) -> SigningKey:
        if kind == "rsa":
            return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64url(obj: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


class LocalIssuer:
    """An identity provider in a folder: ``jwks.json`` plus the private keys in memory."""

    def __init__(
        self,
        folder: Path,
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        name_claim: str = "preferred_username",
        role_claim: str = "ehds_role",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.name_claim = name_claim
        self.role_claim = role_claim
        self.jwks_path = folder / "jwks.json"
        self.keys: dict[KeyKind, SigningKey] = {
            "rsa": SigningKey.generate("rsa", "rsa-1"),
            "ec": SigningKey.generate("ec", "ec-1"),
        }
        self._generation = 1
        self.write_jwks()

    # -- what the coordinator is configured with --------------------------------------------

    def config_data(self, **overrides: Any) -> dict[str, Any]:
        """The ``oidc:`` mapping of a coordinator.yaml (absolute jwks path)."""
        data: dict[str, Any] = {
            "issuer": self.issuer,
            "audience": self.audience,
            "jwks": str(self.jwks_path),
            "name_claim": self.name_claim,
            "role_claim": self.role_claim,
        }
        data.update(overrides)
        return data

    def config(self, **overrides: Any) -> OidcConfig:
        return OidcConfig.model_validate(self.config_data(**overrides))

    # -- the published key set -------------------------------------------------------------

    def write_jwks(
        self,
        keys: Iterable[SigningKey] | None = None,
        *,
        extra: Sequence[object] = (),
    ) -> Path:
        """Publish ``keys`` (default: the current RSA and EC keys) plus ``extra`` members as
        they are (any JSON value: the verifier must cope with odd members).

        Written to a temporary file then renamed, as a provider's key-set sync would, so a
        verifier never reads half a file (and the new inode marks the change)."""
        members: list[object] = [
            key.public_jwk() for key in (self.keys.values() if keys is None else keys)
        ]
        members.extend(extra)
        temporary = self.jwks_path.with_name(self.jwks_path.name + ".tmp")
        temporary.write_text(json.dumps({"keys": members}, indent=2), encoding="utf-8")
        os.replace(temporary, self.jwks_path)
        return self.jwks_path

    def rotate(self, kind: KeyKind = "rsa", *, keep_old: bool = False) -> SigningKey:
        """A new key of ``kind`` with a new kid; the JWKS is rewritten (with the old key too
        when ``keep_old``, as a provider does during a rollover)."""
        self._generation += 1
        old = self.keys[kind]
        new = SigningKey.generate(kind, f"{kind}-{self._generation}")
        self.keys[kind] = new
        self.write_jwks([*self.keys.values(), *([old] if keep_old else [])])
        return new

    # -- tokens ---------------------------------------------------------------------------

    def claims(
        self,
        name: str | None = "alice",
        role: str | list[str] | None = "researcher",
        *,
        expires_in: float = 300,
        issuer: str | None = None,
        audience: str | list[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        omit: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Claims of a token: ``None`` name or role leaves that claim out; ``omit`` removes
        any other (``exp``, ``iss``, ``aud``...); ``extra`` adds or replaces claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "aud": self.audience if audience is None else audience,
            "sub": f"subject-{name}",
            "iat": now,
            "exp": now + int(expires_in),
        }
        if name is not None:
            claims[self.name_claim] = name
        if role is not None:
            claims[self.role_claim] = role
        claims.update(extra or {})
        for key in omit:
            claims.pop(key, None)
        return claims

    def mint(
        self,
        name: str | None = "alice",
        role: str | list[str] | None = "researcher",
        *,
        key: KeyKind | SigningKey = "rsa",
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **claim_options: Any,
    ) -> str:
        """A token signed by ``key`` (one of the issuer's, or any `SigningKey`), its header
        naming ``kid`` (default: the key's own). ``claim_options`` go to `claims`."""
        signing = self.keys[key] if isinstance(key, str) else key
        header = {"kid": signing.kid if kid is None else kid, **(headers or {})}
        return jwt.encode(
            self.claims(name, role, **claim_options),
            signing.private_key,
            algorithm=signing.algorithm,
            headers=header,
        )

    def mint_unsigned(
        self, name: str = "alice", role: str = "researcher", **claim_options: Any
    ) -> str:
        """An ``alg: none`` token (empty signature) naming the RSA key's kid."""
        header = {"alg": "none", "typ": "JWT", "kid": self.keys["rsa"].kid}
        payload = self.claims(name, role, **claim_options)
        return f"{_json_b64url(header)}.{_json_b64url(payload)}."

    def mint_hmac_with_public_key(
        self, name: str = "alice", role: str = "researcher", *, key: KeyKind = "rsa"
    ) -> str:
        """The algorithm-confusion forgery: HS256 "signed" with the issuer's PUBLIC key (PEM)
        as the HMAC secret, naming that key's kid. Anyone can compute it; it must be refused."""
        signing = self.keys[key]
        header = {"alg": "HS256", "typ": "JWT", "kid": signing.kid}
        signing_input = f"{_json_b64url(header)}.{_json_b64url(self.claims(name, role))}"
        mac = hmac.new(signing.public_pem(), signing_input.encode("ascii"), hashlib.sha256)
        return f"{signing_input}.{_b64url(mac.digest())}"

    def write_token(self, path: Path, *args: Any, **kwargs: Any) -> Path:
        """`mint` into a file (a client.yaml ``token_file``), readable by its owner only."""
        path.write_text(self.mint(*args, **kwargs) + "\n", encoding="ascii")
        path.chmod(0o600)
        return path
