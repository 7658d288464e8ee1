"""``ehds audit export|verify`` on a node's and a coordinator's SQLite state databases."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehds.audit import AuditEntry, AuditLog, AuditRef, audit_table
from ehds.cli import audit_commands
from ehds.cli.main import main
from ehds.core.errors import InputError, StateError
from ehds.core.signing import Signer

CertificatePem = Callable[[ec.EllipticCurvePrivateKey, str, str], bytes]


def _ehds(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="ehds")
    areas = parser.add_subparsers(dest="area", required=True)
    audit_commands.register(areas)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


@dataclass
class Process:
    config: Path
    database: Path
    certificate: Path
    log: AuditLog

    def append(self, count: int, anchors: dict[int, AuditRef] | None = None) -> list[AuditRef]:
        engine = sa.create_engine(f"sqlite:///{self.database}")
        self.log.table.metadata.create_all(engine)
        refs = []
        with engine.begin() as conn:
            for index in range(count):
                head = self.log.head(conn)
                seq = 1 if head is None else head.seq + 1
                refs.append(
                    self.log.append(
                        conn,
                        actor="researcher alice",
                        action="task.dispatched",
                        subject=f"task t{index}",
                        anchor=(anchors or {}).get(seq),
                    )
                )
        engine.dispose()
        return refs


def _process(folder: Path, kind: str, name: str, certificate_pem: CertificatePem) -> Process:
    folder.mkdir()
    (folder / "certs").mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = folder / "certs" / f"{name}.pem"
    certificate.write_bytes(certificate_pem(key, kind, name))
    (folder / "certs" / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = {"certificate": f"certs/{name}.pem", "key": f"certs/{name}.key", "ca": "certs/ca.pem"}
    if kind == "node":
        document = {
            "coordinator": {"address": "localhost:50051"},
            "tls": tls,
            "cdm": {"url": "omop.duckdb"},
            "policy": "policy.yaml",
            "state": "state/node-state.db",
        }
        (folder / "state").mkdir()
        database = folder / "state" / "node-state.db"
    else:
        document = {
            "listen": {"host": "127.0.0.1", "port": 50051},
            "tls": tls,
            "state": {"url": "sqlite:///coordinator-state.db"},
        }
        database = folder / "coordinator-state.db"
    config = folder / f"{kind}.yaml"
    config.write_text(yaml.safe_dump(document))
    log = AuditLog(audit_table(sa.MetaData()), Signer(key), f"{kind} {name}")
    return Process(config, database, certificate, log)


@pytest.fixture
def node(tmp_path: Path, certificate_pem: CertificatePem) -> Process:
    return _process(tmp_path / "node", "node", "node-fr", certificate_pem)


@pytest.fixture
def coordinator(tmp_path: Path, certificate_pem: CertificatePem) -> Process:
    return _process(tmp_path / "coordinator", "coordinator", "coordinator", certificate_pem)


def test_export_and_verify_with_anchors(
    tmp_path: Path,
    node: Process,
    coordinator: Process,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heads = node.append(5)
    coordinator.append(4, anchors={2: heads[2], 4: heads[4]})
    node_file = tmp_path / "node-fr.jsonl"
    coordinator_file = tmp_path / "coordinator.jsonl"
    assert _ehds(["audit", "export", "--config", str(node.config), "-o", str(node_file)]) == 0
    assert "exported 5 audit entries to" in capsys.readouterr().err
    assert (
        _ehds(["audit", "export", "--config", str(coordinator.config), "-o", str(coordinator_file)])
        == 0
    )
    lines = node_file.read_bytes().splitlines()
    assert [AuditEntry.parse(line).ref for line in lines] == heads
    assert node_file.read_bytes().endswith(b"}\n")
    capsys.readouterr()

    argv = ["audit", "verify", str(node_file), "--certificate", str(node.certificate)]
    assert _ehds([*argv, "--against", str(coordinator_file)]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"audit chain node node-fr: 5 entries, head 5 {heads[4].hash[:12]}, 2 anchors checked: OK\n"
    )
    assert err == ""

    # The node's own certificate comes from its configuration.
    assert _ehds(["audit", "verify", "--config", str(node.config)]) == 0
    assert capsys.readouterr().out.endswith("0 anchors checked: OK\n")

    # Cut the node's last entry: the coordinator's anchor of entry 5 shows it.
    node_file.write_bytes(b"".join(line + b"\n" for line in lines[:4]))
    assert _ehds([*argv, "--against", str(coordinator_file)]) == 1
    assert capsys.readouterr().out == (
        "audit chain node node-fr: FAILED: entry 5: missing: the chain ends at entry 4 but "
        "another chain anchored entry 5 (truncated)\n"
    )
    assert _ehds(argv) == 0  # without the other chain, the cut is invisible
    capsys.readouterr()


def test_verify_names_the_damage(
    tmp_path: Path, node: Process, capsys: pytest.CaptureFixture[str]
) -> None:
    node.append(3)
    exported = tmp_path / "node.jsonl"
    _ehds(["audit", "export", "--config", str(node.config), "-o", str(exported)])
    text = exported.read_text(encoding="utf-8")
    exported.write_text(text.replace('"subject":"task t1"', '"subject":"task t9"'))
    capsys.readouterr()
    assert _ehds(["audit", "verify", str(exported)]) == 1
    out, err = capsys.readouterr()
    assert out == (
        "audit chain node node-fr: FAILED: entry 2: hash does not match its content (modified)\n"
    )
    assert "signatures not checked" in err

    other = tmp_path / "other.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    exported.write_text(text)
    assert _ehds(["audit", "verify", str(exported), "--certificate", str(other)]) == 1
    assert "(unknown key)" in capsys.readouterr().out


def test_export_since_stdout_and_db_url(
    node: Process, coordinator: Process, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    refs = node.append(4)
    coordinator.append(2)
    # Entries are written "now": since far in the past is everything, in the future nothing.
    assert _ehds(["audit", "export", "--config", str(node.config), "--since", "2000-01-01"]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert [AuditEntry.parse(line).ref for line in lines] == refs
    third = AuditEntry.parse(lines[2]).time.isoformat()
    assert _ehds(["audit", "export", "--config", str(node.config), "--since", third]) == 0
    assert capsysbinary.readouterr().out.splitlines() == lines[2:]
    assert _ehds(["audit", "export", "--db", f"sqlite:///{coordinator.database}"]) == 0
    assert len(capsysbinary.readouterr().out.splitlines()) == 2
    with pytest.raises(InputError, match="--since: not an ISO date"):
        _ehds(["audit", "export", "--config", str(node.config), "--since", "yesterday"])


def test_verify_a_piece(tmp_path: Path, node: Process, capsys: pytest.CaptureFixture[str]) -> None:
    node.append(4)
    piece = tmp_path / "piece.jsonl"
    engine = sa.create_engine(f"sqlite:///{node.database}")
    with engine.connect() as conn:
        lines = list(node.log.lines(conn, after_seq=2))
    engine.dispose()
    piece.write_bytes(b"".join(line + b"\n" for line in lines))
    assert _ehds(["audit", "verify", str(piece)]) == 1
    assert "(deleted)" in capsys.readouterr().out
    assert _ehds(["audit", "verify", str(piece), "--partial"]) == 0
    assert "2 entries, head 4" in capsys.readouterr().out


def test_errors(tmp_path: Path, node: Process) -> None:
    with pytest.raises(StateError, match="no state database at"):
        _ehds(["audit", "export", "--config", str(node.config)])
    assert not node.database.exists()  # read-only: never created
    engine = sa.create_engine(f"sqlite:///{node.database}")
    engine.connect().close()  # creates the file
    engine.dispose()
    with pytest.raises(StateError, match="has no audit_log table"):
        _ehds(["audit", "export", "--config", str(node.config)])
    researcher = tmp_path / "researcher.yaml"
    researcher.write_text("coordinator: {address: 'x:1'}\ntls: {}\n")
    with pytest.raises(InputError, match="neither a node configuration"):
        _ehds(["audit", "export", "--config", str(researcher)])
    with pytest.raises(InputError, match="cannot read"):
        _ehds(["audit", "verify", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit):
        _ehds(["audit", "verify", "x.jsonl", "--db", "sqlite:///x.db"])


def test_registered_in_the_ehds_command(
    tmp_path: Path, node: Process, capsys: pytest.CaptureFixture[str]
) -> None:
    node.append(2)
    assert main(["audit", "verify", "--config", str(node.config)]) == 0
    assert "audit chain node node-fr: 2 entries" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.postgres
def test_export_from_postgresql_reads_only(
    fresh_postgres_url: str, signer: Signer, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    from ehds.audit.state_source import open_read_only, state_from_url

    table = audit_table(sa.MetaData())
    engine = sa.create_engine(fresh_postgres_url)
    table.metadata.create_all(engine)
    log = AuditLog(table, signer, "coordinator coordinator")
    with engine.begin() as conn:
        refs = [log.append(conn, actor="a", action=f"x{i}") for i in range(3)]
    engine.dispose()
    assert _ehds(["audit", "export", "--db", fresh_postgres_url]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert [AuditEntry.parse(line).ref for line in lines] == refs
    reader = open_read_only(state_from_url(fresh_postgres_url))
    try:
        with reader.connect() as conn, pytest.raises(sa.exc.InternalError, match="read-only"):
            conn.execute(table.delete())
    finally:
        reader.dispose()


def test_sqlite_is_opened_read_only(node: Process) -> None:
    from ehds.audit.state_source import open_read_only, state_from_config

    node.append(1)
    reader = open_read_only(state_from_config(node.config))
    try:
        with reader.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly"):
            conn.execute(node.log.table.delete())
    finally:
        reader.dispose()


def test_coordinator_state_url_from_a_secret_file(tmp_path: Path) -> None:
    """A Kubernetes coordinator's config names its PostgreSQL URL by file (state.url_file)."""
    from ehds.audit.state_source import state_from_config

    secret = tmp_path / "db" / "url"
    secret.parent.mkdir()
    secret.write_text("postgresql+psycopg://ehds:s3cret@db.example.eu/state\n")
    config = tmp_path / "coordinator.yaml"
    config.write_text("listen: {port: 50051}\nstate: {url_file: db/url}\n")
    state = state_from_config(config)
    assert state.url.get_backend_name() == "postgresql"
    assert state.url.host == "db.example.eu"
    secret.write_text("")
    with pytest.raises(InputError, match=r"state\.url_file: .* is empty") as caught:
        state_from_config(config)
    assert "s3cret" not in str(caught.value)
