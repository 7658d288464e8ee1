"""One thread owns the database; the event loop hands it work and never blocks on SQL.

Why one thread: SQLite has one writer at a time, and serialising every write in one place makes
each operation atomic with respect to the others without locks in Python. Reads run on the
same thread, after the writes queued before them (read-your-writes: a Get after a node's
acknowledgement sees it, even while the acknowledgement waits for the next group).

Why group commit: with ``synchronous=FULL`` each commit costs an fsync, and a study across a
thousand nodes brings a thousand acknowledgements and results within a second. Writes queued
while a transaction is running are taken together into the next one: under light load a write
commits at once, under heavy load the fsyncs are shared.

A write is a function of a `Session` that returns a value and has no other side effect (no
sends, no metrics): if the grouped transaction fails, it is rolled back and every write of the
group runs again on its own, so that one bad write fails alone. ``on_commit`` runs on the event
loop after the commit, even if the caller that queued the write has been cancelled meanwhile:
that is where the effects of a committed change (messages to nodes, metrics, notifications)
happen, so they cannot be lost to a cancelled RPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ehds.core.errors import StateError

__all__ = ["DatabaseWorker", "WorkerClosedError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP: Final = 500
"""Most writes in one transaction: bounds how long one transaction holds the writer."""


class WorkerClosedError(StateError):
    """The coordinator is shutting down: no more database work is accepted."""


@dataclass
class _Write:
    fn: Callable[[Session], Any]
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class DatabaseWorker:
    def __init__(self, engine: Engine, *, max_group: int = MAX_GROUP) -> None:
        self.engine = engine
        self._max_group = max_group
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordinator-db")
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.transactions = 0
        """Committed write transactions so far (a figure for benchmarks and tests)."""

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the database thread (e.g. migrations), in turn with everything else."""
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def read(self, fn: Callable[[Session], T]) -> T:
        """``fn`` in a read-only session (rolled back at the end), after every write queued
        before it has committed (or failed): a read sees what was queued before it."""
        self._check_open()
        if self._pending:
            await asyncio.wait([self._pending[-1].future])
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._read, fn)

    async def write(
        self, fn: Callable[[Session], T], on_commit: Callable[[T], None] | None = None
    ) -> T:
        """Queue ``fn`` for the next transaction; returns its value once committed."""
        return await asyncio.shield(self.enqueue(fn, on_commit))

    def enqueue(
        self, fn: Callable[[Session], T], on_commit: Callable[[T], None] | None = None
    ) -> asyncio.Future[T]:
        """Queue ``fn`` without waiting: the future resolves once it is committed. Writes
        commit in the order they were queued."""
        self._check_open()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(fn, future, on_commit))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="coordinator-db-flush")
        return future

    @property
    def backlog(self) -> int:
        """Writes queued and not yet taken into a transaction."""
        return len(self._pending)

    async def close(self) -> None:
        """Finish the queued writes, then stop the thread and close the engine's connections."""
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.engine.dispose)
        self._executor.shutdown(wait=True)

    def _check_open(self) -> None:
        if self._closed:
            raise WorkerClosedError("the coordinator is shutting down")

    def _read(self, fn: Callable[[Session], T]) -> T:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                return fn(session)
            finally:
                session.rollback()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group = self._pending[: self._max_group]
            del self._pending[: self._max_group]
            outcomes = await loop.run_in_executor(
                self._executor, self._run_group, [write.fn for write in group]
            )
            for write, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, _Failed):
                    if not write.future.done():
                        write.future.set_exception(outcome.error)
                    continue
                if write.on_commit is not None:
                    try:
                        write.on_commit(outcome)
                    except Exception:
                        log.exception("applying a committed change failed")
                if not write.future.done():
                    write.future.set_result(outcome)

    def _run_group(self, fns: list[Callable[[Session], Any]]) -> list[Any]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                outcomes = [fn(session) for fn in fns]
            self.transactions += 1
            return outcomes
        except Exception as exc:
            if len(fns) == 1:
                return [_Failed(exc)]
        # One write failed the group: run each alone, so that only that one fails.
        results: list[Any] = []
        for fn in fns:
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    results.append(fn(session))
                self.transactions += 1
            except Exception as exc:
                log.warning("a database write failed: %s", exc)
                results.append(_Failed(exc))
        return results
