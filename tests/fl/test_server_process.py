"""The ServerApp process and the coordinator's ServerHost, with the nodes faked in the test.

The ServerApp is tests/fl/apps/fedavg_app (Flower's FedAvg). Each fake node answers as its
ClientApp would (train: the arrays plus the node's value; evaluate: the value as the loss),
so the FedAvg result is known exactly: after R rounds every weight is R times the mean of
the values weighted by num-examples.
"""

from __future__ import annotations

import asyncio
import os
import signal
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():
    # typer, which flwr's logger imports, re-exports click.utils helpers that click 8.5
    # deprecates: warned once, at import, by Flower's dependencies, not by this code.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

    from ehds.fl.codec import decode_message, encode_message, node_id_for, set_message_id
    from ehds.fl.server_process import _aggregate

from ehds.fl.bundle import build_fab, read_fab_info, unpack_fab
from ehds.fl.server_host import Done, Failed, Push, ServerHost

APP = Path(__file__).parent / "apps" / "fedavg_app"
NODES = {"a": (1.0, 10), "b": (2.0, 30), "c": (4.0, 60)}  # value, num-examples
WEIGHTED_VALUE = (1.0 * 10 + 2.0 * 30 + 4.0 * 60) / 100
Answer = Callable[[str, Message], bytes | None]


def _app_dir(tmp_path: Path) -> Path:
    return unpack_fab(build_fab(APP), tmp_path / "server" / "app")


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(read_fab_info(build_fab(APP)).config)
    config.update({"min-nodes": 3, **overrides})
    return config


def node_reply(name: str, message: Message) -> Message:
    """What the test app's ClientApp answers."""
    value, count = NODES[name]
    if message.metadata.message_type == MessageType.TRAIN:
        arrays = message.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        updated = ArrayRecord(
            array_dict={key: Array(array.numpy() + value) for key, array in arrays.items()}
        )
        metrics = MetricRecord({"num-examples": count, "train-loss": value})
        content = RecordDict({"arrays": updated, "metrics": metrics})
    else:
        content = RecordDict({"metrics": MetricRecord({"num-examples": count, "eval-loss": value})})
    reply = Message(content, reply_to=message)
    set_message_id(reply, f"reply-{name}-{message.metadata.message_id}")
    return reply


def honest(name: str, message: Message) -> bytes | None:
    return encode_message(node_reply(name, message))


async def _drive(
    app_dir: Path, config: Mapping[str, Any], answer: Answer = honest, limit: float = 30.0
) -> tuple[Done | Failed, list[Push], ServerHost]:
    nodes = {name: node_id_for(name) for name in NODES}
    host = await ServerHost.start(app_dir=app_dir, run_id=9, run_config=config, nodes=nodes)
    pushes: list[Push] = []
    try:
        while True:
            event = await asyncio.wait_for(host.next_event(), limit)
            if not isinstance(event, Push):
                return event, pushes, host
            pushes.append(event)
            replies = {
                name: answer(name, decode_message(encoded))
                for name, encoded in event.messages.items()
            }
            await host.deliver(replies)
    finally:
        await host.stop()


def test_fedavg_run_through_the_host_gives_the_known_summary(tmp_path: Path) -> None:
    event, pushes, host = asyncio.run(_drive(_app_dir(tmp_path), _config()))
    assert isinstance(event, Done), event
    assert host.stderr_tail() is not None
    summary = event.summary
    assert summary["flwr_version"] == "1.42.0"
    assert summary["isolation"] in {"netns+audit", "audit"}
    assert len(pushes) == 4
    for push in pushes:
        assert set(push.messages) == set(NODES)
        message = decode_message(push.messages["a"])
        assert message.metadata.run_id == 9
        assert message.metadata.dst_node_id == node_id_for("a")
    assert [(r["round"], r["type"]) for r in summary["rounds"]] == [
        ("1", "train"),
        ("1", "evaluate"),
        ("2", "train"),
        ("2", "evaluate"),
    ]
    evaluate = summary["rounds"][1]
    assert evaluate["nodes"]["b"] == {"num-examples": 30.0, "eval-loss": 2.0}
    assert evaluate["aggregate"]["eval-loss"] == pytest.approx(WEIGHTED_VALUE)
    assert evaluate["aggregate"]["num-examples"] == 100.0
    assert evaluate["failed"] == []
    model = summary["model"]
    assert model["source"] == "context.state"
    weights = model["arrays"]["ehds.model"]["w"]
    assert weights["shape"] == [3]
    assert weights["dtype"] == "float64"
    np.testing.assert_allclose(weights["values"], [2 * WEIGHTED_VALUE] * 3)
    assert summary["state"] == {"ehds.info": {"rounds": 2}}


def test_without_a_saved_model_the_last_broadcast_is_the_model(tmp_path: Path) -> None:
    event, _, _ = asyncio.run(_drive(_app_dir(tmp_path), _config(**{"save-model": False})))
    assert isinstance(event, Done), event
    model = event.summary["model"]
    assert model["source"] == "last-broadcast"
    np.testing.assert_allclose(model["arrays"]["arrays"]["w"]["values"], [2 * WEIGHTED_VALUE] * 3)


