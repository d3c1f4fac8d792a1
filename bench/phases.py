"""The phases of bench/compare.py, each on its own database: the backlog drain, the
fixed-rate latency and the wrk ingest measurements of air-relay, of the pgqueuer peer and of
the bare handler, with the CPU and RSS figures that go with them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from air_relay.db import repository as repo
from air_relay.model import NewEvent
from bench import peer_pgqueuer as peer
from bench.kit import (
    EVENT_NAME,
    INGEST_HEADERS,
    CpuMeter,
    DbMeter,
    DbUse,
    Helper,
    LoadResult,
    ReceiverClient,
    RelayLab,
    checkpoint,
    cpu_text,
    create_database,
    drop_database,
    event_body,
    event_loop_of,
    fixed_rate,
    postgres_pids,
    relay_lab,
    run_wrk,
)
from tests.support import TENANT

Count = Callable[[], Awaitable[int]]
# CPU % of one core that work outside the benchmark may use before its figures are suspect.
DISTURBED = 25.0


@dataclass
class Bench:
    """What every phase shares: the arguments, the database server, the receiver."""

    args: argparse.Namespace
    root: Path
    admin_dsn: str
    pg_datadir: Path | None
    receiver: ReceiverClient
    overrides: dict[str, Any]
    loop: str | None = None  # the event loop air-relay serve runs on, once seen
    busy: list[str] = field(default_factory=list)  # "what was busy" lines for the summary

    def meter(self, **groups: Callable[[], list[int]]) -> CpuMeter:
        """CPU of ``groups`` (the system measured), PostgreSQL, the receiver and this process
        (the load generator, the polling)."""
        own = os.getpid()
        base: dict[str, Callable[[], list[int]]] = {
            "receiver": lambda: [self.receiver.helper.pid],
            "bench": lambda: [own],
        }
        if self.pg_datadir is not None:  # an external server's processes are not ours to see
            base["postgres"] = lambda: postgres_pids(self.pg_datadir)
        return CpuMeter({**groups, **base})

    def note(self, phase: str, cpu: dict[str, float], db: str = "") -> None:
        """Print and keep what was busy in ``phase`` (CPU, and what the database did)."""
        line = f"{phase}: {cpu_text(cpu)}" + (f"; {db}" if db else "")
        if cpu.get("others", 0.0) > DISTURBED:
            line += " [DISTURBED: other work on the machine, run again]"
        self.busy.append(line)
        print(f"    CPU % of one core, {line}", flush=True)

    def saw(self, lab: RelayLab) -> None:
        if self.loop is None:
            self.loop = event_loop_of(lab.relays[0].pid)

    async def relay_loop(self) -> str:
        """The event loop serve runs on; starts one serve to look if none has run yet."""
        if self.loop is None:
            async with relay_lab(self.root, self.admin_dsn, "probe", self.overrides) as lab:
                self.saw(lab)
        assert self.loop is not None
        return self.loop


# --- results ----------------------------------------------------------------------------------


@dataclass
class Drain:
    deliveries: int
    done: int
    seconds: float
    cpu: dict[str, float]
    rss_mb: float | None
    db: DbUse | None

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    load: LoadResult
    latencies_ms: list[float]
    delivered: int
    duplicates: int
    pending_at_end: int
    cpu: dict[str, float]
    rss_mb: float | None
    db: DbUse | None


@dataclass
class Ingest:
    requests: int
    requests_per_second: float
    detail: str
    cpu: dict[str, float]
    rss_mb: float | None
    db: DbUse | None


@dataclass
class Target:
    """A system under test, running: its processes, its database (None: it has none) and how
    to stop it (before the database's counters are read)."""

    label: str
    url: str
    pids: Callable[[], list[int]]
    rss_mb: Callable[[], float | None]
    stop: Callable[[], Awaitable[None]]
    database: str | None


async def wait_done(
    done: Count, target: int, timeout: float, poll: float = 0.05
) -> tuple[int, float]:
    """Poll ``done`` until it reaches ``target`` or ``timeout`` passes: (last value, when)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await done()
        now = time.monotonic()
        if value >= target or now > deadline:
            return value, now
        await asyncio.sleep(poll)


def relay_target(lab: RelayLab) -> Target:
    return Target("serve", lab.ingest_url, lambda: lab.pids, lab.rss_mb, lab.stop, lab.database)


# --- air-relay --------------------------------------------------------------------------------


async def relay_drain(
    b: Bench, *, events: int, sinks: int = 1, instances: int = 1, tag: str = "drain"
) -> Drain:
    """``events`` events (to ``sinks`` Webhook sinks) made pending and due in one commit by the
    relay's own ingest statement, with ``instances`` serve processes running; timed until
    every delivery is ``delivered``."""
    async with relay_lab(b.root, b.admin_dsn, tag, b.overrides, instances) as lab:
        b.saw(lab)
        names = [f"{tag}-{i + 1}" for i in range(sinks)]
        for name in names:
            await lab.create_sink(b.receiver.url(name))
        await b.receiver.reset()
        new = [NewEvent(uuid.uuid4(), TENANT, EVENT_NAME, 1, event_body(i)) for i in range(events)]
        await checkpoint(b.admin_dsn)
        db = await DbMeter(b.admin_dsn, lab.database).start()
        routed = await repo.ingest_events(lab.pool, new, timeout=120)  # one statement, one commit
        t0 = time.monotonic()
        total = sum(routed.values())
        meter = b.meter(serve=lambda: lab.pids).start()

        async def delivered() -> int:
            # The receiver is cheap to ask; the database only once everything has arrived.
            arrived = sum([await b.receiver.count(n) for n in names])
            return await lab.count("delivered") if arrived >= total else 0

        done, t_end = await wait_done(delivered, total, timeout=max(120.0, total / 50))
        cpu = meter.stop()
        rss = lab.rss_mb()
        await lab.stop()
        use = await db.stop()
        use.commits -= 1  # the backlog's own commit
    return Drain(total, done, t_end - t0, cpu, rss, use)


async def relay_latency(b: Bench, tag: str = "latency") -> Latency:
    async with relay_lab(b.root, b.admin_dsn, tag, b.overrides) as lab:
        b.saw(lab)
        await lab.create_sink(b.receiver.url(tag))
        return await measure_latency(b, relay_target(lab), tag, lambda: lab.count("pending"))


async def relay_ingest(b: Bench) -> Ingest:
    async with relay_lab(b.root, b.admin_dsn, "ingest", b.overrides) as lab:  # no sinks
        b.saw(lab)
        return await measure_ingest(b, relay_target(lab))


# --- shared measurements ------------------------------------------------------------------------


async def measure_latency(b: Bench, target: Target, name: str, pending: Count) -> Latency:
    """A 1 s warm-up, then ``--rate`` events/s for ``--duration`` s to ``target``, delivered
    to the receiver's hook ``name``; ``target`` is stopped at the end."""
    warm = await fixed_rate(target.url, b.args.rate, 1.0, first_seq=10**9)
    await wait_done(lambda: b.receiver.count(name), warm.accepted, timeout=60, poll=0.2)
    await b.receiver.reset()
    await checkpoint(b.admin_dsn)
    db = await DbMeter(b.admin_dsn, target.database).start() if target.database else None
    meter = b.meter(**{target.label: target.pids}).start()
    load = await fixed_rate(target.url, b.args.rate, b.args.duration)
    left = await pending()
    cpu = meter.stop()
    await wait_done(lambda: b.receiver.count(name), load.accepted, timeout=120, poll=0.2)
    stats = await b.receiver.stats(name, latencies=True)
    rss = target.rss_mb()
    await target.stop()
    use = await db.stop() if db else None
    delivered, duplicates = stats["count"], stats["duplicates"]
    return Latency(load, stats["latencies_ms"], delivered, duplicates, left, cpu, rss, use)


async def measure_ingest(b: Bench, target: Target) -> Ingest:
    """wrk: a 2 s warm-up, then the measured run; ``target`` is stopped at the end."""
    a = b.args
    await run_wrk(
        b.root, target.url, INGEST_HEADERS, seconds=2, connections=a.connections, threads=a.threads
    )
    await checkpoint(b.admin_dsn)
    db = await DbMeter(b.admin_dsn, target.database).start() if target.database else None
    result = await run_wrk(
        b.root,
        target.url,
        INGEST_HEADERS,
        seconds=a.wrk_seconds,
        connections=a.connections,
        threads=a.threads,
        meter=b.meter(**{target.label: target.pids}),
    )
    rss = target.rss_mb()
    await target.stop()
    use = await db.stop() if db else None
    detail = f"latency {result.latency}; non-2xx {result.non_2xx}"
    if result.socket_errors:
        detail += f"; socket errors {result.socket_errors}"
    return Ingest(result.requests, result.requests_per_second, detail, result.cpu, rss, use)


# --- the peer and the bare handler --------------------------------------------------------------


@dataclass
class PeerLab:
    helper: Helper
    dsn: str
    database: str
    conn: asyncpg.Connection  # the benchmark's own, to count what is left

    async def stop(self) -> None:
        """Close our connection and stop the peer (idempotent)."""
        if not self.conn.is_closed():
            await self.conn.close()
        await asyncio.to_thread(self.helper.stop)

    def target(self) -> Target:
        url = f"{self.helper.base_url}/v1/air/events"
        pid = self.helper.pid
        return Target("peer", url, lambda: [pid], self.helper.rss_mb, self.stop, self.database)


@contextlib.asynccontextmanager
async def peer_lab(b: Bench, tag: str, *, consume: bool) -> AsyncIterator[PeerLab]:
    """The peer process on a new database with pgqueuer installed."""
    database = f"bench_peer_{tag}"
    dsn = await create_database(b.admin_dsn, database)
    await peer.install(dsn)
    args = ["--dsn", dsn, "--url", b.receiver.url(f"peer-{tag}"), "--loop", await b.relay_loop()]
    if not consume:
        args.append("--no-consume")
    helper = Helper(b.root, f"peer-{tag}", "bench.peer_pgqueuer", args)
    lab = PeerLab(helper, dsn, database, await asyncpg.connect(dsn))
    try:
        await helper.start()
        yield lab
    finally:
        await lab.stop()
        await drop_database(b.admin_dsn, database)


async def peer_drain(b: Bench, events: int) -> Drain:
    async with peer_lab(b, "drain", consume=True) as lab:
        name = "peer-drain"
        await b.receiver.reset()
        await checkpoint(b.admin_dsn)
        db = await DbMeter(b.admin_dsn, lab.database).start()
        await peer.enqueue(lab.conn, [event_body(i) for i in range(events)])
        t0 = time.monotonic()
        meter = b.meter(peer=lambda: [lab.helper.pid]).start()

        async def finished() -> int:
            arrived = await b.receiver.count(name)
            return events - await peer.queued(lab.conn) if arrived >= events else 0

        done, t_end = await wait_done(finished, events, timeout=max(120.0, events / 50))
        cpu = meter.stop()
        rss = lab.helper.rss_mb()
        await lab.stop()
        use = await db.stop()
        use.commits -= 1  # the backlog's own commit
        return Drain(events, done, t_end - t0, cpu, rss, use)


async def peer_latency(b: Bench) -> Latency:
    async with peer_lab(b, "latency", consume=True) as lab:
        return await measure_latency(b, lab.target(), "peer-latency", lambda: peer.queued(lab.conn))


async def peer_ingest(b: Bench) -> Ingest:
    async with peer_lab(b, "ingest", consume=False) as lab:
        return await measure_ingest(b, lab.target())


async def bare_ingest(b: Bench) -> Ingest:
    helper = Helper(b.root, "bare", "bench.bare", ["--loop", await b.relay_loop()])
    await helper.start()

    async def stop() -> None:
        await asyncio.to_thread(helper.stop)

    pid = helper.pid
    url = f"{helper.base_url}/v1/air/events"
    try:
        return await measure_ingest(
            b, Target("bare", url, lambda: [pid], helper.rss_mb, stop, None)
        )
    finally:
        helper.stop()


async def receiver_capacity(b: Bench) -> float | None:
    """wrk straight at the receiver: the most it could take (it must not be the bound)."""
    if shutil.which("wrk") is None:
        return None
    url = b.receiver.url("capacity")
    result = await run_wrk(b.root, url, {}, seconds=3, connections=64, threads=b.args.threads)
    await b.receiver.reset()
    return result.requests_per_second
