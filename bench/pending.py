"""``bench/compare.py --pending N``: does a large backlog stay cheap?

One ``air-relay serve`` with two Webhook sinks: a *down* one (its receiver hook answers 503;
it takes only ``CaseCreatedEvent``) and a *healthy* one (``TaskProcessingFailedEvent``). In
order:

1. the drain rate of an ordinary ``--events`` backlog, the figure to compare with at the end;
2. ingest→sink latency to the healthy sink at ``--rate`` for ``--duration`` s, and serve's RSS;
3. N pending deliveries to the down sink, written straight into the relay's tables with
   ``INSERT ... SELECT generate_series`` (events, deliveries and one failed attempt each, as
   a sink outage leaves them: claimed once, failed, backed off and due from
   ``--pending-delay`` s on, spread over an hour), then ANALYZE;
4. EXPLAIN ANALYZE of the claim (rolled back), with and without the down sink skipped, and
   EXPLAIN of the backlog wake-up;
5. the same latency measurement again, with the N rows in place;
6. the sink returns: its hook answers 200 and the oldest delivery's retry is made due (as the
   schedule eventually would); the relay's success after a failure wakes the backlog, and the
   deliveries that reach the receiver in ``--sample`` s give the drain rate.

The SQL of step 3 writes the relay's schema directly: keep it in step with
src/air_relay/db/migrations/ (and the claim's parameters with repository.claim_deliveries).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from air_relay.db.queries import QUERIES
from air_relay.delivery.claim import WAKE_CHUNK
from bench.kit import EVENT_NAME, OTHER_EVENT_NAME, RelayLab, pct, pct_text, relay_lab
from bench.phases import Bench, Drain, Latency, Target, measure_latency, relay_drain
from tests.fault.relay import RssSampler
from tests.support import TENANT

DOWN, HEALTHY = "pending-down", "pending-healthy"
BATCH = 100_000

INSERT_EVENTS = """
INSERT INTO events (id, tenant_id, event_name, organization_id, body, received_at)
SELECT md5('bench-event-' || g)::uuid, $1::text, $2::text, '1'::jsonb,
       convert_to(format('{"eventName":"%s","organizationId":1,"data":{"id":"seq:%s",'
                         '"name":"bench case","ownerUser":"bench"}}', $2::text, g), 'UTF8'),
       $3::timestamptz + g * interval '10 ms'
FROM generate_series($4::int, $5::int) AS g
"""

INSERT_DELIVERIES = """
INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status, attempts,
                        claims, next_attempt_at, last_error, created_at, updated_at)
SELECT md5('bench-delivery-' || g)::uuid, md5('bench-event-' || g)::uuid, $1::uuid, $2::text,
       'Webhook', 'pending', 1, 1,
       $3::timestamptz + make_interval(secs => $4::float8 * g / $5::int),
       'http_503', $6::timestamptz + g * interval '10 ms', $7::timestamptz
FROM generate_series($8::int, $9::int) AS g
"""

INSERT_ATTEMPTS = """
INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name, organization_id,
                               event_sink_id, event_sink_type, attempt, outcome, status_code,
                               error, response_body, duration_ms, next_attempt_at, created_at)
SELECT md5('bench-delivery-' || g)::uuid, $1::text, md5('bench-event-' || g)::uuid, $2::text,
       '1'::jsonb, $3::uuid, 'Webhook', 1, 'failure', 503, 'http_503', 'unavailable', 5,
       $4::timestamptz + make_interval(secs => $5::float8 * g / $6::int), $7::timestamptz
