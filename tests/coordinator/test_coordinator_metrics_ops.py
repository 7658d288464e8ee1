"""The coordinator's operational metrics behind the Grafana dashboard: studies by state and the
audit chain's length (read from the state database at scrape time, so right after a restart)
and the time of each round of an iterative study."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
from coordinator_harness import (
    BLOB,
    SLEEP,
    Caller,
    FakeNode,
    Pki,
    make_config,
    make_pki,
    profile,
    register_default_permits,
    run,
    spec,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ehds.coordinator.effects import Effects
from ehds.coordinator.metrics import STUDY_STATES, CoordinatorMetrics, StateCounts
from ehds.coordinator.server import CoordinatorServer
from ehds.coordinator.state.database import create_state_engine
from ehds.coordinator.state.models import TaskRow
from ehds.coordinator.state.transitions import round_seconds
from ehds.federation.model import AnalysisRef, ErrorCode, StudyState

STUDIES: Final = "ehds_coordinator_studies"
CHAIN: Final = "ehds_coordinator_audit_chain_length"
ROUND: Final = "ehds_coordinator_round_seconds"
ROUNDS: Final = AnalysisRef("test.rounds", "1.0.0")

# One study in every state a study can be seen in (AGGREGATING is passed through within the
# transaction of the last result, so never stored for long: it must still be reported, as 0).
EXPECTED: Final = {
    "SUBMITTED": 1,
    "DISPATCHED": 1,
    "RUNNING": 1,
    "AGGREGATING": 0,
    "COMPLETED": 1,
    "FAILED": 1,
    "CANCELLED": 1,
}


def test_every_study_state_is_reported() -> None:
    assert set(STUDY_STATES) == set(EXPECTED)
    assert set(STUDY_STATES) == {s.name for s in StudyState} - {"UNSPECIFIED"}


def studies_by_state(registry: CollectorRegistry) -> dict[str, float | None]:
    return {state: registry.get_sample_value(STUDIES, {"state": state}) for state in EXPECTED}


def chain_rows(database: Path) -> tuple[int, int]:
    """``(count(*), max(seq))`` of the coordinator's chain, read beside the running process."""
    with sqlite3.connect(database) as db:
        count, head = db.execute("SELECT count(*), max(seq) FROM audit_log").fetchone()
    return int(count), int(head or 0)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` of the health port, as Prometheus reads it: name -> labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


async def assert_chain_length_read_from_the_database(
    server: CoordinatorServer, database: Path
) -> int:
    """The gauge lies between two counts of the table taken around it (the interceptor may
    append an RPC's entry meanwhile), and the chain has no gaps (its length is its head)."""
    before, _ = chain_rows(database)
    value = server.metrics.registry.get_sample_value(CHAIN)
    after, head = chain_rows(database)
    assert value is not None
    assert before <= value <= after
    assert after == head
    return int(value)


async def submit_in_every_state(server: CoordinatorServer, pki: Pki) -> None:
    """node-a completes one study and acknowledges another (RUNNING); node-b refuses one
    (FAILED) and never acknowledges another (DISPATCHED); node-c never connects (SUBMITTED,
    and a study cancelled while waiting for it)."""
    a = FakeNode(server.address, pki.tls("node-a"), "node-a")
    b = FakeNode(server.address, pki.tls("node-b"), "node-b")
    alice = Caller(server.address, pki.tls("alice"))
    try:
        # node-c has been seen once (a study may name it), and is away.
        c = FakeNode(server.address, pki.tls("node-c"), "node-c")
        await c.open(node_profile=profile((SLEEP, BLOB)))
        await c.close()
        connected = "ehds_coordinator_connected_nodes"
        await until(lambda: server.metrics.registry.get_sample_value(connected) == 0)
        await a.open(node_profile=profile((SLEEP, BLOB)))
        await b.open(node_profile=profile((SLEEP, BLOB)))
        await alice.submit(spec(targets=("node-c",), title="waiting"))
        cancelled = await alice.submit(spec(targets=("node-c",), title="cancelled"))
        assert (await alice.cancel(cancelled.id)).state is StudyState.CANCELLED

        completed = await alice.submit(spec(targets=("node-a",), title="completed"))
        await a.complete((await a.expect("task_assignment")).task_assignment)
        assert (await alice.wait_final(completed.id)).state is StudyState.COMPLETED

        failed = await alice.submit(spec(targets=("node-b",), title="failed"))
        task = (await b.expect("task_assignment")).task_assignment
        await b.outcome(task.task_id, ErrorCode.POLICY_REFUSED)
        assert (await alice.wait_final(failed.id)).state is StudyState.FAILED

        running = await alice.submit(spec(targets=("node-a",), title="running"))
        await a.ack((await a.expect("task_assignment")).task_assignment.task_id)
        dispatched = await alice.submit(spec(targets=("node-b",), title="dispatched"))
        await b.expect("task_assignment")
        await until_state(alice, running.id, StudyState.RUNNING)
        await until_state(alice, dispatched.id, StudyState.DISPATCHED)
    finally:
        for closing in (alice, a, b):
            await closing.close()


async def until(check: Callable[[], bool]) -> None:
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def until_state(caller: Caller, study_id: str, state: StudyState) -> None:
    for _ in range(250):
        if (await caller.get(study_id)).state is state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"study {study_id} never reached {state.name}")


def test_studies_by_state_and_the_audit_chain_survive_a_restart(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, pki)
    database = tmp_path / "coordinator-state.db"

    async def main() -> int:
        async with CoordinatorServer(config) as server:
            registry = server.metrics.registry
            # Counted from the database from the first scrape: every state, 0 when empty.
            assert studies_by_state(registry) == dict.fromkeys(EXPECTED, 0)
            await register_default_permits(server, pki)
            await asyncio.wait_for(submit_in_every_state(server, pki), 20)
            assert studies_by_state(registry) == EXPECTED
            length = await assert_chain_length_read_from_the_database(server, database)
            assert length > 10  # permits, studies, tasks, every RPC
            # What Prometheus gets from the health port, served on its own thread.
            scraped = await asyncio.to_thread(scrape, server.health_port)
            assert {labels[0][1]: value for labels, value in scraped[STUDIES].items()} == EXPECTED
            assert scraped[CHAIN][()] >= length
        # Stopped: no database to read, no samples (rather than a made-up zero).
        assert registry.get_sample_value(CHAIN) is None
        assert studies_by_state(registry) == dict.fromkeys(EXPECTED)
        return chain_rows(database)[0]

    async def restarted(stored: int) -> None:
        async with CoordinatorServer(config) as server:
            # A new process (new registry, new store) reports the database as it is.
            assert studies_by_state(server.metrics.registry) == EXPECTED
            length = await assert_chain_length_read_from_the_database(server, database)
            assert length >= stored

    stored = asyncio.run(main())
    asyncio.run(restarted(stored))


def test_a_database_that_cannot_be_read_gives_no_samples_and_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = CoordinatorMetrics()
    registry = metrics.registry
    assert registry.get_sample_value(CHAIN) is None  # not watching a database yet
    # A file without the coordinator's tables: every query fails.
    engine = create_state_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        metrics.state.watch(engine)
        with caplog.at_level(logging.WARNING, logger="ehds.coordinator.metrics"):
            families = {family.name for family in registry.collect()}
        assert {STUDIES, CHAIN} <= families  # described, without samples
        assert registry.get_sample_value(CHAIN) is None
        assert "cannot read the state database" in caplog.text
    finally:
        engine.dispose()


def test_two_collectors_never_share_a_registry() -> None:
    first, second = CoordinatorMetrics(), CoordinatorMetrics()
    assert first.state is not second.state
    with pytest.raises(ValueError, match="Duplicated"):
        first.registry.register(StateCounts())


# --------------------------------------------------------------------------- round times


NOW: Final = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def task(dispatched: float | None, ended: float | None) -> TaskRow:
    """A task dispatched and ended so many seconds before `NOW`."""
    return TaskRow(
        dispatched_at=None if dispatched is None else NOW - timedelta(seconds=dispatched),
        ended_at=None if ended is None else NOW - timedelta(seconds=ended),
    )


@pytest.mark.parametrize(
    ("tasks", "seconds"),
    [
        # The round's last task ends now: from its first dispatch.
        ([task(30, 0), task(20, 5), task(25, 10)], 30.0),
        # A node away at the round's start gets its task later: still from the first dispatch.
        ([task(40, 0), task(None, 0)], 40.0),
        # Every task had ended before (a hosted study's deadline after its round): not again.
        ([task(30, 5), task(20, 1)], None),
        # No task was ever sent (no node offers the analysis): nothing to time.
        ([task(None, 0), task(None, 0)], None),
    ],
)
def test_a_round_is_timed_once_from_its_first_dispatch(
    tasks: list[TaskRow], seconds: float | None
) -> None:
    assert round_seconds(tasks, NOW) == seconds


def test_recorded_round_times_land_in_the_histogram_by_analysis() -> None:
    metrics = CoordinatorMetrics()
    metrics.record(Effects(rounds_ended=[("fl 1.0.0", 12.0), ("fl 1.0.0", 3.0)]))
    sample = metrics.registry.get_sample_value
    labels = {"analysis": "fl 1.0.0"}
    assert sample(f"{ROUND}_count", labels) == 2
    assert sample(f"{ROUND}_sum", labels) == 15.0
    assert sample(f"{ROUND}_bucket", {**labels, "le": "5.0"}) == 1


async def play_round(nodes: dict[str, FakeNode]) -> None:
    """Every node acknowledges its task of the round and releases a value (the totals do
    not matter here)."""
    assignments = [
        (await node.expect("task_assignment")).task_assignment for node in nodes.values()
    ]
    for node, assignment in zip(nodes.values(), assignments, strict=True):
        await node.ack(assignment.task_id)
        await node.result(assignment.task_id, {"value": 1})
        await node.expect("result_receipt")


def test_every_round_of_an_iterative_study_is_timed(tmp_path: Path) -> None:
    async def body(server: CoordinatorServer, pki: Pki) -> None:
        ops = Caller(server.address, pki.tls("ops"))
        alice = Caller(server.address, pki.tls("alice"))
        nodes = {
            name: FakeNode(server.address, pki.tls(name), name) for name in ("node-a", "node-b")
        }
        try:
            await ops.register_permit(pki.permit("permit-rounds", analyses=("test.rounds",)))
            for node in nodes.values():
                await node.open(minor=4, node_profile=profile((SLEEP, BLOB, ROUNDS)))
            study = await alice.submit(
                spec(
                    ROUNDS,
                    {"rounds": 2, "value": 0},
                    permit="permit-rounds",
                    targets=tuple(nodes),
                )
            )
            for _ in range(2):
                await play_round(nodes)
            assert (await alice.wait_final(study.id)).state is StudyState.COMPLETED
        finally:
            for caller in (ops, alice):
                await caller.close()
            for node in nodes.values():
                await node.close()
        sample = server.metrics.registry.get_sample_value
        labels = {"analysis": str(ROUNDS)}
        assert sample(f"{ROUND}_count", labels) == 2  # rounds 0 and 1, each once
        total = sample(f"{ROUND}_sum", labels)
        assert total is not None
        assert 0 < total < 20
        # A study of one round is no round.
        assert sample(f"{ROUND}_count", {"analysis": str(SLEEP)}) is None

    run(tmp_path, body)
