"""Send slots: at most ``delivery.concurrency`` sends at once, handed out fairly between sinks.

The dispatcher claims up to a batch ahead of its senders, so that a sender that frees up starts
its next delivery at once instead of waiting out a claim's round trip (a quarter more
deliveries/s in a backlog drain). Those deliveries wait here for a slot. A first-come queue
would let a slow sink's deliveries, claimed ahead, hold back another sink's that arrived after
them; so a free slot goes to the sink sending least right now, and within a sink to the
delivery that waited longest (the claim's order).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque


class SendSlots:
    """``limit`` slots; ``acquire(sink)`` waits for one, ``release(sink)`` gives it back."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._sending: Counter[uuid.UUID] = Counter()
        self._waiting: dict[uuid.UUID, deque[asyncio.Future[None]]] = {}

    async def acquire(self, sink: uuid.UUID) -> None:
        if self._free > 0 and not self._waiting:
            self._take(sink)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(sink, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(sink)  # handed a slot, then cancelled before it ran: pass it on
            else:
                self._forget(sink, turn)
            raise

    def release(self, sink: uuid.UUID) -> None:
        self._sending[sink] -= 1
        if self._sending[sink] <= 0:
            del self._sending[sink]
        self._free += 1
        self._hand_over()

    def sending(self, sink: uuid.UUID) -> int:
        """How many of the sink's deliveries hold a slot."""
        return self._sending.get(sink, 0)

    def _take(self, sink: uuid.UUID) -> None:
        self._free -= 1
        self._sending[sink] += 1

    def _hand_over(self) -> None:
        while self._free > 0 and self._waiting:
            # min() keeps the first of equals: the sink that started waiting first.
            sink = min(self._waiting, key=self._sending.__getitem__)
            queue = self._waiting[sink]
            turn = queue.popleft()
            if not queue:
                del self._waiting[sink]
            if turn.cancelled():
                continue  # its task is being cancelled and will not run
            self._take(sink)
            turn.set_result(None)

    def _forget(self, sink: uuid.UUID, turn: asyncio.Future[None]) -> None:
        queue = self._waiting.get(sink)
        if queue is None:
            return
        try:
            queue.remove(turn)
        except ValueError:
            return
        if not queue:
            del self._waiting[sink]