def test_missing_and_forged_replies_become_flower_error_replies(tmp_path: Path) -> None:
    def answer(name: str, message: Message) -> bytes | None:
        if name == "c":
            return None
        if name == "b" and message.metadata.message_type == MessageType.TRAIN:
            forged = node_reply(name, message)
            forged.metadata.__dict__["_reply_to_message_id"] = "someone-else"
            return encode_message(forged)
        return honest(name, message)

    config = _config(**{"min-nodes": 1, "num-server-rounds": 1})
    event, _, _ = asyncio.run(_drive(_app_dir(tmp_path), config, answer))
    assert isinstance(event, Done), event
    train, evaluate = event.summary["rounds"]
    assert set(train["nodes"]) == {"a"}
    assert train["failed"] == ["b", "c"]
    assert evaluate["failed"] == ["c"]
    assert evaluate["aggregate"]["eval-loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    # FedAvg aggregated node a alone: one round adds a's value.
    values = event.summary["model"]["arrays"]["ehds.model"]["w"]["values"]
    np.testing.assert_allclose(values, [1.0] * 3)


def test_a_wait_that_times_out_gets_the_replies_at_hand(tmp_path: Path) -> None:
    async def scenario() -> tuple[Done | Failed, list[Push]]:
        nodes = {name: node_id_for(name) for name in NODES}
        config = _config(**{"round-timeout": 0.3, "num-server-rounds": 1})
        host = await ServerHost.start(
            app_dir=_app_dir(tmp_path), run_id=9, run_config=config, nodes=nodes
        )
        pushes: list[Push] = []
        try:
            first = await asyncio.wait_for(host.next_event(), 30)
            assert isinstance(first, Push)
            pushes.append(first)  # never delivered: the ServerApp's wait times out
            while True:
                event = await asyncio.wait_for(host.next_event(), 30)
                if not isinstance(event, Push):
                    return event, pushes
                pushes.append(event)
                await host.deliver(
                    {n: honest(n, decode_message(m)) for n, m in event.messages.items()}
                )
        finally:
            await host.stop()

    event, pushes = asyncio.run(scenario())
    assert isinstance(event, Done), event
    assert len(pushes) == 2
    train, evaluate = event.summary["rounds"]
    assert (train["type"], train["nodes"], train["failed"]) == ("train", {}, [])
    assert evaluate["type"] == "evaluate"
    assert evaluate["aggregate"]["eval-loss"] == pytest.approx(WEIGHTED_VALUE)


def test_serverapp_exception_is_failed_with_its_type(tmp_path: Path) -> None:
    event, pushes, _ = asyncio.run(_drive(_app_dir(tmp_path), _config(fail=True)))
    assert event == Failed("RuntimeError: planned failure")
    assert pushes == []


def test_process_that_dies_is_failed(tmp_path: Path) -> None:
    async def scenario() -> Failed:
        nodes = {name: node_id_for(name) for name in NODES}
        host = await ServerHost.start(
            app_dir=_app_dir(tmp_path), run_id=9, run_config=_config(), nodes=nodes
        )
        try:
            assert isinstance(await asyncio.wait_for(host.next_event(), 30), Push)
            os.kill(host.pid, signal.SIGKILL)
            event = await asyncio.wait_for(host.next_event(), 10)
            assert isinstance(event, Failed)
            assert await asyncio.wait_for(host.next_event(), 1) == event
            return event
        finally:
            await host.stop()

    event = asyncio.run(scenario())
    assert "exited with code -9" in event.reason


def test_garbage_from_the_process_is_failed_and_the_process_killed(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nprintf '\\000\\000\\000\\002[]'\nexec sleep 30\n")
    fake.chmod(0o755)

    async def scenario() -> tuple[Done | Failed, int | None]:
        host = await ServerHost.start(
            app_dir=_app_dir(tmp_path), run_id=9, run_config={}, nodes={}, python=str(fake)
        )
        try:
            event = await asyncio.wait_for(host.next_event(), 10)
        finally:
            await host.stop()
        assert isinstance(event, Done | Failed)
        return event, host._process.returncode

    event, returncode = asyncio.run(scenario())
    assert event == Failed("server process broke the protocol: FrameError")
    assert returncode is not None


def test_aggregate_weights_by_num_examples_and_skips_missing_values() -> None:
    nodes: dict[str, dict[str, float | None]] = {
        "a": {"num-examples": 10.0, "auc": 0.5, "loss": None},
        "b": {"num-examples": 30.0, "auc": 0.9, "loss": 2.0},
    }
    assert _aggregate(nodes) == {
        "num-examples": 40.0,
        "auc": pytest.approx(0.8),
        "loss": 2.0,
    }
    assert _aggregate({"a": {"count": 1.0}, "b": {"count": 3.0}}) == {"count": 2.0}
    assert _aggregate({}) == {}
