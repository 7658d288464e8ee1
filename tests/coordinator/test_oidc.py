"""OIDC bearer tokens: what `OidcVerifier` accepts, and every check that refuses a token."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm

from ehds.coordinator.service.oidc import (
    JwksError,
    OidcConfig,
    OidcVerifier,
    TokenCheck,
    TokenRejectedError,
    bearer_token,
)
from ehds.core.config import ConfigError, load_config
from ehds.pki.identity import Identity, Role

# tests/ is on sys.path at run time (tests/conftest.py); mypy knows the module by its path.
if TYPE_CHECKING:
    from tests.oidc_issuer import AUDIENCE, ISSUER, KeyKind, LocalIssuer, SigningKey
else:
    from oidc_issuer import AUDIENCE, ISSUER, KeyKind, LocalIssuer, SigningKey


@pytest.fixture
def issuer(tmp_path: Path) -> LocalIssuer:
    return LocalIssuer(tmp_path)


@pytest.fixture
def verifier(issuer: LocalIssuer) -> OidcVerifier:
    return OidcVerifier(issuer.config())


def rejected(verifier: OidcVerifier, token: str, role: Role | None = None) -> TokenRejectedError:
    """The error refusing ``token``, checked never to quote the token or any part of it."""
    with pytest.raises(TokenRejectedError) as caught:
        verifier.identity(token, role)
    error = caught.value
    message = str(error)
    assert message.startswith(f"{error.check.value}: ")
    for part in [token, *token.split(".")]:
        assert len(part) < 8 or part not in message
    assert error.__cause__ is None  # nor a chained PyJWT error that might quote the token
    assert error.__context__ is None or error.__suppress_context__
    return error


# -- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["rsa", "ec"])
@pytest.mark.parametrize("role", [Role.RESEARCHER, Role.OPERATOR, Role.AUDITOR])
def test_a_valid_token_names_its_caller(
    verifier: OidcVerifier, issuer: LocalIssuer, key: KeyKind, role: Role
) -> None:
    token = issuer.mint("alice", role.value, key=key)
    assert verifier.identity(token) == Identity("alice", role)


def test_the_role_claim_may_be_a_list_and_the_caller_picks_among_it(
    verifier: OidcVerifier, issuer: LocalIssuer
) -> None:
    token = issuer.mint("bob", ["auditor", "researcher", "auditor"])
    assert verifier.identity(token) == Identity("bob", Role.AUDITOR)
    assert verifier.identity(token, Role.RESEARCHER) == Identity("bob", Role.RESEARCHER)
    # A role the token does not grant: its first role, which the access check then refuses.
    assert verifier.identity(token, Role.OPERATOR) == Identity("bob", Role.AUDITOR)


def test_the_audience_may_be_one_of_a_list(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint(audience=["account", AUDIENCE])
    assert verifier.identity(token) == Identity("alice", Role.RESEARCHER)


def test_claim_names_are_configurable(tmp_path: Path) -> None:
    issuer = LocalIssuer(tmp_path, name_claim="ehds_name", role_claim="roles")
    verifier = OidcVerifier(issuer.config())
    assert verifier.identity(issuer.mint("carol", ["operator"])) == Identity("carol", Role.OPERATOR)
    # The default claim names carry nothing then.
    other = issuer.mint(None, None, extra={"preferred_username": "carol", "ehds_role": "operator"})
    assert rejected(verifier, other).check is TokenCheck.MISSING_CLAIM


def test_a_token_just_past_its_expiry_is_accepted_within_the_leeway(
    verifier: OidcVerifier, issuer: LocalIssuer
) -> None:
    assert verifier.identity(issuer.mint(expires_in=-10)).name == "alice"


# -- refused: signature and keys -----------------------------------------------------------


def test_a_tampered_token_fails_the_signature(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    header, _, signature = issuer.mint("alice", "researcher").split(".")
    _, payload, _ = issuer.mint("mallory", "operator").split(".")
    error = rejected(verifier, f"{header}.{payload}.{signature}")
    assert error.check is TokenCheck.SIGNATURE


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_a_token_signed_by_another_key_under_a_known_kid_fails_the_signature(
    verifier: OidcVerifier, issuer: LocalIssuer, kind: KeyKind
) -> None:
    stranger = SigningKey.generate(kind, "stranger")
    token = issuer.mint(key=stranger, kid=issuer.keys[kind].kid)
    assert rejected(verifier, token).check is TokenCheck.SIGNATURE


def test_an_unknown_kid_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    stranger = SigningKey.generate("rsa", "stranger")
    assert rejected(verifier, issuer.mint(key=stranger)).check is TokenCheck.UNKNOWN_KEY


def test_a_token_without_kid_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    keyless = jwt.encode(issuer.claims(), issuer.keys["rsa"].private_key, algorithm="RS256")
    error = rejected(verifier, keyless)
    assert error.check is TokenCheck.UNKNOWN_KEY
    assert "no kid" in str(error)


def test_alg_none_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    assert rejected(verifier, issuer.mint_unsigned()).check is TokenCheck.ALGORITHM


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_hs256_keyed_with_the_public_key_is_refused(
    verifier: OidcVerifier, issuer: LocalIssuer, kind: KeyKind
) -> None:
    token = issuer.mint_hmac_with_public_key(key=kind)
    assert rejected(verifier, token).check is TokenCheck.ALGORITHM


def test_hs256_is_refused_even_if_the_configuration_check_were_bypassed(
    issuer: LocalIssuer,
) -> None:
    """Defence in depth: each key is bound to its own algorithm, whatever the list allows."""
    config = issuer.config().model_copy(update={"algorithms": ("RS256", "ES256", "HS256")})
    verifier = OidcVerifier(config)
    error = rejected(verifier, issuer.mint_hmac_with_public_key())
    assert error.check is TokenCheck.ALGORITHM


def test_a_token_cannot_make_a_key_verify_under_another_algorithm(
    issuer: LocalIssuer,
) -> None:
    # RS256 and PS256 both use RSA keys: the JWK's alg (RS256) decides, not the token header.
    verifier = OidcVerifier(issuer.config(algorithms=["RS256", "PS256", "ES256"]))
    rsa = issuer.keys["rsa"]
    pss = SigningKey(rsa.kid, "PS256", rsa.private_key)
    assert rejected(verifier, issuer.mint(key=pss)).check is TokenCheck.ALGORITHM


def test_an_algorithm_outside_the_configured_list_is_refused(issuer: LocalIssuer) -> None:
    verifier = OidcVerifier(issuer.config(algorithms=["RS256"]))
    assert verifier.identity(issuer.mint(key="rsa")).name == "alice"
    assert rejected(verifier, issuer.mint(key="ec")).check is TokenCheck.ALGORITHM


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.b.c", "a.b", "x" * 20_000, "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"],
)
def test_garbage_is_malformed_or_refused_by_algorithm(verifier: OidcVerifier, token: str) -> None:
    assert rejected(verifier, token).check in (TokenCheck.MALFORMED, TokenCheck.UNKNOWN_KEY)


# -- refused: claims -----------------------------------------------------------------------


def test_an_expired_token_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    assert rejected(verifier, issuer.mint(expires_in=-120)).check is TokenCheck.EXPIRED


def test_the_leeway_is_configurable(issuer: LocalIssuer) -> None:
    verifier = OidcVerifier(issuer.config(leeway_seconds=0))
    assert rejected(verifier, issuer.mint(expires_in=-5)).check is TokenCheck.EXPIRED


def test_a_token_not_valid_yet_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint(extra={"nbf": int(issuer.claims()["iat"]) + 600})
    assert rejected(verifier, token).check is TokenCheck.NOT_YET_VALID


def test_a_wrong_issuer_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint(issuer=ISSUER + "-other")
    assert rejected(verifier, token).check is TokenCheck.ISSUER


def test_a_wrong_audience_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint(audience="another-service")
    assert rejected(verifier, token).check is TokenCheck.AUDIENCE


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_exp_iss_and_aud_are_required(
    verifier: OidcVerifier, issuer: LocalIssuer, claim: str
) -> None:
    error = rejected(verifier, issuer.mint(omit=[claim]))
    assert error.check is TokenCheck.MISSING_CLAIM
    assert f"({claim})" in str(error)


def test_a_missing_name_claim_is_refused(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    error = rejected(verifier, issuer.mint(None, "researcher"))
    assert error.check is TokenCheck.MISSING_CLAIM
    assert "preferred_username" in str(error)


@pytest.mark.parametrize("role", [None, [], 42, {"role": "researcher"}, [["researcher"]]])
def test_a_missing_or_unusable_role_claim_is_refused(
    verifier: OidcVerifier, issuer: LocalIssuer, role: object
) -> None:
    token = issuer.mint("alice", None, extra={} if role is None else {"ehds_role": role})
    error = rejected(verifier, token)
    assert error.check in (TokenCheck.MISSING_CLAIM, TokenCheck.ROLE_NOT_ALLOWED)
    assert "ehds_role" in str(error)


@pytest.mark.parametrize(
    "name", ["Alice", "alice@example.org", "-alice", "a" * 64, "", "al ice", 7, ["alice"]]
)
def test_an_invalid_participant_name_is_refused(
    verifier: OidcVerifier, issuer: LocalIssuer, name: object
) -> None:
    token = issuer.mint(None, "researcher", extra={"preferred_username": name})
    error = rejected(verifier, token)
    assert error.check is TokenCheck.BAD_NAME
    if isinstance(name, str) and len(name) >= 3:
        assert name not in str(error)


@pytest.mark.parametrize("role", ["node", "coordinator", ["researcher", "node"], ["coordinator"]])
def test_a_token_never_grants_node_or_coordinator(
    verifier: OidcVerifier, issuer: LocalIssuer, role: str | list[str]
) -> None:
    error = rejected(verifier, issuer.mint("node-fr", role))
    assert error.check is TokenCheck.ROLE_NOT_ALLOWED
    error = rejected(verifier, issuer.mint("node-fr", role), Role.NODE)
    assert error.check is TokenCheck.ROLE_NOT_ALLOWED


@pytest.mark.parametrize("role", ["admin", "Researcher", "RESEARCHER", ""])
def test_an_unknown_role_is_refused(verifier: OidcVerifier, issuer: LocalIssuer, role: str) -> None:
    assert rejected(verifier, issuer.mint("alice", role)).check in (
        TokenCheck.ROLE_NOT_ALLOWED,
        TokenCheck.MISSING_CLAIM,
    )


def test_messages_never_quote_a_claim_value(verifier: OidcVerifier, issuer: LocalIssuer) -> None:
    """Only configured claim NAMES appear in a message."""
    secret = "Sensitive.Value_1234"
    for token in (
        issuer.mint(secret, "researcher"),
        issuer.mint("alice", secret),
        issuer.mint(issuer=secret),
        issuer.mint(audience=secret),
    ):
        assert secret not in str(rejected(verifier, token))


# -- the key set ---------------------------------------------------------------------------


def test_a_new_key_is_picked_up_when_the_jwks_file_changes(
    verifier: OidcVerifier, issuer: LocalIssuer
) -> None:
    old = issuer.mint()
    issuer.rotate("rsa", keep_old=True)
    assert verifier.identity(issuer.mint()).name == "alice"
    assert verifier.identity(old).name == "alice"
    issuer.write_jwks()  # the rollover ends: the old key is withdrawn
    assert rejected(verifier, old).check is TokenCheck.UNKNOWN_KEY
    assert verifier.identity(issuer.mint()).name == "alice"


def test_a_jwks_rewritten_in_place_is_reread(issuer: LocalIssuer) -> None:
    verifier = OidcVerifier(issuer.config())
    token = issuer.mint(key="ec")
    # Same path, same inode: only the size and modification time change.
    text = json.dumps({"keys": [issuer.keys["rsa"].public_jwk()]})
    issuer.jwks_path.write_text(text, encoding="utf-8")
    stat = issuer.jwks_path.stat()
    os.utime(issuer.jwks_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert rejected(verifier, token).check is TokenCheck.UNKNOWN_KEY


def test_a_broken_jwks_refuses_every_token_until_fixed(
    verifier: OidcVerifier, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.mint()
    issuer.jwks_path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        error = rejected(verifier, token)
    assert error.check is TokenCheck.KEYS_UNAVAILABLE
    assert str(issuer.jwks_path) not in str(error)  # the path is in the log, not the answer
    assert str(issuer.jwks_path) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rejected(verifier, token)
    assert not caplog.records  # logged once per problem, not once per call
    issuer.jwks_path.unlink()
    with caplog.at_level(logging.ERROR):
        assert rejected(verifier, token).check is TokenCheck.KEYS_UNAVAILABLE
    assert len(caplog.records) == 1
    issuer.write_jwks()
    assert verifier.identity(token).name == "alice"


def test_an_unusable_jwks_stops_the_verifier_at_construction(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    missing = issuer.config(jwks=str(tmp_path / "missing.json"))
    with pytest.raises(JwksError, match="cannot read"):
        OidcVerifier(missing)
    for text, problem in [
        ("[1, 2]", "expected a JWKS"),
        ('{"keys": []}', "no usable signing key"),
        ('{"keys": [{"kty": "RSA"}]}', "no usable signing key"),
        ("\u00ff{", "not JSON"),
    ]:
        issuer.jwks_path.write_text(text, encoding="utf-8")
        with pytest.raises(JwksError, match=problem):
            OidcVerifier(issuer.config())


def test_private_key_material_in_the_jwks_is_refused(issuer: LocalIssuer) -> None:
    private_key = issuer.keys["rsa"].private_key
    assert isinstance(private_key, RSAPrivateKey)
    private = {**RSAAlgorithm.to_jwk(private_key, as_dict=True), "kid": "leak"}
    issuer.write_jwks(extra=[private])
    with pytest.raises(JwksError, match="private key material"):
        OidcVerifier(issuer.config())
    issuer.write_jwks(extra=[{"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}])
    with pytest.raises(JwksError, match="private key material"):
        OidcVerifier(issuer.config())


def test_members_that_are_not_public_signing_keys_are_ignored(issuer: LocalIssuer) -> None:
    ec = issuer.keys["ec"]
    issuer.write_jwks(
        [issuer.keys["rsa"]],
        extra=[
            {**ec.public_jwk(), "use": "enc"},
            {**ec.public_jwk(), "kid": ""},
            "not an object",
            {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"},
        ],
    )
    verifier = OidcVerifier(issuer.config())
    assert verifier.identity(issuer.mint(key="rsa")).name == "alice"
    assert rejected(verifier, issuer.mint(key="ec")).check is TokenCheck.UNKNOWN_KEY


def test_a_duplicate_kid_is_refused(issuer: LocalIssuer) -> None:
    rsa = issuer.keys["rsa"]
    issuer.write_jwks([rsa, rsa])
    with pytest.raises(JwksError, match="appears twice"):
        OidcVerifier(issuer.config())


# -- configuration and header parsing ------------------------------------------------------


def test_the_configuration_resolves_the_jwks_path_and_has_defaults(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "oidc.yaml"
    path.parent.mkdir()
    path.write_text("issuer: https://idp\naudience: ehds\njwks: keys/jwks.json\n")
    config = load_config(OidcConfig, path)
    assert config.jwks == path.parent / "keys" / "jwks.json"
    assert config.algorithms == ("RS256", "ES256")
    assert (config.name_claim, config.role_claim) == ("preferred_username", "ehds_role")
    assert config.leeway_seconds == 30


@pytest.mark.parametrize(
    ("algorithms", "problem"),
    [("[HS256]", "HMAC"), ("[none]", "'none'"), ("[RS256, HS512]", "'HS512'"), ("[]", "at least")],
)
def test_symmetric_and_none_algorithms_cannot_be_configured(
    tmp_path: Path, algorithms: str, problem: str
) -> None:
    path = tmp_path / "oidc.yaml"
    path.write_text(f"issuer: i\naudience: a\njwks: j.json\nalgorithms: {algorithms}\n")
    with pytest.raises(ConfigError, match="algorithms") as caught:
        load_config(OidcConfig, path)
    assert problem in str(caught.value)


def test_unknown_configuration_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "oidc.yaml"
    path.write_text("issuer: i\naudience: a\njwks: j.json\nrole_claims: roles\n")
    with pytest.raises(ConfigError, match="role_claims: unknown key"):
        load_config(OidcConfig, path)


def test_bearer_token_parses_the_authorization_value() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc.def.ghi ") == "abc.def.ghi"
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "abc.def.ghi", ""):
        with pytest.raises(TokenRejectedError) as caught:
            bearer_token(value)
        assert caught.value.check is TokenCheck.MALFORMED
        assert "dXNlcjpwYXNz" not in str(caught.value)
