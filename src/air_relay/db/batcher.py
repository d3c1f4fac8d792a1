"""Group commit: concurrent callers share one statement and one commit.

A commit costs a round trip and a WAL flush, and those, not CPU, bound how many writes/s one
connection makes. Writes that arrive while a flush is running wait for the next one and go in
together; an idle relay still writes a lone one at once (no timer, no added latency). Each
caller still returns only after its own write is committed.

Two users: ingest (``IngestBatcher``: events and their deliveries, fully durable) and the
delivery workers (``CompletionBatcher``: each claim's attempts and verdict).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from air_relay.db import repository as repo
from air_relay.db.pool import DB_UNAVAILABLE
from air_relay.model import Completion, NewEvent

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class GroupCommit(Generic[T, R]):
    """Batches ``submit`` calls into calls of ``write`` (items -> one result per item)."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        max_flushes: int = 2,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: list[_Waiting[T, R]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Write ``item`` (with others); returns its result or raises the write's error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(item, future))
        if len(self._flushes) < self._max_flushes:
            self._flushes.add(asyncio.create_task(self._flush()))
        # A caller that goes away cancels only its own future, never the flush task: the
        # commit others share goes on (a result for a cancelled future is dropped).
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    await self._write_batch(batch)
                except asyncio.CancelledError:
                    for waiting in (*batch, *self._queue):
                        waiting.future.cancel()
                    raise
        finally:
            # Not counted as flushing from the moment the queue is found empty, with no await
            # in between: a done-callback would run an iteration later, and a caller woken
            # by this flush that submits again in the meantime would find no flush coming.
            task = asyncio.current_task()
            if task is not None:
                self._flushes.discard(task)

    async def _write_batch(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            results = await self._write([w.item for w in batch])
        except DB_UNAVAILABLE as exc:
            # Nothing of the batch committed (one statement): every caller hears it.
            self._fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            # Not an outage: maybe one item the database refuses. Each on its own, so that
            # one bad item fails only its own caller.
            for waiting in batch:
                await self._write_batch([waiting])
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)

    @staticmethod
    def _fail(batch: list[_Waiting[T, R]], exc: BaseException) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(exc)


class IngestBatcher(GroupCommit[NewEvent, int]):
    """Events committed together; each submit returns its event's delivery count."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float) -> None:
        async def write(events: Sequence[NewEvent]) -> list[int]:
            counts = await repo.ingest_events(pool, events, timeout=acquire_timeout)
            return [counts[e.event_id] for e in events]

        super().__init__(write)


class CompletionBatcher(GroupCommit[Completion, bool]):
    """Claims' completions written together; each submit returns whether its delivery's
    state was kept (False: its lease had been lost to another claim)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        async def write(completions: Sequence[Completion]) -> list[bool]:
            kept = await repo.complete_deliveries(pool, completions)
            return [(c.delivery.id, c.delivery.claim_token) in kept for c in completions]

        super().__init__(write)
