"""The coordinator's handle on a running ServerApp process (ehds.fl.server_process).

It plays the SuperLink for the PipeGrid at the other end of the pipes: a pushed batch is
acknowledged at once and surfaces as a ``Push`` event (the coordinator makes it a round of
tasks); the Grid's "wait" is answered when ``deliver`` has brought the replies of every
message it waits for, or when its own timeout passes. Nothing here polls: the replies go out
the moment they are delivered.

Replies are checked before the ServerApp sees them: a reply must answer the message that was
pushed to that node, from that node, in this run; anything else, and a node that did not
answer, becomes a Flower error reply, as a SuperLink reports a failed or lost ClientApp.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehds.fl.frames import FrameError, read_frame_async, write_frame_async
from ehds.fl.isolation import host_environment

_log = logging.getLogger("ehds.fl.server_host")
_STDERR_TAIL_LINES = 200
# Flower's ErrorCode.REPLY_MESSAGE_UNAVAILABLE: what a SuperLink reports for a lost reply.
NO_REPLY_CODE = 4
STREAM_LIMIT = 1 << 20


@dataclass(frozen=True)
class Push:
    """A batch for the nodes: node name -> encoded Flower message."""

    messages: dict[str, bytes]


@dataclass(frozen=True)
class Done:
    """The ServerApp returned; ``summary`` is the study result."""

    summary: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The ServerApp raised, or its process ended without a result."""

    reason: str


Event = Push | Done | Failed


@dataclass
class _Sent:
    node: str
    message: Any  # the decoded flwr Message (flwr is imported only once a study runs)