FROM generate_series($8::int, $9::int) AS g
"""

# The oldest delivery's retry comes due: with the hook answering again, its success (attempt
# 2, after a failure) is what tells the relay that the sink is back.
MAKE_OLDEST_DUE = (
    "UPDATE deliveries SET next_attempt_at = now() WHERE id = md5('bench-delivery-1')::uuid"
)

SPREAD_SECONDS = 3600.0


async def insert_pending(dsn: str, sink_id: str, n: int, delay: float) -> float:
    """``n`` backed-off deliveries to ``sink_id``, each with its event and failed attempt;
    the seconds it took."""
    started = time.monotonic()
    now = datetime.now(UTC)
    created0 = now - timedelta(seconds=120 + n * 0.01)  # arrived 10 ms apart, before the run
    failed_at = now - timedelta(seconds=61)  # the last claim of every one failed then
    due0 = now + timedelta(seconds=delay)
    sink = uuid.UUID(sink_id)
    conn = await asyncpg.connect(dsn)
    try:
        for first in range(1, n + 1, BATCH):
            last = min(first + BATCH - 1, n)
            async with conn.transaction():
                await conn.execute(INSERT_EVENTS, TENANT, OTHER_EVENT_NAME, created0, first, last)
                await conn.execute(
                    INSERT_DELIVERIES,
                    *(sink, TENANT, due0, SPREAD_SECONDS, n, created0, failed_at, first, last),
                )
                await conn.execute(
                    INSERT_ATTEMPTS,
                    *(TENANT, OTHER_EVENT_NAME, sink, due0, SPREAD_SECONDS, n, failed_at),
                    *(first, last),
                )
            print(f"    {last:,} of {n:,} pending written", flush=True)
        await conn.execute("ANALYZE events, deliveries, delivery_attempts")
    finally:
        await conn.close()
    return time.monotonic() - started


async def explain(dsn: str, sink_id: str, *, wake: bool = True) -> list[tuple[str, list[str]]]:
    """The claim's plan (executed and rolled back) with no sink running claims and with the
    down sink at its share of the workers (as the dispatcher claims once it holds them), and
    the backlog wake-up's plan (not executed)."""
    sink = uuid.UUID(sink_id)
    claim = QUERIES["claim_deliveries"]
    # (title, sinks running claims, their counts, the per-sink share)
    claim_args: list[tuple[str, list[uuid.UUID], list[int], int]] = [
        ("claim, no sink running claims", [], [], 8),
        ("claim, the down sink at its share", [sink], [8], 8),  # share of claims waiting
    ]
    plans: list[tuple[str, list[str]]] = []
    conn = await asyncpg.connect(dsn)
    try:
        for title, running, counts, share in claim_args:
            tr = conn.transaction()
            await tr.start()
            try:
                rows = await conn.fetch(
                    f"EXPLAIN (ANALYZE, BUFFERS) {claim}",
                    ["Webhook"],
                    32,
                    30.0,
                    "bench",
                    running,
                    share,
                    counts,
                    [],  # held: none
                    True,  # spill what is left to sinks not failing...
                    running,  # ...which the down sink, running its share, is
                    32,  # spill at most: every sender idle
                )
            finally:
                await tr.rollback()
            plans.append((title, [r[0] for r in rows]))
        wake_query = QUERIES.get("wake_sink_backlog")
        if wake and wake_query is not None:
            recovered_at = await conn.fetchval("SELECT now()")
            rows = await conn.fetch(f"EXPLAIN {wake_query}", sink, recovered_at, WAKE_CHUNK)
            plans.append(("backlog wake-up (not executed)", [r[0] for r in rows]))
    finally:
        await conn.close()
    return plans


def plan_summary(plan: list[str]) -> str:
    """The indexes a plan uses, its sequential scans and its execution time, in one line."""
    text = "\n".join(plan)
    used = re.findall(r"Index (?:Only )?Scan (?:Backward )?using (\w+)", text)
    used += re.findall(r"Bitmap Index Scan on (\w+)", text)
    indexes = sorted(set(used))
    seq = sorted(set(re.findall(r"Seq Scan on (\w+)", text)))
    took = re.search(r"Execution Time: ([\d.]+ ms)", text)
    parts = [f"indexes {', '.join(indexes) or 'none'}", f"seq scans {', '.join(seq) or 'none'}"]
    if took:
        parts.append(f"executed in {took.group(1)}")
    return "; ".join(parts)


@dataclass
class Recovery:
    seconds: float
    delivered: int  # reached the receiver in the window
    recorded: int  # delivered according to the database at the end of the window
    first_after: float | None  # seconds from the return to the first delivery
    rate: float  # deliveries/s from the first delivery to the end of the window
    wakes: int
    woken: int
    cpu: dict[str, float]


async def sink_returns(b: Bench, lab: RelayLab, sink_id: str, seconds: float) -> Recovery:
    await b.receiver.set_status(DOWN, 200)
    wall0 = time.time()
    await lab.pool.execute(MAKE_OLDEST_DUE)
    meter = b.meter(serve=lambda: lab.pids).start()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
    cpu = meter.stop()
    wall1 = time.time()
    stats = await b.receiver.stats(DOWN)
    recorded = await lab.count("delivered", sink_id)
    first = stats["first"]
    rate = stats["count"] / (wall1 - first) if first else 0.0
    wakes = lab.relays[0].events("sink_recovered")
    return Recovery(
        seconds=wall1 - wall0,
        delivered=stats["count"],
        recorded=recorded,
        first_after=(first - wall0) if first else None,
        rate=rate,
        wakes=len(wakes),
        woken=sum(int(w.get("woken", 0)) for w in wakes),
        cpu=cpu,
    )


