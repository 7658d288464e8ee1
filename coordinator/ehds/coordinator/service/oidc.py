"""Who is calling, from an OpenID Connect access token instead of a client certificate.

Researchers, operators and auditors of an organisation with an identity provider can call the
coordinator with ``authorization: Bearer <JWT>`` instead of holding a federation certificate.
The token is an ordinary signed JWT: :class:`OidcVerifier` checks its signature against the
issuer's published JWKS (a file: the coordinator reaches no network to verify a call; whoever
deploys it keeps the file current, and it is re-read when it changes), then its issuer,
audience and lifetime, then maps two claims onto an :class:`~ehds.pki.identity.Identity`: the
participant name (``preferred_username`` by default) and the role (``ehds_role``).

Decisions that close known JWT attacks:

- Only asymmetric algorithms are accepted, from a configured list; ``alg: none`` and the HMAC
  family can never be configured, so a token "signed" with a public key as an HMAC secret
  (algorithm confusion) is refused before any key is touched.
- The key is chosen by the token's ``kid`` among the JWKS's public signing keys, and each key is
  bound to ONE algorithm (its JWK ``alg``, or the one its type implies): the token's header
  cannot make an RSA key verify as anything else.
- A token never grants ``node`` or ``coordinator``: the nodes and the coordinator authenticate
  with certificates only, and a token claiming either role is refused whole.
- Rejection messages name the failed check, never the token or a claim value (they are
  returned to an unauthenticated caller and end up in logs).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jwt
from pydantic import Field, field_validator

from ehds.core.config import ConfigModel, ConfigPath
from ehds.core.errors import StateError
from ehds.pki.errors import PkiInputError
from ehds.pki.identity import Identity, Role, validate_name

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "TOKEN_ROLES",
    "JwksError",
    "OidcConfig",
    "OidcVerifier",
    "TokenCheck",
    "TokenRejectedError",
    "bearer_token",
]

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""The algorithms `OidcConfig.algorithms` may list: signatures checked with a public key."""

TOKEN_ROLES: Final = (Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR)
"""The roles a token can grant. Nodes and the coordinator hold certificates, always."""

MAX_TOKEN_CHARS: Final = 16 * 1024
"""Longer tokens are refused unparsed (identity-provider tokens are a few kilobytes)."""

_KEY_TYPES: Final = frozenset({"RSA", "EC", "OKP"})
"""JWK types kept from the JWKS; ``oct`` (a shared secret) is never a verification key here."""

_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class OidcConfig(ConfigModel):
    """coordinator.yaml ``oidc:``: the identity provider whose tokens the coordinator accepts."""

    # Compared exactly with the token's ``iss`` (the provider's issuer URL).
    issuer: str = Field(min_length=1)
    # Compared with the token's ``aud`` (one of its values when it is a list).
    audience: str = Field(min_length=1)
    # The issuer's published JWKS, as a file (re-read when it changes).
    jwks: ConfigPath
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    name_claim: str = Field(default="preferred_username", min_length=1)
    # A string or a list of strings, each a role name: researcher, operator or auditor.
    role_claim: str = Field(default="ehds_role", min_length=1)
    # Clock difference tolerated on exp, nbf and iat.
    leeway_seconds: int = Field(default=30, ge=0, le=600)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm")
        wrong = [name for name in value if name not in ASYMMETRIC_ALGORITHMS]
        if wrong:
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(
                f"{', '.join(map(repr, wrong))} not allowed: only public-key algorithms "
                f"({allowed}); 'none' and HMAC (HS*) are refused"
            )
        return value


class TokenCheck(StrEnum):
    """The check a token failed; the value is a stable code, `message` a fixed sentence."""

    MALFORMED = "token.malformed"
    ALGORITHM = "token.algorithm"
    UNKNOWN_KEY = "token.unknown_key"
    SIGNATURE = "token.signature"
    EXPIRED = "token.expired"
    NOT_YET_VALID = "token.not_yet_valid"
    ISSUER = "token.issuer"
    AUDIENCE = "token.audience"
    MISSING_CLAIM = "token.missing_claim"
    BAD_NAME = "token.bad_name"
    ROLE_NOT_ALLOWED = "token.role_not_allowed"
    KEYS_UNAVAILABLE = "token.keys_unavailable"

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES: Final = {
    TokenCheck.MALFORMED: "not a well-formed signed JWT",
    TokenCheck.ALGORITHM: "signature algorithm not accepted",
    TokenCheck.UNKNOWN_KEY: "signed with a key (kid) the issuer's key set does not hold",
    TokenCheck.SIGNATURE: "signature does not verify",
    TokenCheck.EXPIRED: "expired",
    TokenCheck.NOT_YET_VALID: "not valid yet (nbf or iat in the future)",
    TokenCheck.ISSUER: "issued by another issuer",
    TokenCheck.AUDIENCE: "issued for another audience",
    TokenCheck.MISSING_CLAIM: "a required claim is missing",
    TokenCheck.BAD_NAME: "the name claim is not a valid participant name",
    TokenCheck.ROLE_NOT_ALLOWED: (
        "the role claim must name only roles a token may grant: "
        + ", ".join(role.value for role in TOKEN_ROLES)
    ),
    TokenCheck.KEYS_UNAVAILABLE: "the coordinator cannot read the issuer's key set (see its log)",
}


