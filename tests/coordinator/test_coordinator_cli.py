"""`ehds coordinator serve` as an OS process: the ready line, the health port, a clean exit on
SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from coordinator_harness import make_pki

READY = re.compile(
    r"^coordinator listening on (?P<host>[\d.]+):(?P<port>\d+) "
    r"\(health (?P<health_host>[\d.]+):(?P<health>\d+)\)$"
)


def test_coordinator_serve_prints_its_ports_and_stops_on_sigterm(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, nodes=())
    tls = pki.tls("coordinator")
    config = tmp_path / "coordinator.yaml"
    config.write_text(
        "listen: {host: 127.0.0.1, port: 0}\n"
        "health: {host: 127.0.0.1, port: 0}\n"
        f"tls: {{certificate: {tls.certificate}, key: {tls.key}, ca: {tls.ca}}}\n"
        f"revocation: {{crl: {pki.root / 'crl.pem'}}}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "ehds.cli.main", "coordinator", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        line = process.stdout.readline().strip()
        ready = READY.match(line)
        assert ready, (line, process.stderr.read() if process.poll() is not None else "")
        health = f"http://127.0.0.1:{ready['health']}"
        with urllib.request.urlopen(f"{health}/readyz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{health}/metrics", timeout=5) as response:
            assert b"ehds_coordinator_connected_nodes 0.0" in response.read()
        assert (tmp_path / "coordinator-state.db").exists()  # default, next to the config
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
