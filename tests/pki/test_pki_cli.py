"""``ehds pki ...`` handlers, through a parser built with ``pki_commands.register``."""

from __future__ import annotations

import argparse
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ehds.cli import pki_commands
from ehds.pki.errors import PkiInputError, PkiStateError
from ehds.pki.identity import Identity, Role
from ehds.pki.index import CertificateIndex
from ehds.pki.revocation import RevocationList


def _ehds(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="ehds")
    areas = parser.add_subparsers(dest="area", required=True)
    pki_commands.register(areas)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_issue_revoke_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = tmp_path / "pki"
    assert _ehds(["pki", "init", "--dir", str(pki), "--name", "eu-cancer"]) == 0
    assert "federation CA CN=eu-cancer CA,O=eu-cancer created" in capsys.readouterr().out
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600

    out = tmp_path / "coordinator"
    argv = ["pki", "issue", "coordinator", "central", "--dir", str(pki), "--out", str(out)]
    argv += ["--dns", "coord.example", "--ip", "10.0.0.5", "--days", "90"]
    assert _ehds(argv) == 0
    coordinator = _cert(out / "central.pem")
    assert Identity.from_certificate(coordinator) == Identity("central", Role.COORDINATOR)
    eku = coordinator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = coordinator.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coord.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]

    assert _ehds(["pki", "issue", "node", "hospital-a", "--dir", str(pki)]) == 0
    assert _ehds(["pki", "issue", "researcher", "alice", "--dir", str(pki)]) == 0
    printed = capsys.readouterr().out
    assert "issued researcher certificate 'alice'" in printed
    node = _cert(pki / "issued" / "hospital-a.pem")
    assert Identity.from_certificate(node) == Identity("hospital-a", Role.NODE)

    assert _ehds(["pki", "revoke", "hospital-a", "--dir", str(pki)]) == 0
    assert f"revoked node 'hospital-a' (serial {node.serial_number:x})" in capsys.readouterr().out
    revocations = RevocationList.load(pki, _cert(pki / "ca.pem"))
    assert revocations.is_revoked(node)
    assert not revocations.is_revoked(coordinator)

    assert _ehds(["pki", "list", "--dir", str(pki)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "STATUS", "NOT_AFTER", "SERIAL"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["central", "coordinator", "live"],
        ["hospital-a", "node", "revoked"],
        ["alice", "researcher", "live"],
    ]

    assert _ehds(["pki", "crl", "--dir", str(pki)]) == 0
    assert "(1 revoked)" in capsys.readouterr().out
    assert RevocationList.load(pki, _cert(pki / "ca.pem")).number == 3


def test_list_of_a_fresh_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ehds(["pki", "init", "--dir", str(tmp_path)])
    capsys.readouterr()
    assert _ehds(["pki", "list", "--dir", str(tmp_path)]) == 0
    assert "(no certificates issued)" in capsys.readouterr().out


def test_errors_are_typed_for_main_to_report(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    with pytest.raises(PkiStateError, match="ehds pki init"):
        _ehds(["pki", "issue", "node", "hospital-a", "--dir", pki])
    _ehds(["pki", "init", "--dir", pki])
    with pytest.raises(PkiStateError, match="already holds a PKI"):
        _ehds(["pki", "init", "--dir", pki])
    with pytest.raises(PkiInputError, match="invalid name"):
        _ehds(["pki", "issue", "node", "Hospital_A", "--dir", pki])
    _ehds(["pki", "issue", "node", "hospital-a", "--dir", pki])
    with pytest.raises(PkiStateError, match="already has a live"):
        _ehds(["pki", "issue", "node", "hospital-a", "--dir", pki])
    with pytest.raises(PkiStateError, match="never issued"):
        _ehds(["pki", "revoke", "hospital-z", "--dir", pki])
    assert len(CertificateIndex.load(Path(pki) / "index.json").certificates) == 1


def test_an_unknown_role_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _ehds(["pki", "issue", "admin", "x", "--dir", str(tmp_path)])
    assert exit_info.value.code == 2
