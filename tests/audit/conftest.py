"""Fixtures of the audit tests: signers, a chain writer on SQLite or PostgreSQL, a clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ehds.audit import AuditLog, audit_table
from ehds.core.signing import Signer

CHAIN = "node node-fr"
START = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


class StepClock:
    """A clock that advances by one second per reading (deterministic entry times)."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        value = self.now
        self.now += timedelta(seconds=1)
        return value


def write_certificate(signer_key: ec.EllipticCurvePrivateKey, role: str, name: str) -> bytes:
    """A self-signed certificate naming ``role name`` (enough for key ids and chain names)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(signer_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def other_signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on an empty database with the ``audit_log`` table."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    audit_table(metadata)
    metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def make_log(signer: Signer) -> Callable[..., AuditLog]:
    def make(chain: str = CHAIN, key: Signer | None = None) -> AuditLog:
        return AuditLog(audit_table(sa.MetaData()), key or signer, chain, clock=StepClock())

    return make


Fill = Callable[[sa.Engine, AuditLog, int], list[bytes]]


@pytest.fixture
def fill() -> Fill:
    """Append N entries to a chain (one transaction); the chain's lines."""

    def run(engine: sa.Engine, log: AuditLog, count: int) -> list[bytes]:
        with engine.begin() as conn:
            for index in range(count):
                log.append(
                    conn,
                    actor="researcher alice",
                    action="study.submitted",
                    subject=f"study s{index}",
                    detail={"study": f"s{index}", "analysis": "counts", "n": index},
                    digest="sha256:" + "ab" * 32,
                )
        with engine.connect() as conn:
            return list(log.lines(conn))

    return run


@pytest.fixture
def certificate_pem() -> Callable[[ec.EllipticCurvePrivateKey, str, str], bytes]:
    return write_certificate
