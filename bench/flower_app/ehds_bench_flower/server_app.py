"""The aggregator side: N rounds of query-all-nodes, sum the counts, time each round.

A round is timed from inside the ServerApp, from handing the messages to the Grid to
holding every reply, so it covers exactly Flower's dispatch-to-aggregate path (SuperLink
queues, SuperNode pulls, ClientApp launch, reply push, ServerApp pull) and none of
``flwr run``'s own start-up. The timings go to a JSON file named by the run config, written
atomically so that the benchmark polling for it never reads half a file; a failure is
written there too, so the benchmark does not wait for a file that will never come.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    temporary.replace(path)


def _wait_for_nodes(grid: Grid, wanted: int, seconds: float) -> list[int]:
    """The online node IDs once at least ``wanted`` are online; RuntimeError on timeout."""
    deadline = time.monotonic() + seconds
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= wanted:
            return node_ids
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(node_ids)} of {wanted} SuperNodes online after {seconds:.0f} s"
            )
        time.sleep(0.5)


def _exchange(grid: Grid, messages: list[Message], timeout: float, poll: float) -> list[Message]:
    """Send ``messages`` and return the replies, waiting at most ``timeout`` seconds.

    ``poll == 0`` is Flower's own ``send_and_receive``; otherwise replies are pulled every
    ``poll`` seconds, to show how much of a round is the 3 s pull interval of the former.
    """
    if poll <= 0:
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = {message_id for message_id in grid.push_messages(messages) if message_id}
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pulled: Iterable[Message] = grid.pull_messages(pending)
        for reply in pulled:
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(poll)
    return replies


def _run_round(
    grid: Grid, node_ids: list[int], number: int, timeout: float, poll: float
) -> dict[str, Any]:
    """One query to every node; the elapsed seconds, the summed count, the replies."""
    messages = [
        Message(
            RecordDict({"query": ConfigRecord({"study": number})}),
            dst_node_id=node_id,
            message_type=MessageType.QUERY,
            group_id=str(number),
        )
        for node_id in node_ids
    ]
    started = time.perf_counter()
    replies = _exchange(grid, messages, timeout, poll)
    elapsed = time.perf_counter() - started
    errors = [reply.error.reason for reply in replies if reply.has_error()]
    if errors or len(replies) != len(node_ids):
        raise RuntimeError(
            f"round {number}: {len(replies)} of {len(node_ids)} replies, errors: {errors}"
        )
    total = sum(int(reply.content["result"]["count"]) for reply in replies)
    return {"round": number, "seconds": elapsed, "total": total, "replies": len(replies)}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Wait for the nodes, run the warm-up and measured rounds, write the timings."""
    started_at = time.time()
    config = context.run_config
    timings_path = str(config["timings-path"])
    payload: dict[str, Any] = {
        "flwr_version": version("flwr"),
        "serverapp_started_at": started_at,
        "error": None,
    }
    try:
        node_ids = _wait_for_nodes(
            grid, int(config["min-nodes"]), float(config["node-wait-seconds"])
        )
        payload["nodes_online_at"] = time.time()
        payload["node_ids"] = node_ids
        timeout = float(config["reply-timeout-seconds"])
        poll = float(config["reply-poll-seconds"])
        warmup = int(config["warmup-rounds"])
        rounds = [
            _run_round(grid, node_ids, number, timeout, poll)
            for number in range(warmup + int(config["rounds"]))
        ]
        payload["warmup_rounds"] = rounds[:warmup]
        payload["rounds"] = rounds[warmup:]
    except Exception as error:
        payload["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        if timings_path:
            _write_json(Path(timings_path), payload)
