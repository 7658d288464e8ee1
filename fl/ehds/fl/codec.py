"""Flower Messages as bytes, for the node link and the pipes of our Flower hosts.

The encoding is Flower's own protobuf ``Message`` (``flwr.common.serde``), metadata, content
and error together, so nothing about a message is reinterpreted on its way between the
ServerApp and a ClientApp. Serialisation is deterministic, so that the digest we audit is a
function of the message alone.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from collections.abc import Collection

from google.protobuf.message import DecodeError

with warnings.catch_warnings():
    # flwr imports typer, which re-exports click.utils helpers that click 8.5 deprecates: a
    # warning of Flower's dependencies, at import, that test runs treat as an error.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from flwr.app import Error, Message, MetricRecord, RecordDict
    from flwr.app.message.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

# One derivation of node ids for the whole federation (ehds.fl.ids is Flower-free, for the
# coordinator and the node agent); re-exported here as the contract names it.
from ehds.fl.ids import node_id_for

__all__ = [
    "decode_message",
    "encode_message",
    "error_reply",
    "filter_metrics",
    "message_digest",
    "new_message_id",
    "node_id_for",
    "set_message_id",
]

NUM_EXAMPLES = "num-examples"


def encode_message(message: Message) -> bytes:
    """Flower's protobuf form of the whole message (metadata, content or error)."""
    return message_to_proto(message).SerializeToString(deterministic=True)


def decode_message(data: bytes) -> Message:
    """The Message that encode_message made; ValueError for bytes that are not one."""
    try:
        proto = ProtoMessage.FromString(data)
        return message_from_proto(proto)
    except (DecodeError, ValueError, TypeError) as error:
        raise ValueError("bytes are not a Flower message") from error


def message_digest(data: bytes) -> str:
    """Hex SHA-256 of an encoded message, for the audit trail."""
    return hashlib.sha256(data).hexdigest()


def new_message_id() -> str:
    """A fresh message id (what the SuperLink would assign)."""
    return uuid.uuid4().hex


def error_reply(to: Message, code: int, reason: str) -> Message:
    """The Flower error reply to ``to``, as a SuperNode makes one for a failed ClientApp."""
    reply = Message(Error(code=code, reason=reason), reply_to=to)
    set_message_id(reply, new_message_id())
    return reply


def set_message_id(message: Message, message_id: str) -> None:
    """Give a message its id, as Flower's transports do (Metadata has no public setter)."""
    message.metadata.__dict__["_message_id"] = message_id


def _copy_metadata(metadata: Metadata) -> Metadata:
    return Metadata(
        run_id=metadata.run_id,
        message_id=metadata.message_id,
        src_node_id=metadata.src_node_id,
        dst_node_id=metadata.dst_node_id,
        reply_to_message_id=metadata.reply_to_message_id,
        group_id=metadata.group_id,
        created_at=metadata.created_at,
        ttl=metadata.ttl,
        message_type=metadata.message_type,
        src_task_id=metadata.src_task_id,
        dst_task_id=metadata.dst_task_id,
    )


def filter_metrics(reply: Message, allowed: Collection[str] | None) -> Message:
    """The reply with every MetricRecord cut down to ``allowed`` (plus num-examples).

    ``None`` lets everything through. ArrayRecords and ConfigRecords are kept as they are;
    error replies are returned unchanged. The input message is not modified.
    """
    if allowed is None or reply.has_error():
        return reply
    keep = set(allowed) | {NUM_EXAMPLES}
    content = RecordDict()
    for key, record in reply.content.items():
        if isinstance(record, MetricRecord):
            kept = {name: value for name, value in record.items() if name in keep}
            content[key] = MetricRecord(kept)
        else:
            content[key] = record
    return make_message(metadata=_copy_metadata(reply.metadata), content=content)
