"""Group commit for ingest: concurrent requests share one INSERT and one commit.

A commit costs a WAL flush (fsync), and that, not CPU, bounds how many events/s one
connection can accept. Requests that arrive while a flush is running wait for the next one
and go in together; an idle relay still commits a lone event at once (no timer, no added
latency). Each request still answers only after its own event is committed.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg

from air_relay.db import repository as repo
from air_relay.model import NewEvent


@dataclass
class _Waiting:
    event: NewEvent
    future: asyncio.Future[int]


class IngestBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        acquire_timeout: float,
        max_batch: int = 256,
        max_flushes: int = 2,
    ) -> None:
        self._pool = pool
        self._timeout = acquire_timeout
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: list[_Waiting] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, event: NewEvent) -> int:
        """Commit ``event`` (with others); returns its delivery count or raises the DB error."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(event, future))
        if len(self._flushes) < self._max_flushes:
            task = asyncio.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        # shield: a client that hangs up must not cancel a commit other requests share.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                counts: dict[uuid.UUID, int] = await repo.ingest_events(
                    self._pool, [w.event for w in batch], timeout=self._timeout
                )
            except asyncio.CancelledError:
                for waiting in (*batch, *self._queue):
                    waiting.future.cancel()
                raise
            except Exception as exc:
                # Nothing of the batch committed (one statement): every request hears it.
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                continue
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_result(counts[waiting.event.event_id])
