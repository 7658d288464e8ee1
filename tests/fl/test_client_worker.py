"""The ClientApp worker process and its node-side handle (ClientWorker).

The worker runs tests/fl/apps/fedavg_app, whose query handler runs probes inside the worker
(a TCP connect through Python and one through libc, a sleep, a raise, a call counter).
"""

from __future__ import annotations

import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():
    # typer, which flwr's logger imports, re-exports click.utils helpers that click 8.5
    # deprecates: warned once, at import, by Flower's dependencies, not by this code.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        ConfigRecordValues,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.supercore.task_identity import TaskIdentity

    from ehds.fl.codec import decode_message, encode_message, node_id_for, set_message_id

from ehds.fl.bundle import build_fab, fab_digest
from ehds.fl.client_host import ClientWorker, WorkerError

APP = Path(__file__).parent / "apps" / "fedavg_app"
RUN_ID = 5
NODE = "hospital-a"
NODE_ID = node_id_for(NODE)
NODE_CONFIG = {"value": 2.0, "n": 10, "node-name": NODE}
RUN_CONFIG = {"num-server-rounds": 2, "min-nodes": 2, "fail": False, "save-model": True}


@pytest.fixture(scope="module", autouse=True)
def server_identity() -> Iterator[None]:
    """Messages made here come from the ServerApp side of run RUN_ID, as in Flower."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _start(
    tmp: Path, fab: bytes, *, sha256: str | None = None, timeout: float = 30.0
) -> ClientWorker:
    fab_path = tmp / "app.fab"
    fab_path.write_bytes(fab)
    return ClientWorker.start(
        fab_path=fab_path,
        sha256=sha256 if sha256 is not None else fab_digest(fab),
        app_dir=tmp / "app",
        node_id=NODE_ID,
        node_config=NODE_CONFIG,
        run_config=RUN_CONFIG,
        run_id=RUN_ID,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientWorker]:
    started = _start(tmp_path_factory.mktemp("worker"), build_fab(APP))
    try:
        yield started
    finally:
        started.stop()


def _query(probe: dict[str, ConfigRecordValues], dst: int = NODE_ID) -> Message:
    message = Message(
        RecordDict({"probe": ConfigRecord(probe)}), dst, MessageType.QUERY, group_id="q"
    )
    set_message_id(message, f"m-{time.monotonic_ns()}")
    return message


def _ask(worker: ClientWorker, message: Message, timeout: float = 10.0) -> Message:
    reply = decode_message(worker.handle(encode_message(message), timeout))
    assert reply.metadata.reply_to_message_id == message.metadata.message_id
    assert reply.metadata.message_id
    assert reply.metadata.src_node_id == NODE_ID
    return reply


def _metric(reply: Message, name: str) -> float:
    record = reply.content["metrics"]
    assert isinstance(record, MetricRecord)
    value = record[name]
    assert isinstance(value, int | float)
    return float(value)


def _outcome(reply: Message) -> str:
    record = reply.content["result"]
    assert isinstance(record, ConfigRecord)
    return str(record["outcome"])


def test_worker_is_isolated_and_keeps_context_state(worker: ClientWorker) -> None:
    assert worker.alive()
    assert worker.isolation == "netns+audit"
    first = _ask(worker, _query({"action": "count"}))
    second = _ask(worker, _query({"action": "count"}))
    assert _outcome(first) == "ok"
    assert _metric(second, "calls") == _metric(first, "calls") + 1


def test_train_reply_carries_the_clientapps_update(worker: ClientWorker) -> None:
    arrays = ArrayRecord(array_dict={"w": Array(np.array([1.0, -1.0]))})
    message = Message(RecordDict({"arrays": arrays}), NODE_ID, MessageType.TRAIN, group_id="1")
    set_message_id(message, "train-1")
    reply = _ask(worker, message)
    updated = reply.content["arrays"]
    assert isinstance(updated, ArrayRecord)
    np.testing.assert_array_equal(updated["w"].numpy(), [3.0, 1.0])
    assert _metric(reply, "num-examples") == 10


def test_worker_cannot_reach_a_listening_localhost_socket(worker: ClientWorker) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = int(server.getsockname()[1])
    try:
        through_python = _outcome(
            _ask(worker, _query({"action": "connect", "host": "127.0.0.1", "port": port}))
        )
        through_libc = _outcome(
            _ask(worker, _query({"action": "connect-raw", "host": "127.0.0.1", "port": port}))
        )
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert through_python == "NetworkRefusedError"  # the audit hook
    assert through_libc.startswith("errno")  # below Python: the network namespace
    assert through_libc != "connected"


def test_clientapp_exception_is_a_code_and_the_worker_lives_on(worker: ClientWorker) -> None:
    with pytest.raises(WorkerError) as raised:
        worker.handle(encode_message(_query({"action": "raise"})), 10.0)
    assert raised.value.code == "fl.client_error"
    assert "planned failure" not in str(raised.value)
    assert worker.alive()
    assert _outcome(_ask(worker, _query({"action": "count"}))) == "ok"


def test_message_for_another_node_is_refused(worker: ClientWorker) -> None:
    with pytest.raises(WorkerError) as raised:
        worker.handle(encode_message(_query({"action": "count"}, dst=NODE_ID + 1)), 10.0)
    assert raised.value.code == "fl.bad_message"
    assert worker.alive()


def test_digest_mismatch_is_refused_before_unpacking(tmp_path: Path) -> None:
    fab = build_fab(APP)
    with pytest.raises(WorkerError) as raised:
        _start(tmp_path, fab, sha256="0" * 64)
    assert raised.value.code == "fl.bundle_unknown"
    assert not (tmp_path / "app").exists()


def test_clientapp_that_does_not_load_fails_the_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken_app"
    shutil.copytree(APP, broken, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = broken / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("client_app:app", "client_app:missing"), encoding="utf-8"
    )
    with pytest.raises(WorkerError) as raised:
        _start(tmp_path, build_fab(broken))
    assert raised.value.code == "fl.client_error"


def test_overrunning_message_kills_the_worker(tmp_path: Path) -> None:
    worker = _start(tmp_path, build_fab(APP))
    try:
        started = time.monotonic()
        with pytest.raises(WorkerError) as raised:
            worker.handle(encode_message(_query({"action": "sleep", "seconds": 30.0})), 0.5)
        assert raised.value.code == "fl.timeout"
        assert time.monotonic() - started < 5.0
        assert not worker.alive()
        with pytest.raises(WorkerError) as again:
            worker.handle(encode_message(_query({"action": "count"})), 1.0)
        assert again.value.code == "fl.worker_died"
    finally:
        worker.stop()


def test_stop_ends_the_worker(tmp_path: Path) -> None:
    worker = _start(tmp_path, build_fab(APP))
    worker.stop()
    assert not worker.alive()
    worker.stop()  # idempotent
