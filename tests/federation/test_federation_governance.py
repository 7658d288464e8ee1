"""Governance through the live federation: permits, node sovereignty, the human release gate
and the audit trail, attacked as the issue lists, against real processes over mutual TLS.

Assignments replayed or tampered on the wire are attacked in tests/node (a real node agent
facing a scripted coordinator that can send anything); an analysis outside a node's policy is
never even dispatched here (the coordinator reads capabilities from the node's Hello), so the
node's own refusal of one is also proved there.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ehds.cli.demo_command import wait_for_nodes
from ehds.cli.local_federation import PERMIT_ID, LocalFederation, prepare, running
from ehds.coordinator.client import CoordinatorClient
from ehds.coordinator.client_config import load_client_config
from ehds.coordinator.client_errors import (
    AccessDeniedError,
    CoordinatorClientError,
    StudyNotFoundError,
)
from ehds.core.signing import Signer
from ehds.federation.model import (
    AnalysisRef,
    ErrorCode,
    NodeTaskState,
    Study,
    StudySpec,
    StudyState,
)
from ehds.permits import Permit, create_hdab_key, issue_permit
from ehds.pki import Role, issue_certificate

pytestmark = pytest.mark.slow

PERSONS = 600
WAIT_S = 60.0
POLICY = (("person_count", "1.0.0"),)
HELD = "node-fi"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("fed-governance")
    fed = prepare(
        root / "fed",
        persons=PERSONS,
        analyses=POLICY,
        heartbeat_interval_seconds=0.5,
        manual_release={HELD: ["person_count"]},
        min_cell_count=5,
    )
    # A second HDAB the COORDINATOR trusts but no node pins: its permits pass registration and
    # reach the nodes, which must refuse them on their own.
    _, rogue_public = create_hdab_key(fed.root / "hdab", "other-hdab")
    config = yaml.safe_load(fed.coordinator_config.read_text(encoding="utf-8"))
    config["permits"]["hdab_keys"].append({"name": "other-hdab", "public_key": str(rogue_public)})
    fed.coordinator_config.write_text(yaml.safe_dump(config), encoding="utf-8")
    # A second researcher with a permit of their own.
    issue_certificate(fed.pki, Role.RESEARCHER, "other-researcher")
    _client_config(fed, "other-researcher")
    with running(fed) as started:
        wait_for_nodes(started.operator_config, list(started.nodes), WAIT_S)
        yield started


def _client_config(fed: LocalFederation, name: str) -> Path:
    issued = fed.pki / "issued"
    path = fed.root / f"{name}.yaml"
    document = yaml.safe_load(fed.researcher_config.read_text(encoding="utf-8"))
    document["tls"] = {
        "certificate": str(issued / f"{name}.pem"),
        "key": str(issued / f"{name}.key"),
        "ca": str(issued / "ca.pem"),
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _client(fed: LocalFederation, name: str) -> CoordinatorClient:
    path = fed.researcher_config if name == "demo-researcher" else fed.root / f"{name}.yaml"
    if name != "demo-researcher":
        # The coordinator's port is pinned at its first start: refresh the address.
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        document["coordinator"]["address"] = f"127.0.0.1:{fed.coordinator_port}"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return CoordinatorClient(load_client_config(path))


def _permit(
    fed: LocalFederation,
    permit_id: str,
    *,
    key: Path | None = None,
    issuer: str = "demo-hdab",
    holders: tuple[str, ...] = ("demo-researcher",),
    until: datetime | None = None,
) -> Path:
    now = datetime.now(UTC)
    document = issue_permit(
        Signer.from_file(key or fed.hdab_key),
        Permit(
            id=permit_id,
            issuer=issuer,
            holders=holders,
            purpose="governance attack tests",
            nodes=tuple(sorted(fed.nodes)),
            analyses=("person_count",),
            valid_from=now - timedelta(minutes=1),
            valid_until=until or now + timedelta(days=1),
            issued_at=now,
        ),
    )
    path = fed.root / "permits" / f"{permit_id}.json"
    path.write_bytes(document)
    return path


def _spec(permit_id: str = PERMIT_ID, *, targets: tuple[str, ...] = ()) -> StudySpec:
    return StudySpec(
        title="governance",
        analysis=AnalysisRef("person_count", "1.0.0"),
        parameters=b"{}",
        min_nodes=1,
        deadline_seconds=120,
        data_permit_id=permit_id,
        target_nodes=targets,
    )


def _wait(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _node(study: Study, name: str) -> tuple[NodeTaskState, ErrorCode, str]:
    status = next(s for s in study.nodes if s.node_name == name)
    return status.state, status.error_code, status.reason


def _results_at_coordinator(fed: LocalFederation, task_id: str) -> int:
    database = fed.coordinator_config.parent / "coordinator-state.db"
    with sqlite3.connect(database) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM results WHERE task_id = ?", (task_id,)
        ).fetchone()
    return int(count)


def ehds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehds.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --------------------------------------------------------------------------- the release gate


def test_a_held_result_leaves_only_when_the_node_operator_releases_it(
    federation: LocalFederation,
) -> None:
    with _client(federation, "demo-researcher") as client:
        study = client.submit(_spec())
        task_id = f"{study.id}.{HELD}"

        def held() -> bool:
            return _node(client.get(study.id), HELD)[0] is NodeTaskState.AWAITING_RELEASE

        _wait(f"{HELD} awaiting release", held)
        # The others released automatically; the held node's result is not at the coordinator.
        _wait(
            "the other nodes released",
            lambda: all(
                _node(client.get(study.id), n)[0] is NodeTaskState.RELEASED
                for n in federation.nodes
                if n != HELD
            ),
        )
        assert _results_at_coordinator(federation, task_id) == 0
        time.sleep(1.5)  # several heartbeats: still nothing leaves
        assert _results_at_coordinator(federation, task_id) == 0
        assert client.get(study.id).state is not StudyState.COMPLETED

        config = str(federation.nodes[HELD].config)
        listed = ehds("node", "review", "list", "--config", config)
        assert listed.returncode == 0, listed.stderr
        assert task_id in listed.stdout
        shown = ehds("node", "review", "show", task_id, "--config", config)
        assert shown.returncode == 0, shown.stderr
        assert "sha256" in shown.stdout.lower()
        released = ehds("node", "review", "release", task_id, "--config", config, "--as", "dpo")
        assert released.returncode == 0, released.stderr

        final = client.wait(study.id, timeout=WAIT_S)
        assert final.state is StudyState.COMPLETED
        assert _node(final, HELD)[0] is NodeTaskState.RELEASED
        assert _results_at_coordinator(federation, task_id) == 1


def test_a_rejected_release_reaches_the_coordinator_as_a_refusal_without_data(
    federation: LocalFederation,
) -> None:
    with _client(federation, "demo-researcher") as client:
        study = client.submit(_spec(targets=(HELD, "node-fr")))
        task_id = f"{study.id}.{HELD}"
        _wait(
            f"{HELD} awaiting release",
            lambda: _node(client.get(study.id), HELD)[0] is NodeTaskState.AWAITING_RELEASE,
        )
        config = str(federation.nodes[HELD].config)
        rejected = ehds("node", "review", "reject", task_id, "--config", config, "--as", "dpo")
        assert rejected.returncode == 0, rejected.stderr
        final = client.wait(study.id, timeout=WAIT_S)
        state, code, _ = _node(final, HELD)
        assert (state, code) == (NodeTaskState.REFUSED, ErrorCode.RELEASE_REJECTED)
        assert _results_at_coordinator(federation, task_id) == 0


# --------------------------------------------------------------------------- permits and roles


def test_a_researcher_cannot_see_a_study_under_a_permit_they_do_not_hold(
    federation: LocalFederation,
) -> None:
    with _client(federation, "demo-researcher") as alice:
        study = alice.submit(_spec(targets=("node-fr",)))
    with _client(federation, "other-researcher") as bob:
        with pytest.raises(StudyNotFoundError):
            bob.get(study.id)
        with pytest.raises(StudyNotFoundError):
            bob.results(study.id)
        assert study.id not in {s.id for s in bob.list()}
        with pytest.raises(AccessDeniedError, match=r"permit\.not_holder"):
            bob.submit(_spec())  # bob does not hold demo-permit


def test_a_node_certificate_cannot_call_the_researcher_api(federation: LocalFederation) -> None:
    issued = federation.pki / "issued"
    path = federation.root / "as-node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "coordinator": {"address": f"127.0.0.1:{federation.coordinator_port}"},
                "tls": {
                    "certificate": str(issued / "node-fr.pem"),
                    "key": str(issued / "node-fr.key"),
                    "ca": str(issued / "ca.pem"),
                },
            }
        ),
        encoding="utf-8",
    )
    for config in (path, federation.operator_config):
        with (
            CoordinatorClient(load_client_config(config)) as client,
            pytest.raises(AccessDeniedError),
        ):
            client.submit(_spec())


def test_every_node_refuses_a_permit_its_own_hdab_did_not_sign(
    federation: LocalFederation,
) -> None:
    key = federation.root / "hdab" / "other-hdab.key"
    permit = _permit(federation, "OTHER-HDAB-1", key=key, issuer="other-hdab")
    with _client(federation, "demo-researcher") as client:
        client.register_permit(permit.read_bytes())  # the coordinator trusts other-hdab
        study = client.submit(_spec("OTHER-HDAB-1"))
        final = client.wait(study.id, timeout=WAIT_S)
    assert final.state is StudyState.FAILED
    for name in federation.nodes:
        state, code, reason = _node(final, name)
        assert (state, code) == (NodeTaskState.REFUSED, ErrorCode.PERMIT_REFUSED), name
        assert reason.startswith("permit.untrusted_issuer"), reason
        assert _results_at_coordinator(federation, f"{study.id}.{name}") == 0


def test_a_permit_that_expired_before_the_node_saw_the_task_is_refused_by_the_node(
    federation: LocalFederation,
) -> None:
    permit = _permit(federation, "SHORT-LIVED-1", until=datetime.now(UTC) + timedelta(seconds=6))
    federation.stop("node-dk")
    try:
        with _client(federation, "demo-researcher") as client:
            client.register_permit(permit.read_bytes())
            study = client.submit(_spec("SHORT-LIVED-1", targets=("node-dk",)))
            time.sleep(7)  # the permit expires while node-dk is away
            federation.start_node("node-dk")
            final = client.wait(study.id, timeout=WAIT_S)
            # ... and the coordinator refuses new studies under it.
            with pytest.raises(CoordinatorClientError, match=r"permit\.expired"):
                client.submit(_spec("SHORT-LIVED-1"))
    finally:
        if not federation.processes["node-dk"].alive():
            federation.start_node("node-dk")
    state, code, reason = _node(final, "node-dk")
    assert (state, code) == (NodeTaskState.REFUSED, ErrorCode.PERMIT_REFUSED)
    assert reason.startswith("permit.expired"), reason


# --------------------------------------------------------------------------- audit


def _export(fed: LocalFederation, name: str, folder: Path) -> Path:
    config = fed.coordinator_config if name == "coordinator" else fed.nodes[name].config
    out = folder / f"{name}.jsonl"
    done = ehds("audit", "export", "--config", str(config), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_every_chain_verifies_against_the_heads_the_other_side_recorded(
    federation: LocalFederation, tmp_path: Path
) -> None:
    with _client(federation, "demo-researcher") as client:
        study = client.submit(_spec(targets=("node-fr", "node-dk")))
        assert client.wait(study.id, timeout=WAIT_S).state is StudyState.COMPLETED
    time.sleep(1.5)  # a heartbeat carries the nodes' latest heads to the coordinator
    names = ["coordinator", *federation.nodes]
    files = {name: _export(federation, name, tmp_path) for name in names}
    for name in names:
        config = (
            federation.coordinator_config
            if name == "coordinator"
            else federation.nodes[name].config
        )
        against = [a for other in names if other != name for a in ("--against", str(files[other]))]
        done = ehds("audit", "verify", "--config", str(config), *against)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK" in done.stdout
    # No personal data: the node's chain names tasks, codes and digests, never a count.
    text = files["node-fr"].read_text(encoding="utf-8")
    assert study.id in text


def _tampered_copy(fed: LocalFederation, name: str, folder: Path) -> Path:
    """A copy of a node's state database, to tamper with while the node keeps running."""
    source = fed.nodes[name].config
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    copy = folder / "node-state-copy.db"
    with sqlite3.connect(document["state"]) as live, sqlite3.connect(copy) as target:
        live.backup(target)
    return copy


