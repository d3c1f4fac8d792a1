"""The counting sink: a Webhook receiver on a fixed 127.0.0.1 port that records every fault-test
event by its sequence number, and can answer errors, hang, or stop listening."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from tests.support import free_port


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0


@dataclass
class Arrival:
    seq: int
    at: float
    webhook_id: str
    status: int | None = None  # None while the request is still being answered
    answered_at: float | None = None


class CountingSink:
    """A Webhook receiver on a fixed 127.0.0.1 port that counts events by ``seq``.

    Answers ``script`` (consumed, one per request) first, then ``for_seq[seq]``, then
    ``default``. An event is *delivered* once the sink has answered it 2xx; a 2xx answer for
    an event already delivered is a *duplicate*. ``stop_listening`` closes the socket and
    every connection (connections are refused until ``listen`` again).
    """

    def __init__(self, run: str) -> None:
        self.run = run
        self.port = free_port()
        self.default = Reply()
        self.script: list[Reply] = []
        self.for_seq: dict[int, Reply] = {}
        self.arrivals: list[Arrival] = []
        self.ok_counts: Counter[int] = Counter()
        self.ok_order: list[int] = []
        self.foreign: list[bytes] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def listen(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def stop_listening(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        seq = self._seq_of(body)
        if seq is None:
            self.foreign.append(body)
            return web.Response(status=400, text="not a fault-test event")
        arrival = Arrival(seq, time.monotonic(), request.headers.get("webhook-id", ""))
        self.arrivals.append(arrival)
        reply = self.script.pop(0) if self.script else self.for_seq.get(seq, self.default)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        arrival.status = reply.status
        arrival.answered_at = time.monotonic()
        if 200 <= reply.status < 300:
            self.ok_counts[seq] += 1
            self.ok_order.append(seq)
        return web.Response(status=reply.status, text="ok" if reply.status < 300 else "no")

    def _seq_of(self, body: bytes) -> int | None:
        try:
            run, _, seq = json.loads(body)["data"]["taskId"].rpartition("-")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return int(seq) if run == self.run and seq.isdigit() else None

    @property
    def in_flight(self) -> int:
        return sum(1 for a in self.arrivals if a.status is None)

    def delivered(self) -> set[int]:
        return set(self.ok_counts)

    def duplicates(self, among: Iterable[int] | None = None) -> int:
        seqs = self.ok_counts if among is None else among
        return sum(max(0, self.ok_counts[s] - 1) for s in seqs)

    def first_ok_at(self) -> dict[int, float]:
        """When each event was first answered 2xx (monotonic clock)."""
        out: dict[int, float] = {}
        for a in self.arrivals:
            if a.status is not None and 200 <= a.status < 300 and a.answered_at is not None:
                out[a.seq] = min(out.get(a.seq, a.answered_at), a.answered_at)
        return out

    def requests_for(self, seq: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.seq == seq]

    async def wait_delivered(self, seqs: Iterable[int], timeout: float) -> None:
        wanted = set(seqs)
        deadline = time.monotonic() + timeout
        while not wanted <= self.ok_counts.keys():
            if time.monotonic() > deadline:
                missing = sorted(wanted - self.ok_counts.keys())
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} accepted events not delivered "
                    f"within {timeout} s, e.g. {missing[:10]}"
                )
            await asyncio.sleep(0.05)

    async def wait_arrivals(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests, got {len(self.arrivals)}")
            await asyncio.sleep(0.02)
