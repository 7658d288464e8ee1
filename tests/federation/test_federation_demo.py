"""The README's first command: `ehds demo` runs a whole federation and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ehds.pki import Identity

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def test_demo_runs_a_three_country_federation_and_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ehds.cli.main",
            "demo",
            "--persons",
            "2000",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Three nodes, three distinct certificate subjects, as the coordinator saw them.
    connected = re.search(r"connected \(identity from each node's certificate\): (.+)", out)
    assert connected is not None, out
    assert connected.group(1).split(", ") == ["node-dk", "node-fi", "node-fr"]
    issued = workdir / "federation" / "pki" / "issued"
    subjects = {
        Identity.from_certificate((issued / f"node-{c}.pem").read_bytes())
        for c in ("fr", "fi", "dk")
    }
    assert len(subjects) == 3
    # A progress line while waiting, then per-node and pooled results of the three studies.
    assert re.search(r"completed\s+3/3 nodes ended", out), out
    for title in ("persons by sex and age band", "characterization", "incidence per 1,000"):
        assert f"== Type 2 diabetes: {title}" in out, out
    for place in ("node-dk", "node-fi", "node-fr", "pooled"):
        assert re.search(rf"^{place}\s+cohort_name", out, re.MULTILINE), (place, out)
    assert "incidence_1000_pys" in out
    # The two analyses of several rounds: a pooled logistic regression with the heterogeneity
    # between nodes beside it, and Kaplan-Meier curves on a grid every node agreed to.
    assert "hypertension within 5 years (logistic regression)" in out, out
    assert re.search(
        r"^systolic_bp\s+[0-9.]+\s+[0-9.]+-[0-9.]+\s+\S+\s+tau2 [0-9.]+, I2", out, re.M
    )
    assert re.search(r"pooled fit: n = [0-9,]+, [0-9]+ rounds, converged: True", out), out
    assert re.search(r"grid agreed by every node: [0-9]+ intervals", out), out
    assert re.search(r"log-rank test by sex: chi2 [0-9.]+, df 1", out), out
    assert re.search(r"^pooled\s+cohort_name.*number subjects\s+count\s+[0-9,]+", out, re.M), out
    # Governance: a permit signed by the HDAB, registered; node-fi held its incidence result
    # until its operator released it; every process's audit chain verifies against the others.
    assert "demo-permit.json: OK, signed by demo-hdab" in out, out
    assert "permit demo-permit registered by demo-researcher" in out, out
    assert re.search(r"node-fi holds study \w+'s result; the coordinator has none yet", out), out
    assert "release recorded by operator fi-data-steward" in out, out
    verified = re.findall(r"audit chain (.+?): \d+ entries, head .*anchors checked: OK", out)
    assert sorted(verified) == [
        "coordinator coordinator",
        "node node-dk",
        "node node-fi",
        "node node-fr",
    ], out
    assert "no process left" in out
    assert _processes_mentioning(str(workdir)) == []