class TokenRejectedError(StateError):
    """A bearer token does not identify a caller. The message names the check and, at most, a
    claim NAME from the configuration; never the token or a value taken from it."""

    def __init__(self, check: TokenCheck, detail: str = "") -> None:
        self.check = check
        text = f"{check.value}: {check.message}"
        super().__init__(f"{text} ({detail})" if detail else text)


class JwksError(StateError):
    """The JWKS file cannot be used (unreadable, not a key set, no usable key, a private key)."""


def bearer_token(authorization: str) -> str:
    """The token of an ``authorization`` metadata value ``Bearer <token>`` (scheme in any case)."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenRejectedError(TokenCheck.MALFORMED, "expected 'authorization: Bearer <token>'")
    return token


@dataclass(frozen=True)
class _KeySet:
    stamp: tuple[int, int, int]
    keys: dict[str, jwt.PyJWK]


class OidcVerifier:
    """Turns a bearer token into an `Identity`, or raises `TokenRejectedError`.

    The JWKS file is read at construction (`JwksError` if it is unusable: the coordinator does
    not start with OIDC half-configured) and re-read on the first call after it changes. If a
    changed file is unusable, every token is refused (`TokenCheck.KEYS_UNAVAILABLE`) until it is
    fixed: keeping the old keys would keep honouring a key the issuer just withdrew.
    """

    def __init__(self, config: OidcConfig) -> None:
        self._config = config
        self._algorithms = list(config.algorithms)
        self._key_set = self._load()
        self._problem: str | None = None  # the key set's problem last logged

    @property
    def config(self) -> OidcConfig:
        return self._config

    def identity(self, token: str, role: Role | None = None) -> Identity:
        """The caller a valid token names: acting as ``role`` when the token grants it,
        otherwise as the first role it grants (the access check then refuses a wrong role)."""
        claims = self._verified_claims(token)
        name = claims.get(self._config.name_claim)
        if name is None:
            raise TokenRejectedError(TokenCheck.MISSING_CLAIM, self._config.name_claim)
        if not isinstance(name, str) or not _is_participant_name(name):
            raise TokenRejectedError(
                TokenCheck.BAD_NAME,
                f"{self._config.name_claim}: 1 to 63 characters from a-z, 0-9 and '-', "
                "starting with a letter or digit",
            )
        roles = self._roles(claims)
        return Identity(name, role if role in roles else roles[0])

    def _roles(self, claims: dict[str, Any]) -> tuple[Role, ...]:
        claim = self._config.role_claim
        value = claims.get(claim)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            raise TokenRejectedError(
                TokenCheck.MISSING_CLAIM, f"{claim}: a role name or a list of role names"
            )
        roles: list[Role] = []
        for item in values:
            role = next((r for r in TOKEN_ROLES if r.value == item), None)
            if role is None:
                raise TokenRejectedError(TokenCheck.ROLE_NOT_ALLOWED, claim)
            if role not in roles:
                roles.append(role)
        return tuple(roles)

    def _verified_claims(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenRejectedError(TokenCheck.MALFORMED)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejectedError(TokenCheck.MALFORMED) from None
        # The algorithm is checked before a key is looked up, so that 'none' and HS256 tokens
        # are refused as such whatever kid they carry.
        if header.get("alg") not in self._algorithms:
            raise TokenRejectedError(TokenCheck.ALGORITHM)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRejectedError(TokenCheck.UNKNOWN_KEY, "the token has no kid")
        key = self._keys().get(kid)
        if key is None:
            raise TokenRejectedError(TokenCheck.UNKNOWN_KEY)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=self._algorithms,
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejectedError(*_check_of(exc)) from None
        return claims

    # -- the key set ------------------------------------------------------------------------

    def _keys(self) -> dict[str, jwt.PyJWK]:
        try:
            stamp = _stamp(self._config.jwks)
            if stamp == self._key_set.stamp:
                return self._key_set.keys
            self._key_set = self._load()
        except (OSError, JwksError) as exc:
            problem = str(exc) if isinstance(exc, JwksError) else (exc.strerror or str(exc))
            if problem != self._problem:  # once per problem, not once per call
                self._problem = problem
                log.error(
                    "refusing every OIDC token until the key set %s is fixed: %s",
                    self._config.jwks,
                    problem,
                )
            raise TokenRejectedError(TokenCheck.KEYS_UNAVAILABLE) from None
        self._problem = None
        log.info(
            "OIDC key set %s re-read: key ids %s",
            self._config.jwks,
            ", ".join(sorted(self._key_set.keys)),
        )
        return self._key_set.keys

    def _load(self) -> _KeySet:
        path = self._config.jwks
        try:
            stamp = _stamp(path)
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise JwksError(f"OIDC key set {path}: cannot read the file ({exc})") from None
        try:
            document = json.loads(text)
        except ValueError:
            raise JwksError(f"OIDC key set {path}: not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksError(f'OIDC key set {path}: expected a JWKS {{"keys": [...]}}')
        keys: dict[str, jwt.PyJWK] = {}
        for index, member in enumerate(document["keys"]):
            where = f"OIDC key set {path}: keys[{index}]"
            key = self._usable_key(member, where)
            if key is None:
                continue
            kid = member["kid"]
            if kid in keys:
                raise JwksError(f"{where}: kid {kid!r} appears twice")
            keys[kid] = key
        if not keys:
            raise JwksError(
                f"OIDC key set {path}: no usable signing key for the algorithms "
                f"{', '.join(self._algorithms)}"
            )
        return _KeySet(stamp, keys)

    def _usable_key(self, member: object, where: str) -> jwt.PyJWK | None:
        """The key of one JWKS member, or None (logged) for a member that is not a public
        signing key for a configured algorithm; `JwksError` for a private key."""
        if not isinstance(member, dict):
            log.warning("%s: not a JSON object, ignored", where)
            return None
        if _PRIVATE_MEMBERS & member.keys():
            # Not ignored: a published private key is an incident, not a misconfiguration.
            raise JwksError(f"{where}: holds private key material; publish public keys only")
        if member.get("kty") not in _KEY_TYPES or member.get("use", "sig") != "sig":
            log.info("%s: not a public signing key, ignored", where)
            return None
        if not isinstance(member.get("kid"), str) or not member["kid"]:
            log.warning("%s: has no kid, ignored (tokens select their key by kid)", where)
            return None
        try:
            key = jwt.PyJWK(member)
        except jwt.PyJWTError as exc:
            log.warning("%s: unusable (%s), ignored", where, exc)
            return None
        if key.algorithm_name not in self._algorithms:
            log.info("%s: algorithm %s not configured, ignored", where, key.algorithm_name)
            return None
        weak = key.Algorithm.check_key_length(key.key)
        if weak:
            log.warning("%s: ignored: %s", where, weak)
            return None
        return key


def _is_participant_name(name: str) -> bool:
    # PkiInputError's message quotes the name: only the verdict is used.
    try:
        validate_name(name)
    except PkiInputError:
        return False
    return True


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = os.stat(path)
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _check_of(error: jwt.PyJWTError) -> tuple[TokenCheck, str]:
    """The check a PyJWT error reports (its own message is not used: it may quote the token)."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return TokenCheck.EXPIRED, ""
    if isinstance(error, jwt.ImmatureSignatureError):
        return TokenCheck.NOT_YET_VALID, ""
    if isinstance(error, jwt.InvalidIssuerError):
        return TokenCheck.ISSUER, ""
    if isinstance(error, jwt.InvalidAudienceError):
        return TokenCheck.AUDIENCE, ""
    if isinstance(error, jwt.MissingRequiredClaimError):
        claim = error.claim if error.claim in {"exp", "iss", "aud"} else ""
        return TokenCheck.MISSING_CLAIM, claim
    if isinstance(error, jwt.InvalidAlgorithmError):
        return TokenCheck.ALGORITHM, "the key is bound to another algorithm"
    if isinstance(error, jwt.InvalidSignatureError | jwt.InvalidKeyError):
        return TokenCheck.SIGNATURE, ""
    return TokenCheck.MALFORMED, ""
