"""Flower Messages through Flower's own protobuf serde: exact round trips and our helpers."""

from __future__ import annotations

import hashlib
import warnings

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
        Error,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.supercore.task_identity import TaskIdentity

    from ehds.fl.codec import (
        decode_message,
        encode_message,
        error_reply,
        filter_metrics,
        message_digest,
        node_id_for,
        set_message_id,
    )


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message() reads the sender from TaskIdentity, as in Flower's ServerApp process."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 77)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


def _instruction() -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                array_dict={
                    "w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
                    "b": Array(np.array([1.5])),
                }
            ),
            "config": ConfigRecord({"lr": 0.1, "name": "x", "flags": [True, False], "raw": b"\0"}),
            "metrics": MetricRecord({"num-examples": 10, "loss": 0.25, "hist": [1, 2]}),
        }
    )
    message = Message(content, 123456789, MessageType.TRAIN, group_id="3", ttl=600.0)
    set_message_id(message, "abc")
    return message


def _metadata(message: Message) -> dict[str, object]:
    return {k.lstrip("_"): v for k, v in vars(message.metadata).items()}


def test_instruction_round_trips_metadata_and_content_exactly() -> None:
    message = _instruction()
    decoded = decode_message(encode_message(message))
    assert _metadata(decoded) == _metadata(message)
    assert decoded.metadata.message_id == "abc"
    assert decoded.metadata.run_id == 77
    assert decoded.metadata.group_id == "3"
    assert decoded.content == message.content
    arrays = decoded.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert arrays["w"].numpy().dtype == np.float32
    assert list(decoded.content.keys()) == ["arrays", "config", "metrics"]
    assert encode_message(decoded) == encode_message(message)


def test_reply_and_error_reply_round_trip() -> None:
    instruction = _instruction()
    reply = Message(RecordDict({"metrics": MetricRecord({"acc": 0.5})}), reply_to=instruction)
    decoded = decode_message(encode_message(reply))
    assert decoded.metadata.reply_to_message_id == "abc"
    assert decoded.metadata.src_node_id == 123456789
    assert decoded.content == reply.content

    failed = error_reply(instruction, 4, "the node did not reply")
    assert failed.metadata.message_id
    back = decode_message(encode_message(failed))
    assert back.has_error()
    assert not back.has_content()
    assert (back.error.code, back.error.reason) == (4, "the node did not reply")
    assert back.metadata.reply_to_message_id == "abc"
    assert back.metadata.dst_node_id == 1


def test_encoding_is_deterministic_and_digest_is_sha256() -> None:
    message = _instruction()
    data = encode_message(message)
    assert encode_message(message) == data
    assert len(message_digest(data)) == 64
    assert message_digest(data) != message_digest(data + b"\0")


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05abc"])
def test_garbage_is_not_a_message(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a Flower message"):
        decode_message(data)


def test_node_ids_are_stable_positive_63_bit_and_distinct() -> None:
    ids = {node_id_for(f"node-{i}") for i in range(500)}
    assert len(ids) == 500
    assert all(0 < node_id < 2**63 for node_id in ids)
    assert node_id_for("hospital-a") == node_id_for("hospital-a")
    # Pinned: the coordinator and the nodes must derive the same id in every release.
    digest = hashlib.sha256(b"ehds-fl:hospital-a").digest()
    assert node_id_for("hospital-a") == int.from_bytes(digest[:8], "big") & (2**63 - 1)


def test_filter_metrics_keeps_allowed_keys_num_examples_and_other_records() -> None:
    instruction = _instruction()
    reply = Message(
        RecordDict(
            {
                "arrays": ArrayRecord(array_dict={"w": Array(np.ones(2))}),
                "metrics": MetricRecord({"num-examples": 5, "auc": 0.7, "secret-count": 3}),
                "extra": MetricRecord({"auc": 0.1, "other": 2.0}),
                "config": ConfigRecord({"kept": "yes"}),
            }
        ),
        reply_to=instruction,
    )
    set_message_id(reply, "r1")
    filtered = filter_metrics(reply, ["auc"])
    assert dict(filtered.content["metrics"]) == {"num-examples": 5, "auc": 0.7}
    assert dict(filtered.content["extra"]) == {"auc": 0.1}
    assert filtered.content["arrays"] == reply.content["arrays"]
    assert filtered.content["config"] == reply.content["config"]
    assert _metadata(filtered) == _metadata(reply)
    assert dict(reply.content["metrics"]) == {"num-examples": 5, "auc": 0.7, "secret-count": 3}
    assert filter_metrics(reply, None) is reply
    failed = Message(Error(code=2), reply_to=instruction)
    assert filter_metrics(failed, ["auc"]) is failed