class ServerHost:
    """One running ServerApp process; see the module docstring."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._terminal: Done | Failed | None = None
        self._sent: dict[str, _Sent] = {}
        self._last_push: dict[str, str] = {}  # node name -> message id of the last Push
        self._replies: dict[str, bytes] = {}
        self._waiting: list[str] | None = None
        self._wait_timer: asyncio.TimerHandle | None = None
        self._timer_tasks: set[asyncio.Task[None]] = set()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._reader_task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        *,
        app_dir: Path,
        run_id: int,
        run_config: Mapping[str, Any],
        nodes: Mapping[str, int],
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> ServerHost:
        """Start the ServerApp process (cwd: the parent of ``app_dir``) and hand it the run."""
        process = await asyncio.create_subprocess_exec(
            python,
            "-m",
            "ehds.fl.server_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(app_dir.parent),
            env=host_environment(env),
            limit=STREAM_LIMIT,
        )
        host = cls(process)
        try:
            await host._send(
                {
                    "op": "start",
                    "app_dir": str(app_dir),
                    "run_id": run_id,
                    "run_config": dict(run_config),
                    "nodes": dict(nodes),
                }
            )
        except BaseException:
            await host.stop()
            raise
        host._reader_task = asyncio.create_task(host._read_loop())
        host._stderr_task = asyncio.create_task(host._drain_stderr())
        return host

    async def _send(self, frame: Mapping[str, Any]) -> None:
        assert self._process.stdin is not None
        await write_frame_async(self._process.stdin, frame)

    async def next_event(self) -> Event:
        """The next Push, or the terminal Done/Failed (returned again on later calls)."""
        if self._terminal is not None and self._events.empty():
            return self._terminal
        return await self._events.get()

    def stderr_tail(self) -> list[str]:
        """The process's last log lines (for the coordinator's own log, not the researcher)."""
        return list(self._stderr_tail)

    def _finish(self, event: Done | Failed) -> None:
        if self._terminal is None:
            self._terminal = event
            self._events.put_nowait(event)

    async def _read_loop(self) -> None:
        assert self._process.stdout is not None
        try:
            while True:
                frame = await read_frame_async(self._process.stdout)
                if frame is None:
                    break
                if await self._on_frame(frame):
                    break
        except (FrameError, OSError, ValueError, KeyError, TypeError) as error:
            # A malformed frame from the ServerApp's side ends the run rather than hang it.
            self._finish(Failed(f"server process broke the protocol: {type(error).__name__}"))
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        code = await self._wait_exit(5.0)
        self._finish(Failed(f"server process exited with code {code} without a result"))

    async def _wait_exit(self, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            return None

    async def _on_frame(self, frame: dict[str, Any]) -> bool:
        """Handle one frame of the process; True once it reported its end."""
        op = frame.get("op")
        if op == "push":
            await self._on_push(frame)
        elif op == "wait":
            ids = [str(i) for i in frame.get("message_ids", [])]
            timeout = frame.get("timeout")
            self._waiting = ids
            if isinstance(timeout, int | float) and timeout >= 0:
                loop = asyncio.get_running_loop()
                self._wait_timer = loop.call_later(float(timeout), self._wait_timed_out)
            await self._answer_wait(force=False)
        elif op == "pull":
            ids = [str(i) for i in frame.get("message_ids", [])]
            await self._send({"op": "replies", "messages": self._take(ids)})
        elif op == "done":
            summary = frame.get("summary")
            self._finish(Done(summary if isinstance(summary, dict) else {}))
            return True
        elif op == "failed":
            self._finish(Failed(str(frame.get("reason", "ServerApp failed"))))
            return True
        else:
            raise ValueError("unknown frame")
        return False

    async def _on_push(self, frame: Mapping[str, Any]) -> None:
        batch: dict[str, bytes] = {}
        ids: dict[str, str] = {}
        from ehds.fl.codec import decode_message  # noqa: PLC0415 - flwr only once FL runs

        for item in frame.get("messages", []):
            node = str(item["node"])
            encoded = base64.b64decode(str(item["message"]), validate=True)
            message = decode_message(encoded)
            message_id = message.metadata.message_id
            if not message_id or node in batch:
                raise ValueError("push without message ids or with two messages for a node")
            batch[node] = encoded
            ids[node] = message_id
            self._sent[message_id] = _Sent(node, message)
        self._last_push = ids
        await self._send({"op": "pushed"})
        self._events.put_nowait(Push(batch))

    def _wait_timed_out(self) -> None:
        task = asyncio.get_running_loop().create_task(self._answer_wait(force=True))
        self._timer_tasks.add(task)
        task.add_done_callback(self._timer_tasks.discard)

    def _take(self, ids: list[str]) -> list[str]:
        """Encoded replies held for ``ids`` (base64), removed from the store."""
        taken: list[str] = []
        for message_id in ids:
            reply = self._replies.pop(message_id, None)
            if reply is not None:
                self._sent.pop(message_id, None)
                taken.append(base64.b64encode(reply).decode("ascii"))
        return taken

    async def _answer_wait(self, *, force: bool) -> None:
        if self._waiting is None:
            return
        if not force and not all(message_id in self._replies for message_id in self._waiting):
            return
        ids, self._waiting = self._waiting, None
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        with contextlib.suppress(OSError):
            await self._send({"op": "replies", "messages": self._take(ids)})

    def _checked_reply(self, message_id: str, sent: _Sent, reply: bytes | None) -> bytes:
        """The node's reply if it answers what was sent; else a Flower error reply."""
        from ehds.fl.codec import (  # noqa: PLC0415
            decode_message,
            encode_message,
            error_reply,
            new_message_id,
            set_message_id,
        )

        instruction = sent.message
        if reply is not None:
            try:
                answer = decode_message(reply)
            except ValueError:
                answer = None
            meta = answer.metadata if answer is not None else None
            if (
                answer is not None
                and meta is not None
                and meta.reply_to_message_id == message_id
                and meta.src_node_id == instruction.metadata.dst_node_id
                and meta.dst_node_id == instruction.metadata.src_node_id
                and meta.run_id == instruction.metadata.run_id
            ):
                if meta.message_id:
                    return reply
                set_message_id(answer, new_message_id())
                return encode_message(answer)
            _log.warning("reply of node %s does not answer its message; dropped", sent.node)
        return encode_message(error_reply(instruction, NO_REPLY_CODE, "the node did not reply"))

    async def deliver(self, replies: Mapping[str, bytes | None]) -> None:
        """Replies to the last Push by node name (None or absent: the node did not answer)."""
        for node, message_id in self._last_push.items():
            sent = self._sent.get(message_id)
            if sent is None or message_id in self._replies:
                continue
            self._replies[message_id] = self._checked_reply(message_id, sent, replies.get(node))
        self._last_push = {}
        await self._answer_wait(force=False)

    async def _drain_stderr(self) -> None:
        stream = self._process.stderr
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):
            async for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                self._stderr_tail.append(line)
                _log.debug("server process: %s", line)

    async def stop(self) -> None:
        """Kill the process (if still running) and wait for it, bounded."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._wait_exit(5.0)
        for task in (self._reader_task, self._stderr_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 2.0)
        if self._wait_timer is not None:
            self._wait_timer.cancel()
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._finish(Failed("server process stopped"))
