"""Benchmark what governance costs: the audit chain, permit checks and signed assignments.

    .venv/bin/python -m bench.bench_governance [--entries 20000] [--verify 100000]

Targets (issue 6): appending an audit entry (hash, ECDSA signature, insert, in its own
transaction on SQLite) under 1 ms; verifying a 100,000-entry chain with every signature under
10 s on this 2-core machine; the node's per-task checks (assignment signature, permit) under
5 ms. Each figure is printed beside a reference measured in the same run on the same data:

* append: the same canonical line inserted into a plain table, one transaction each (what an
  unchained, unsigned log costs);
* verify: SHA-256 over the same lines (the floor of reading and hashing them);
* checks: one bare ECDSA P-256 verification (the floor of any signature check).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.audit import AuditEntry, AuditLog, audit_table, verify_lines
from ehds.core.signing import Signer, canonical_bytes, sha256_hex, verify_signature
from ehds.federation.assignment_signing import signing_bytes
from ehds.federation.model import AnalysisRef, AuditRef, TaskAssignment
from ehds.permits import HdabKey, Permit, check_permit, issue_permit


def _engine(path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def _pragmas(connection: object, _record: object) -> None:
        cursor = connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return engine


def bench_append(folder: Path, entries: int, signer: Signer) -> tuple[float, float, list[bytes]]:
    metadata = sa.MetaData()
    table = audit_table(metadata)
    engine = _engine(folder / "chain.db")
    metadata.create_all(engine)
    log = AuditLog(table, signer, "node bench")
    started = time.perf_counter()
    for i in range(entries):
        with engine.begin() as connection:
            log.append(
                connection,
                actor="researcher alice",
                action="task.started",
                subject=f"task study-{i}.node-bench",
                detail={"analysis": "counts", "version": "1.0.0", "attempt": 1},
                digest="sha256:" + sha256_hex(str(i).encode()),
            )
    chained = (time.perf_counter() - started) / entries
    with engine.connect() as connection:
        lines = list(log.lines(connection))

    plain_meta = sa.MetaData()
    plain = sa.Table(
        "plain_log",
        plain_meta,
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entry", sa.Text),
    )
    plain_engine = _engine(folder / "plain.db")
    plain_meta.create_all(plain_engine)
    started = time.perf_counter()
    for i, line in enumerate(lines, start=1):
        with plain_engine.begin() as connection:
            connection.execute(plain.insert().values(seq=i, entry=line.decode()))
    reference = (time.perf_counter() - started) / entries
    engine.dispose()
    plain_engine.dispose()
    return chained, reference, lines


def bench_verify(lines: list[bytes], target: int, signer: Signer) -> tuple[float, float, bool]:
    """Verify a chain of ``target`` entries: the appended ones, extended by re-chaining copies."""
    entries = [AuditEntry.parse(line) for line in lines]
    chain: list[bytes] = []
    prev = "0" * 64
    base = datetime.now(UTC)
    for seq in range(1, target + 1):
        template = entries[(seq - 1) % len(entries)]
        body = {
            "v": 1,
            "chain": template.chain,
            "seq": seq,
            "time": (base + timedelta(microseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": template.actor,
            "action": template.action,
            "subject": template.subject,
            "detail": template.detail,
            "digest": template.digest,
            "prev": prev,
            "key": signer.key_id,
        }
        data = canonical_bytes(body)
        prev = sha256_hex(data)
        chain.append(canonical_bytes({**body, "hash": prev, "sig": signer.sign(data)}))
    started = time.perf_counter()
    report = verify_lines(chain, keys={signer.key_id: signer.public_key})
    verified = time.perf_counter() - started
    started = time.perf_counter()
    for line in chain:
        sha256_hex(line)
    reference = time.perf_counter() - started
    return verified, reference, report.ok


def bench_checks(rounds: int) -> tuple[float, float, float]:
    hdab = Signer(ec.generate_private_key(ec.SECP256R1()))
    coordinator = Signer(ec.generate_private_key(ec.SECP256R1()))
    now = datetime.now(UTC)
    document = issue_permit(
        hdab,
        Permit(
            id="BENCH-1",
            issuer="bench-hdab",
            holders=("alice",),
            purpose="benchmark",
            nodes=("node-fr", "node-fi", "node-dk"),
            analyses=("counts", "incidence"),
            valid_from=now - timedelta(days=1),
            valid_until=now + timedelta(days=1),
            issued_at=now,
        ),
    )
    trusted = [HdabKey("bench-hdab", hdab.public_key)]
    assignment = TaskAssignment(
        task_id="study-1.node-fr",
        study_id="study-1",
        analysis=AnalysisRef("counts", "1.0.0"),
        parameters=b'{"cohort":{"name":"x"}}' * 20,
        deadline=now + timedelta(hours=1),
        min_cell_count=10,
        data_permit_id="BENCH-1",
        requested_by="alice",
        permit=document,
        nonce="0" * 32,
        expires_at=now + timedelta(hours=1),
        coordinator_audit_ref=AuditRef("coordinator coordinator", 7, "ab" * 32),
    )
    signature = coordinator.sign(signing_bytes(assignment))
    started = time.perf_counter()
    for _ in range(rounds):
        check_permit(
            document, trusted=trusted, now=now, node="node-fr", analysis="counts", holder="alice"
        )
    permit = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        assert verify_signature(coordinator.public_key, signing_bytes(assignment), signature)
    signed = (time.perf_counter() - started) / rounds
    data = b"x" * 600
    raw = coordinator.sign(data)
    started = time.perf_counter()
    for _ in range(rounds):
        verify_signature(coordinator.public_key, data, raw)
    reference = (time.perf_counter() - started) / rounds
    return permit, signed, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--verify", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2_000)
    args = parser.parse_args()
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    with tempfile.TemporaryDirectory() as tmp:
        chained, plain, lines = bench_append(Path(tmp), args.entries, signer)
    print(
        f"audit append ({args.entries:,} entries, one transaction each, SQLite synchronous=FULL): "
        f"{chained * 1e6:,.0f} us/entry; plain insert of the same line {plain * 1e6:,.0f} us "
        f"(ratio {chained / plain:.2f}; target < 1,000 us)"
    )
    verified, hashed, ok = bench_verify(lines, args.verify, signer)
    print(
        f"audit verify ({args.verify:,} entries, every signature): {verified:.2f} s (ok={ok}); "
        f"SHA-256 of the same lines {hashed:.2f} s (target < 10 s)"
    )
    permit, signed, reference = bench_checks(args.rounds)
    print(
        f"node checks per task: permit {permit * 1e6:,.0f} us + assignment signature "
        f"{signed * 1e6:,.0f} us = {(permit + signed) * 1e3:.2f} ms; one bare ECDSA verify "
        f"{reference * 1e6:,.0f} us (target < 5 ms)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
