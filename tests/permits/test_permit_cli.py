"""``ehds pki hdab-key`` and ``ehds permit ...`` through the real entry point."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ehds.cli import study_commands
from ehds.cli.main import main
from ehds.federation.model import PermitInfo
from ehds.permits import Permit, parse_permit


def _ehds(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "keys"
    code, out, _ = _ehds(capsys, "pki", "hdab-key", "fi-hdab", "--out", folder)
    assert code == 0
    assert "HDAB key 'fi-hdab' created (key id " in out
    assert _ehds(capsys, "pki", "hdab-key", "dk-hdab", "--out", folder)[0] == 0
    return folder


ISSUE = [
    *("--issuer", "fi-hdab", "--id", "FI-2026-042", "--holder", "alice", "--holder", "bob,carol"),
    *("--nodes", "node-fr,node-fi", "--analyses", "counts", "--analyses", "incidence"),
    *("--from", "2026-11-25", "--until", "2027-11-25T00:00:00Z"),
]


def _issue(
    capsys: pytest.CaptureFixture[str], keys: Path, out: Path, *extra: str
) -> tuple[int, str, str]:
    argv = ["permit", "issue", "--key", keys / "fi-hdab.key", *ISSUE, *extra]
    return _ehds(capsys, *argv, "--purpose", "Diabetes incidence.", "-o", out)


def test_hdab_key_refuses_to_overwrite(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _ehds(capsys, "pki", "hdab-key", "fi-hdab", "--out", keys)
    assert code == 2
    assert "fi-hdab.key exists; refusing to overwrite" in err


def test_issue_then_verify(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    permit_file = tmp_path / "permit.json"
    assert _issue(capsys, keys, permit_file)[0] == 0
    permit = parse_permit(permit_file.read_bytes()).permit
    assert permit.holders == ("alice", "bob", "carol")
    assert permit.nodes == ("node-fr", "node-fi")
    assert permit.analyses == ("counts", "incidence")
    assert permit.valid_from == datetime(2026, 11, 25, tzinfo=UTC)
    assert permit.valid_until == datetime(2027, 11, 25, tzinfo=UTC)

    at = ("--at", "2026-12-01")
    fi = keys / "fi-hdab.pub.pem"
    code, out, _ = _ehds(capsys, "permit", "verify", permit_file, "--hdab-key", fi, *at)
    assert code == 0
    assert "OK, signed by fi-hdab" in out
    assert "permit FI-2026-042: valid" in out

    argv = ["permit", "verify", permit_file, "--hdab-key", fi, *at, "--node", "node-fi"]
    code, out, _ = _ehds(capsys, *argv, "--analysis", "counts", "--holder", "carol")
    assert code == 0
    assert "covers node node-fi, analysis counts, holder carol" in out

    code, out, _ = _ehds(capsys, *argv, "--analysis", "prevalence")
    assert code == 1
    assert out.startswith(f"{permit_file}: refused: permit.analysis_not_covered: ")


def test_issue_from_now(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    permit_file = tmp_path / "permit.json"
    argv = ["permit", "issue", "--key", keys / "fi-hdab.key", "--issuer", "fi-hdab"]
    argv += ["--id", "FI-1", "--holder", "alice", "--nodes", "node-fi", "--analyses", "counts"]
    before = datetime.now(UTC).replace(microsecond=0)
    argv += ["--purpose", "x", "--until", "2999-01-01", "-o", str(permit_file)]
    code, out, _ = _ehds(capsys, *argv)
    assert code == 0
    assert f"written to    {permit_file} (sha256 " in out
    permit = parse_permit(permit_file.read_bytes()).permit
    assert before <= permit.valid_from == permit.issued_at <= datetime.now(UTC)
    # without --at, verify checks at the current time
    fi = keys / "fi-hdab.pub.pem"
    assert _ehds(capsys, "permit", "verify", permit_file, "--hdab-key", fi)[0] == 0


def test_verify_refusals(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    permit_file = tmp_path / "permit.json"
    assert _issue(capsys, keys, permit_file)[0] == 0
    dk = keys / "dk-hdab.pub.pem"
    fi = keys / "fi-hdab.pub.pem"
    verify = ["permit", "verify", permit_file, "--at", "2026-12-01"]

    code, out, _ = _ehds(capsys, *verify, "--hdab-key", dk)
    assert (code, out.split()[2]) == (1, "permit.untrusted_issuer:")
    # fi's key pinned under another name: still untrusted; under its name: fine
    assert _ehds(capsys, *verify, "--hdab-key", f"dk-hdab={fi}")[0] == 1
    assert _ehds(capsys, *verify, "--hdab-key", f"fi-hdab={fi}")[0] == 0

    argv = ["permit", "verify", permit_file, "--hdab-key", fi, "--at", "2030-01-01", "--json"]
    code, out, _ = _ehds(capsys, *argv)
    assert code == 1
    assert json.loads(out) == {
        "ok": False,
        "code": "permit.expired",
        "message": "the data permit has expired",
    }

    data = json.loads(permit_file.read_text())
    data["permit"]["holders"].append("mallory")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    argv = ["permit", "verify", tampered, "--hdab-key", fi, "--at", "2026-12-01"]
    code, out, _ = _ehds(capsys, *argv)
    assert code == 1
    assert "permit.bad_signature" in out

    data["permit"]["holders"] = ["Mallory"]
    tampered.write_text(json.dumps(data))
    code, out, _ = _ehds(capsys, "permit", "verify", tampered, "--hdab-key", fi)
    assert code == 1
    assert "permit.malformed" in out
    assert "permit.holders[0]" in out  # the detail, shown locally
    assert "Mallory" not in out


def test_verify_json(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    permit_file = tmp_path / "permit.json"
    assert _issue(capsys, keys, permit_file)[0] == 0
    argv = ["permit", "verify", permit_file, "--hdab-key", keys / "fi-hdab.pub.pem"]
    code, out, _ = _ehds(capsys, *argv, "--at", "2026-12-01T08:00:00+01:00", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["ok"] is True
    assert result["permit"]["valid_until"] == "2027-11-25T00:00:00Z"
    assert result["permit"]["status"] == "valid"
    assert len(result["key"]) == 64


def test_issue_errors(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    permit_file = tmp_path / "permit.json"
    assert _issue(capsys, keys, permit_file)[0] == 0
    before = permit_file.read_bytes()
    code, _, err = _issue(capsys, keys, permit_file)
    assert code == 2
    assert f"{permit_file} exists; refusing to overwrite it" in err
    assert permit_file.read_bytes() == before

    other = tmp_path / "other.json"
    code, _, err = _issue(capsys, keys, other, "--holder", "Bob Smith")
    assert code == 2
    assert "permit to issue: permit.holders[3]: not a participant name" in err
    assert "Bob Smith" not in err
    assert not other.exists()

    code, _, err = _issue(capsys, keys, other, "--until", "next year")
    assert code == 2
    assert "--until: not a date" in err

    argv = ["permit", "issue", "--key", tmp_path / "missing.key", *ISSUE, "--purpose", "x"]
    code, _, err = _ehds(capsys, *argv, "-o", other)
    assert code == 2
    assert f"cannot read {tmp_path / 'missing.key'}" in err


# ------------------------------------------------------------- register, list, show


class FakeClient:
    """Stands in for CoordinatorClient: the coordinator's side is tested in tests/coordinator."""

    def __init__(self, infos: list[PermitInfo]) -> None:
        self.infos = infos
        self.registered: list[bytes] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def register_permit(self, document: bytes) -> PermitInfo:
        self.registered.append(document)
        return _info(parse_permit(document).permit, document)

    def list_permits(self) -> list[PermitInfo]:
        return self.infos

    def get_permit(self, permit_id: str) -> PermitInfo:
        return next(info for info in self.infos if info.id == permit_id)


