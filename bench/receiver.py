"""The benchmarks' Webhook receiver: a fast aiohttp server in its own process on 127.0.0.1.

Every system under test delivers to it. ``POST /hook/{name}`` answers 200 (or the status set
for that name), counts the request and, when the body carries ``"sentAt": <unix seconds>``
and ``"seq": <n>``, keeps the ingest→arrival latency and the sequence number (duplicates
are counted). Its clock is the load generator's: both run on this machine.

Control (the benchmark drives it): ``GET /ready``, ``GET /stats[?latencies=1]``,
``POST /reset``, ``POST /status/{name}/{code}``. It runs on uvloop when available: it is
not one of the systems compared, so it should be the fastest part of the chain (the
benchmark reports its CPU to show it is not the bottleneck).

    .venv/bin/python -m bench.receiver --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Tally:
    """What one hook name received."""

    count: int = 0  # requests answered 2xx
    refused: int = 0  # requests answered with the configured error status
    first: float | None = None  # wall clock of the first 2xx
    last: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0

    def summary(self, with_latencies: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "refused": self.refused,
            "first": self.first,
            "last": self.last,
            "distinct": len(self.seqs),
            "duplicates": self.duplicates,
            "timed": len(self.latencies_ms),
        }
        if with_latencies:
            out["latencies_ms"] = self.latencies_ms
        return out


def number_after(body: bytes, key: bytes) -> float | None:
    """The number following ``key`` in ``body``, up to a quote (cheaper than parsing JSON)."""
    at = body.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = start
    while end < len(body) and body[end] not in b'",}] \n':
        end += 1
    with contextlib.suppress(ValueError):
        return float(body[start:end])
    return None


class Receiver:
    def __init__(self) -> None:
        self.tallies: dict[str, Tally] = {}
        self.status: dict[str, int] = {}

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        name = request.match_info["name"]
        tally = self.tally(name)
        status = self.status.get(name, 200)
        if status >= 300:
            tally.refused += 1
            return web.Response(status=status, text="unavailable")
        tally.count += 1
        if tally.first is None:
            tally.first = now
        tally.last = now
        sent = number_after(body, b'"sent:')
        if sent is not None:
            tally.latencies_ms.append((now - sent) * 1000)
        seq = number_after(body, b'"seq:')
        if seq is not None:
            if int(seq) in tally.seqs:
                tally.duplicates += 1
            tally.seqs.add(int(seq))
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        full = request.query.get("latencies") == "1"
        return web.json_response({n: t.summary(full) for n, t in self.tallies.items()})

    async def reset(self, _request: web.Request) -> web.Response:
        self.tallies.clear()
        return web.Response(text="reset")

    async def set_status(self, request: web.Request) -> web.Response:
        self.status[request.match_info["name"]] = int(request.match_info["code"])
        return web.Response(text="set")


async def ready(_request: web.Request) -> web.Response:
    return web.Response(text="ready")


def make_app() -> web.Application:
    receiver = Receiver()
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/hook/{name}", receiver.hook)
    app.router.add_get("/stats", receiver.stats)
    app.router.add_post("/reset", receiver.reset)
    app.router.add_post("/status/{name}/{code}", receiver.set_status)
    app.router.add_get("/ready", ready)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"receiver listening on 127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(coro: Any, loop: str) -> None:
    """Run ``coro`` on the named event loop ("uvloop" when installed, else asyncio)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port), loop)


if __name__ == "__main__":
    main()
