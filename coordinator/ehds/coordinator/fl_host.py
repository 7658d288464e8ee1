"""The coordinator's host of federated-learning ServerApps.

Why a process per study, fed by this host: the ServerApp is the researcher's code (or a
built-in app); it runs in a child process (`ehds.fl.server_process`) so that its imports,
memory and failures stay out of the coordinator, which never imports Flower itself. The host
turns each batch of messages the ServerApp sends into a round of ordinary tasks
(`Store.fl_push`), waits for that round to end (`Effects.fl_rounds`), hands the replies
back, and stores the ServerApp's summary as the study's result (`Store.fl_finish`).

After a coordinator restart a study in training starts its ServerApp again, from its first
round, with the nodes that joined: Flower keeps a ServerApp's state in memory only, and a
study is never lost (a round still open at the nodes is awaited before the first new one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ehds.analyses.base import JsonObject
from ehds.analyses.fl.parameters import FlParameters
from ehds.coordinator.effects import Effects
from ehds.coordinator.state.fl_changes import FlRound
from ehds.coordinator.state.store import Store
from ehds.coordinator.state.worker import DatabaseWorker
from ehds.fl.bundle import read_fab_info, unpack_fab
from ehds.fl.ids import node_id_for, run_id_for
from ehds.fl.server_host import Done, Failed, Push, ServerHost

log = logging.getLogger(__name__)

START_FAILED = "fl.server_app_failed: the ServerApp did not start (see the coordinator's log)"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Run:
    study_id: str
    rounds_ended: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    driver: asyncio.Task[None] | None = None
    server: ServerHost | None = None


class FlHost:
    def __init__(
        self,
        *,
        db: DatabaseWorker,
        store: Store,
        apply: Callable[[Effects], None],
        work_dir: Path,
        python: str = sys.executable,
    ) -> None:
        self._db = db
        self._store = store
        self._apply = apply
        self._work_dir = work_dir
        self._python = python
        self._runs: dict[str, _Run] = {}
        self._attempts = 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def round_ended(self, study_id: str) -> None:
        """A round of ``study_id`` ended (the join, or a batch of messages): wake its driver,
        or start one (after the join, or after a restart)."""
        run = self._runs.get(study_id)
        if run is None:
            run = _Run(study_id)
            self._runs[study_id] = run
            run.driver = asyncio.create_task(self._drive(run), name=f"fl-{study_id}")
            return
        run.rounds_ended.put_nowait(None)

    def forget(self, study_id: str) -> None:
        """The study ended (completed, failed, cancelled, deadline): stop its ServerApp."""
        run = self._runs.pop(study_id, None)
        if run is not None and run.driver is not None and not run.driver.done():
            run.driver.cancel()

    async def close(self) -> None:
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            if run.driver is not None:
                run.driver.cancel()
        await asyncio.gather(
            *(run.driver for run in runs if run.driver is not None), return_exceptions=True
        )

    # ------------------------------------------------------------------ one study

    async def _drive(self, run: _Run) -> None:
        folder: Path | None = None
        try:
            current = await self._db.read(lambda s: self._store.fl_round(s, run.study_id))
            if current is None or not current.open:
                return
            self._attempts += 1
            folder = self._work_dir / f"{run.study_id}-{self._attempts}"
            run.server = await self._start(current, folder)
            await self._serve(run, run.server)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the ServerApp host of study %s failed", run.study_id)
            await self._fail(run.study_id, START_FAILED)
        finally:
            if run.server is not None:
                await run.server.stop()
            if self._runs.get(run.study_id) is run:
                del self._runs[run.study_id]
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    async def _start(self, current: FlRound, folder: Path) -> ServerHost:
        params = FlParameters.model_validate_json(current.parameters)
        fab = params.app.fab_bytes()
        info = read_fab_info(fab)
        app_dir = unpack_fab(fab, folder / "app")
        run_config: dict[str, Any] = dict(info.config) | params.app_run_config()
        nodes = {node: node_id_for(node) for node in current.joined}
        log.info("study %s: starting its ServerApp with %d nodes", current.study_id, len(nodes))
        return await ServerHost.start(
            app_dir=app_dir,
            run_id=run_id_for(current.study_id),
            run_config=run_config,
            nodes=nodes,
            python=self._python,
        )

    async def _serve(self, run: _Run, server: ServerHost) -> None:
        while True:
            event = await server.next_event()
            if isinstance(event, Done):
                await self._finish(run.study_id, event.summary)
                return
            if isinstance(event, Failed):
                log.warning("study %s: its ServerApp failed: %s", run.study_id, event.reason)
                await self._fail(run.study_id, f"fl.server_app_failed: {event.reason}")
                return
            assert isinstance(event, Push)
            messages = {
                node: base64.b64encode(data).decode("ascii")
                for node, data in event.messages.items()
            }
            await self._push(run, messages)
            await run.rounds_ended.get()
            current = await self._db.read(lambda s: self._store.fl_round(s, run.study_id))
            if current is None or not current.open:
                return
            await server.deliver(_replies(current.results))

    async def _push(self, run: _Run, messages: dict[str, str]) -> None:
        while True:
            try:
                await self._db.write(
                    lambda s: self._store.fl_push(s, _now(), run.study_id, messages),
                    self._apply,
                )
                return
            except ValueError as exc:
                if "still open" not in str(exc):
                    raise
            # A round from before a restart is still open at the nodes: await its end.
            await run.rounds_ended.get()

    async def _finish(self, study_id: str, summary: JsonObject) -> None:
        await self._db.write(
            lambda s: self._store.fl_finish(s, _now(), study_id, summary), self._apply
        )

    async def _fail(self, study_id: str, reason: str) -> None:
        try:
            await self._db.write(
                lambda s: self._store.fl_fail(s, _now(), study_id, reason), self._apply
            )
        except Exception:
            log.exception("recording the failure of study %s failed", study_id)


def _replies(results: dict[str, JsonObject | None]) -> dict[str, bytes | None]:
    replies: dict[str, bytes | None] = {}
    for node, result in results.items():
        reply = result.get("reply") if isinstance(result, dict) else None
        try:
            replies[node] = (
                base64.b64decode(reply, validate=True) if isinstance(reply, str) else None
            )
        except binascii.Error:
            replies[node] = None
    return replies