@pytest.mark.parametrize("attack", ["edit", "delete", "truncate"])
def test_an_edited_deleted_or_truncated_audit_row_fails_verification_at_that_row(
    federation: LocalFederation, tmp_path: Path, attack: str
) -> None:
    with _client(federation, "demo-researcher") as client:
        study = client.submit(_spec(targets=("node-fr",)))
        assert client.wait(study.id, timeout=WAIT_S).state is StudyState.COMPLETED
    time.sleep(1.5)
    copy = _tampered_copy(federation, "node-fr", tmp_path)
    coordinator = _export(federation, "coordinator", tmp_path)
    with sqlite3.connect(copy) as db:
        (last,) = db.execute("SELECT max(seq) FROM audit_log").fetchone()
        target = 2
        if attack == "edit":
            db.execute(
                'UPDATE audit_log SET entry = replace(entry, \'"actor":"\', \'"actor":"x\') '
                "WHERE seq = ?",
                (target,),
            )
        elif attack == "delete":
            db.execute("DELETE FROM audit_log WHERE seq = ?", (target,))
        else:
            target = last - 2
            db.execute("DELETE FROM audit_log WHERE seq > ?", (target,))
    certificate = str(federation.pki / "issued" / "node-fr.pem")
    url = f"sqlite:///{copy}"
    done = ehds(
        "audit", "verify", "--db", url, "--certificate", certificate, "--against", str(coordinator)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = done.stdout + done.stderr
    if attack == "truncate":
        assert "truncat" in report, report
    else:
        assert f"entry {target}" in report or f"entry {target + 1}" in report, report
