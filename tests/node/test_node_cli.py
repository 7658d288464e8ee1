"""`ehds node serve|check`: refusing to start without a valid policy, the ready line, health,
a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from node_harness import Pki, write_node_config, write_policy

from ehds.audit import payload_digest
from ehds.cli.main import main
from ehds.federation.transport import INSECURE_WARNING

TIMEOUT_S = 15.0


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(
    tmp_path: Path, pki: Pki, cdm: Path, *, policy: str = "policy.yaml", node: str = "hospital-a"
) -> Path:
    address = f"127.0.0.1:{_unused_port()}"
    return write_node_config(tmp_path, pki=pki, cdm=cdm, address=address, node=node, policy=policy)


def test_serve_refuses_to_start_without_a_policy_file(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, pki, cdm, policy="missing-policy.yaml")
    assert main(["node", "serve", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "no valid site policy" in error
    assert str(tmp_path / "missing-policy.yaml") in error
    assert "cannot read the file" in error
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_serve_refuses_an_invalid_policy(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: '1'\nanalyses:\n  - {name: person_count, version: 1.0.0, scope: all}\n",
        encoding="utf-8",
    )
    config = _config(tmp_path, pki, cdm)
    assert main(["node", "serve", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "analyses.0.scope" in error
    assert "unknown key" in error


def test_serve_refuses_a_policy_whose_pinned_key_cannot_be_read(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path / "policy.yaml")
    (tmp_path / "hdab" / "test-hdab.pub.pem").unlink()
    config = _config(tmp_path, pki, cdm)
    assert main(["node", "serve", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "no valid site policy" in error
    assert "hdab_keys.0.public_key" in error
    assert not (tmp_path / "state").exists()


def test_serve_refuses_a_policy_that_pins_no_hdab_key(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: '1'\nanalyses:\n  - {name: person_count, version: 1.0.0}\n", encoding="utf-8"
    )
    config = _config(tmp_path, pki, cdm)
    assert main(["node", "serve", "--config", str(config)]) == 2
    assert "hdab_keys: required key is missing" in capsys.readouterr().err


def test_policy_is_required_in_node_yaml(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, pki, cdm)
    text = "\n".join(
        line for line in config.read_text().splitlines() if not line.startswith("policy:")
    )
    config.write_text(text, encoding="utf-8")
    assert main(["node", "serve", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "policy" in error
    assert str(config) in error


def test_check_prints_the_hello_profile(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path / "policy.yaml", (("person_count", "1.0.0"), ("not.shipped", "2.0.0")))
    config = _config(tmp_path, pki, cdm)
    assert main(["node", "check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["node"] == "hospital-a"
    profile = report["hello_profile"]
    assert profile["capabilities"] == [{"name": "person_count", "version": "1.0.0"}]
    assert profile["cdm_version"] == "5.4"
    assert profile["vocabulary_version"]
    assert profile["engine"] == "duckdb"
    assert "not.shipped 2.0.0" in err
    policy = report["policy"]
    assert policy["digest"] == payload_digest((tmp_path / "policy.yaml").read_bytes())
    assert [key["name"] for key in policy["hdab_keys"]] == ["test-hdab"]
    assert len(policy["hdab_keys"][0]["key_id"]) == 64


def test_check_fails_when_the_cdm_cannot_be_read(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path / "policy.yaml")
    config = _config(tmp_path, pki, tmp_path / "absent.duckdb")
    assert main(["node", "check", "--config", str(config)]) == 1
    assert "cannot read cdm_source" in capsys.readouterr().err


def test_check_refuses_a_certificate_that_is_not_a_node_certificate(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path / "policy.yaml")
    config = _config(tmp_path, pki, cdm, node="alice")
    assert main(["node", "check", "--config", str(config)]) == 2
    assert "researcher certificate" in capsys.readouterr().err


def _ehds() -> list[str]:
    return [sys.executable, "-c", "from ehds.cli.main import run; run()"]


@pytest.mark.parametrize("insecure", [False, True])
def test_serve_reports_ready_serves_health_and_exits_cleanly_on_sigterm(
    tmp_path: Path, pki: Pki, cdm: Path, insecure: bool
) -> None:
    write_policy(tmp_path / "policy.yaml")
    # No coordinator listens: the node is ready anyway, and keeps trying in the background.
    config = _config(tmp_path, pki, cdm)
    command = [*_ehds(), "node", "serve", "--config", str(config)]
    if insecure:
        command.append("--insecure")
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("node hospital-a ready (health 127.0.0.1:"), line
            port = int(line.rsplit(":", 1)[1].rstrip(")"))
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as reply:
                assert reply.status == 200
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as reply:
                metrics = reply.read().decode()
            assert "ehds_node_connected 0.0" in metrics
            assert "ehds_node_stream_reconnects_total" in metrics
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=TIMEOUT_S) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=TIMEOUT_S)
        assert process.stderr is not None
        stderr = process.stderr.read()
    assert (INSECURE_WARNING in stderr) is insecure
    assert "Traceback" not in stderr
