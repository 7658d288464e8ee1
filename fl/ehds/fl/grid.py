"""PipeGrid: the Flower ``Grid`` of a ServerApp hosted by our coordinator.

Where Flower's SuperLink would queue messages for SuperNodes, this Grid hands each batch to
the coordinator over frames (ehds.fl.frames) on the server process's stdin/stdout, and the
coordinator turns it into one round of ordinary signed tasks. ``send_and_receive`` is one
push and one blocking "wait" for the replies, so a round costs no polling interval (Flower's
own grids pull every 0.1 to 3 s).

The Grid also keeps what the study result needs and Flower's Context does not: every reply's
metrics by round, message type and node, and the ArrayRecords of the last broadcast. A round
is one pushed batch (one round of tasks at the coordinator), labelled by the messages'
group id, or, as Flower's strategies leave that empty, by the "server-round" entry they put
in the message's ConfigRecord, or else by the batch's ordinal.

  -> {"op": "push", "messages": [{"node": name, "message": b64}]}   <- {"op": "pushed"}
  -> {"op": "wait", "message_ids": [...], "timeout": float | null}  <- {"op": "replies", ...}
  -> {"op": "pull", "message_ids": [...]}                           <- {"op": "replies", ...}
"""

from __future__ import annotations

import base64
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ehds.fl.frames import read_frame, write_frame

with warnings.catch_warnings():
    # flwr imports typer, which re-exports click.utils helpers that click 8.5 deprecates: a
    # warning of Flower's dependencies, at import, that test runs treat as an error.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    from ehds.fl.codec import decode_message, encode_message, new_message_id, set_message_id

NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"  # where Flower's strategies put the round number


class GridError(RuntimeError):
    """The coordinator end of the pipe broke the protocol or went away."""


@dataclass
class RoundRecord:
    """Replies of one (group id, message type): metrics per node, failed nodes."""

    label: str
    message_type: str
    nodes: dict[str, dict[str, float | None]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: such a metric is reported as missing."""
    return value if math.isfinite(value) else None


def reply_metrics(reply: Message) -> dict[str, float | None]:
    """Scalar metrics of a reply; "record.metric" keys when it holds several MetricRecords."""
    records = [(key, rec) for key, rec in reply.content.items() if isinstance(rec, MetricRecord)]
    metrics: dict[str, float | None] = {}
    for key, record in records:
        for name, value in record.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metrics[name if len(records) == 1 else f"{key}.{name}"] = finite_or_none(float(value))
    return metrics


def _round_label(message: Message, batch_no: int) -> str:
    if message.metadata.group_id:
        return message.metadata.group_id
    for record in message.content.values():
        if isinstance(record, ConfigRecord):
            server_round = record.get(SERVER_ROUND)
            if isinstance(server_round, int | str) and not isinstance(server_round, bool):
                return str(server_round)
    return str(batch_no)


class PipeGrid(Grid):
    """A Flower Grid whose SuperLink is the coordinator at the other end of two pipes."""

    def __init__(self, frames_in: BinaryIO, frames_out: BinaryIO, nodes: Mapping[str, int]) -> None:
        self._in = frames_in
        self._out = frames_out
        self._node_ids = dict(nodes)
        self._node_names = {node_id: name for name, node_id in nodes.items()}
        self._run: Run | None = None
        self._pending: dict[str, tuple[str, tuple[int, str]]] = {}
        self._batches = 0
        self.rounds: dict[tuple[int, str], RoundRecord] = {}
        self.last_broadcast: RecordDict | None = None

    def set_run(self, run: Run) -> None:
        """Set the run this Grid operates in."""
        if not isinstance(run, Run):
            raise TypeError("run must be a flwr Run")
        self._run = run

    @property
    def run(self) -> Run:
        """Run information."""
        if self._run is None:
            raise RuntimeError("the Grid has no run set")
        return Run(**vars(self._run))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A new instruction message (Flower deprecates this in favour of Message())."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The Flower node ids of the study's nodes (all joined before the ServerApp ran)."""
        return list(self._node_ids.values())

    def _exchange(self, frame: Mapping[str, Any], expected: str) -> dict[str, Any]:
        write_frame(self._out, frame)
        answer = read_frame(self._in)
        if answer is None:
            raise GridError("the coordinator closed the pipe")
        if answer.get("op") != expected:
            raise GridError(f"the coordinator answered {answer.get('op')!r}, not {expected!r}")
        return answer

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Hand one batch to the coordinator: one message per node, to known nodes only."""
        batch: list[dict[str, str]] = []
        ids: list[str] = []
        seen: set[str] = set()
        arrays: RecordDict | None = None
        batch_no = self._batches + 1
        new_rounds: dict[tuple[int, str], RoundRecord] = {}
        for message in messages:
            metadata = message.metadata
            name = self._node_names.get(metadata.dst_node_id)
            if name is None:
                raise ValueError("message to a node that is not in this study")
            if name in seen:
                raise ValueError("a batch may hold only one message per node")
            if metadata.reply_to_message_id or metadata.ttl <= 0 or message.has_error():
                raise ValueError("only instruction messages with content can be pushed")
            seen.add(name)
            message_id = new_message_id()
            set_message_id(message, message_id)
            batch.append(
                {"node": name, "message": base64.b64encode(encode_message(message)).decode()}
            )
            ids.append(message_id)
            key = (batch_no, metadata.message_type)
            if key not in new_rounds:
                new_rounds[key] = RoundRecord(
                    _round_label(message, batch_no), metadata.message_type
                )
            self._pending[message_id] = (name, key)
            held: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
                k: v for k, v in message.content.items() if isinstance(v, ArrayRecord)
            }
            if held:
                arrays = RecordDict(held)
        if not batch:
            return []
        self._exchange({"op": "push", "messages": batch}, "pushed")
        self._batches = batch_no
        self.rounds.update(new_rounds)
        if arrays is not None:
            self.last_broadcast = arrays
        return ids

    def _accept(self, answer: Mapping[str, Any]) -> list[Message]:
        encoded = answer.get("messages")
        if not isinstance(encoded, list):
            raise GridError("the coordinator's replies frame has no message list")
        replies: list[Message] = []
        for item in encoded:
            reply = decode_message(base64.b64decode(str(item), validate=True))
            pending = self._pending.pop(reply.metadata.reply_to_message_id, None)
            if pending is None:
                continue  # not an answer to anything outstanding: never shown to the app
            self._record(pending, reply)
            replies.append(reply)
        return replies

    def _record(self, pending: tuple[str, tuple[int, str]], reply: Message) -> None:
        name, key = pending
        record = self.rounds[key]
        if reply.has_error():
            record.failed.append(name)
        else:
            record.nodes[name] = reply_metrics(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies the coordinator holds now for these ids (each is returned once)."""
        ids = [str(message_id) for message_id in message_ids]
        if not ids:
            return []
        return self._accept(self._exchange({"op": "pull", "message_ids": ids}, "replies"))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push a batch, then block until every reply is in (or ``timeout`` passed)."""
        ids = list(self.push_messages(messages))
        if not ids:
            return []
        frame = {"op": "wait", "message_ids": ids, "timeout": timeout}
        return self._accept(self._exchange(frame, "replies"))