def _info(permit: Permit, document: bytes) -> PermitInfo:
    return PermitInfo(
        id=permit.id,
        issuer=permit.issuer,
        holders=permit.holders,
        purpose=permit.purpose,
        nodes=permit.nodes,
        analyses=permit.analyses,
        valid_from=permit.valid_from,
        valid_until=permit.valid_until,
        issued_at=permit.issued_at,
        registered_by="researcher alice",
        registered_at=datetime(2026, 11, 26, 8, 0, tzinfo=UTC),
        document=document,
    )


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, document: bytes, permit: Permit) -> FakeClient:
    fake = FakeClient([_info(permit, document)])
    opened: list[Path] = []

    def open_client(args: argparse.Namespace, env: str = study_commands.CONFIG_ENV) -> Any:
        opened.append(study_commands.config_path(args, env))
        return fake

    monkeypatch.setattr(study_commands, "open_client", open_client)
    return fake


def test_register(
    tmp_path: Path, client: FakeClient, document: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    permit_file = tmp_path / "permit.json"
    permit_file.write_bytes(document)
    config = tmp_path / "researcher.yaml"
    code, out, _ = _ehds(capsys, "permit", "register", permit_file, "--config", config)
    assert code == 0
    assert client.registered == [document]
    assert out.startswith("permit FI-2026-042 registered\npermit FI-2026-042: ")
    assert "by researcher alice" in out

    code, out, _ = _ehds(capsys, "permit", "register", permit_file, "--config", config, "--json")
    assert json.loads(out)["registered_by"] == "researcher alice"


def test_register_checks_the_file_first(
    tmp_path: Path, client: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    permit_file = tmp_path / "permit.json"
    permit_file.write_text('{"format": "ehds-data-permit/1"}')
    code, _, err = _ehds(capsys, "permit", "register", permit_file, "--config", tmp_path / "c.yaml")
    assert code == 2
    assert f"{permit_file}: permit: required field is missing" in err
    assert client.registered == []


def test_list_and_show(
    tmp_path: Path, client: FakeClient, document: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(tmp_path / "operator.yaml")]
    code, out, _ = _ehds(capsys, "permit", "list", *config)
    assert code == 0
    header, _rule, row = out.splitlines()
    assert header.split()[:3] == ["id", "issuer", "status"]
    assert row.split()[:2] == ["FI-2026-042", "fi-hdab"]
    assert "alice,bob" in row

    code, out, _ = _ehds(capsys, "permit", "list", *config, "--json")
    assert [p["id"] for p in json.loads(out)] == ["FI-2026-042"]

    code, out, _ = _ehds(capsys, "permit", "show", "FI-2026-042", *config)
    assert code == 0
    assert "  holders       alice, bob" in out
    assert "  valid         2026-11-25 00:00:00Z until 2027-11-25 00:00:00Z" in out

    code, out, _ = _ehds(capsys, "permit", "show", "FI-2026-042", *config, "--json")
    shown = json.loads(out)
    assert shown["valid_from"] == "2026-11-25T00:00:00Z"
    assert "document" not in shown
    assert len(shown["document_sha256"]) == 64

    client.infos = []
    assert _ehds(capsys, "permit", "list", *config)[1] == "(no permits)\n"


def test_show_document(
    tmp_path: Path, client: FakeClient, document: bytes, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    argv = ["permit", "show", "FI-2026-042", "--config", str(tmp_path / "c.yaml"), "--document"]
    assert main(argv) == 0
    assert capfdbinary.readouterr().out == document


def test_client_commands_need_a_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(study_commands.CONFIG_ENV, raising=False)
    code, _, err = _ehds(capsys, "permit", "list")
    assert code == 2
    assert "no client configuration" in err
