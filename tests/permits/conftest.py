"""Fixtures of the permits tests: two HDAB keys, one permit, its signed document."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.core.signing import Signer
from ehds.permits import HdabKey, Permit, issue_permit


@pytest.fixture(scope="session")
def fi_signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def dk_signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def fi_key(fi_signer: Signer) -> HdabKey:
    return HdabKey("fi-hdab", fi_signer.public_key)


@pytest.fixture(scope="session")
def dk_key(dk_signer: Signer) -> HdabKey:
    return HdabKey("dk-hdab", dk_signer.public_key)


@pytest.fixture(scope="session")
def permit() -> Permit:
    return Permit(
        id="FI-2026-042",
        issuer="fi-hdab",
        holders=("alice", "bob"),
        purpose="Incidence of type 2 diabetes in adults, 2015-2024 (scientific research).",
        nodes=("node-fr", "node-fi"),
        analyses=("counts", "incidence"),
        valid_from=datetime(2026, 11, 25, tzinfo=UTC),
        valid_until=datetime(2027, 11, 25, tzinfo=UTC),
        issued_at=datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
    )


@pytest.fixture(scope="session")
def document(fi_signer: Signer, permit: Permit) -> bytes:
    return issue_permit(fi_signer, permit)