async def healthy_latency(b: Bench, lab: RelayLab, healthy: str) -> Latency:
    async def keep_running() -> None:
        pass  # the mode goes on with the same serve

    target = Target("serve", lab.ingest_url, lambda: lab.pids, lab.rss_mb, keep_running, None)
    return await measure_latency(b, target, HEALTHY, lambda: lab.count("pending", healthy))


def report(
    b: Bench,
    n: int,
    baseline: Drain,
    lat: tuple[Latency, Latency],
    rss: tuple[float | None, float | None],
    recovery: Recovery,
) -> None:
    a = b.args
    before, during = lat

    def row(label: str, x: Any, y: Any) -> None:
        print(f"| {label} | {x} | {y} |")

    print(f"\n| figure | before | with {n:,} pending to a down sink |")
    print("|---|---:|---:|")
    row("serve RSS MB, highest (with pending: latency and drain)", *(f"{r or 0:.0f}" for r in rss))
    at = f"healthy sink, {a.rate:,.0f} events/s for {a.duration:g} s"
    for p in (50, 99):
        row(
            f"ingest→sink latency p{p} ms, {at}",
            pct_text(before.latencies_ms, p),
            pct_text(during.latencies_ms, p),
        )
    row("healthy deliveries pending when sending stopped", before.pending_at_end,
        during.pending_at_end)  # fmt: skip
    row(
        "drain, deliveries/s",
        f"{baseline.rate:,.0f} ({baseline.done:,}-event backlog)",
        f"{recovery.rate:,.0f} (sink returned, sampled {recovery.seconds:.0f} s)",
    )
    ratio = recovery.rate / baseline.rate if baseline.rate else 0.0
    first = "never" if recovery.first_after is None else f"{recovery.first_after:.1f} s"
    print(
        f"\nAfter the sink returned: first delivery after {first}; {recovery.delivered:,}"
        f" delivered in {recovery.seconds:.0f} s ({recovery.recorded:,} recorded as delivered);"
        f" drain {ratio:.2f}x the {baseline.done:,}-event figure; {recovery.wakes}"
        f" sink_recovered log lines woke {recovery.woken:,} deliveries in all."
    )


async def pending_mode(b: Bench, n: int) -> None:
    a = b.args
    print(f"pending: {n:,} deliveries to a down sink (baseline drain: {a.events:,})", flush=True)
    baseline = await relay_drain(b, events=a.events, tag="pending-baseline")
    print(f"  [baseline drain] {baseline.rate:,.0f} deliveries/s", flush=True)
    b.note("baseline drain", baseline.cpu)
    async with relay_lab(b.root, b.admin_dsn, "pending", b.overrides) as lab:
        b.saw(lab)
        down = await lab.create_sink(b.receiver.url(DOWN), events=[OTHER_EVENT_NAME])
        healthy = await lab.create_sink(b.receiver.url(HEALTHY), events=[EVENT_NAME])
        await b.receiver.set_status(DOWN, 503)
        sampler = RssSampler(lab.relays).start()
        try:
            t0 = time.monotonic()
            before = await healthy_latency(b, lab, healthy)
            rss_before = sampler.max_mb(since=t0)
            print(f"  [latency before] p99 {pct(before.latencies_ms, 99) or 0:.1f} ms", flush=True)
            b.note("latency before", before.cpu)
            took = await insert_pending(lab.dsn, down, n, a.pending_delay)
            print(f"  [insert] {n:,} pending deliveries in {took:.0f} s", flush=True)
            for title, plan in await explain(lab.dsn, down):
                print(f"\n  EXPLAIN {title}: {plan_summary(plan)}")
                print("\n".join(f"    {line}" for line in plan))
            t1 = time.monotonic()
            during = await healthy_latency(b, lab, healthy)
            print(f"\n  [latency with pending] p99 {pct(during.latencies_ms, 99) or 0:.1f} ms")
            b.note("latency with pending", during.cpu)
            recovery = await sink_returns(b, lab, down, a.sample)
            b.note("sink returned", recovery.cpu)
            # Now the backlog is due: what one claim costs while it drains.
            for title, plan in await explain(lab.dsn, down, wake=False):
                print(f"\n  EXPLAIN {title}, the backlog due: {plan_summary(plan)}")
                print("\n".join(f"    {line}" for line in plan))
            rss_during = sampler.max_mb(since=t1)  # the latency with pending, and the drain
        finally:
            await sampler.stop()
        report(b, n, baseline, (before, during), (rss_before, rss_during), recovery)
