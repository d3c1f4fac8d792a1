"""The fault scenarios: plain coroutines, each taking a lab and a size, that run real
``air-relay serve`` processes against a PostgreSQL they crash and restart, assert what the
delivery guarantees promise, and return their figures. tests/fault/test_faults.py runs them in
pytest (short sizes, long ones with --run-slow); bench/faults.py runs them by name."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from air_relay.db.migrate import available_migrations
from tests.fault.figures import Figures, first_delivery_order, inversions, longest_in_order
from tests.fault.lab import FaultLab, delivery_states, eventually, query
from tests.fault.load import LoadResult, send_events
from tests.fault.postgres import PgServer
from tests.fault.relay import Relay, RssSampler, create_webhook_sink
from tests.fault.sink import CountingSink, Reply

# Lasts ≈ 14 s: twice the short sink outage, so nothing of its backlog can go dead.
SHORT_SCHEDULE = [0.2, 0.5, 1, 1, 1, 2, 2, 2, 2, 2]


# A schedule long enough for a several-minute outage (sum ≈ 10 min) but quick at the start.
LONG_SCHEDULE = [0.5, 1, 2, 4, 8, 15, 30, 30, 30, 30, 60, 60, 60, 60, 60, 60]


Sizes = dict[str, dict[str, Any]]


async def started(relay: Relay) -> Relay:
    relay.start()
    await relay.wait_ready()
    return relay


@dataclass
class Rig:
    pg: PgServer
    sink: CountingSink
    relay: Relay
    rss: RssSampler
    sink_id: str


async def setup(lab: FaultLab, **overrides: Any) -> Rig:
    """A running database, a listening sink, one ready relay with a Webhook sink to it."""
    pg = await lab.postgres()
    sink = await lab.sink()
    relay = await started(lab.relay("serve", pg.dsn, **overrides))
    sink_id = await create_webhook_sink(relay, sink.url)
    return Rig(pg, sink, relay, lab.sampler([relay]), sink_id)


async def assert_accepted_are_stored(load: LoadResult, dsn: str) -> None:
    """Every 202's event_id is a committed row: the 202 came after the commit."""
    stored = {str(r["id"]) for r in await query(dsn, "SELECT id FROM events")}
    lost = [s for s in load.accepted if load.answers[s].event_id not in stored]
    assert not lost, f"{len(lost)} events answered 202 are not in the database: {lost[:10]}"


def assert_no_error_logs(*relays: Relay) -> None:
    """No error-level line: no 500, no crashed task, no abandoned completion."""
    errors = [r for relay in relays for r in relay.records() if r.get("level") == "error"]
    assert not errors, f"{len(errors)} error lines, first: {errors[0]}"


async def wait_states(
    dsn: str, expected: dict[str, int], sink_id: str | None = None, timeout: float = 15
) -> None:
    """The rows catch up with the sink: each success is recorded just after its 2xx."""
    deadline = time.monotonic() + timeout
    while (states := await delivery_states(dsn, sink_id)) != expected:
        assert time.monotonic() < deadline, f"deliveries {states}, expected {expected}"
        await asyncio.sleep(0.1)


async def all_delivered(dsn: str) -> None:
    """Every committed event's delivery ends delivered: none stuck pending, none dead."""
    await wait_states(dsn, {"delivered": await count(dsn, "SELECT count(*) FROM events")})


async def count(dsn: str, sql: str) -> int:
    n: int = (await query(dsn, sql))[0][0]
    return n


def fraction(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


async def kill9_under_load(
    lab: FaultLab, *, events: int = 400, rate: float = 250, kills: int = 1
) -> Figures:
    """kill -9 serve while events pour in (``kills`` times), start it again each time: every
    202'd event is delivered (duplicates are allowed: at-least-once)."""
    t0 = time.monotonic()
    rig = await setup(lab)
    relay, load = rig.relay, LoadResult()
    sending = asyncio.create_task(
        send_events([relay.base_url], range(events), lab.run, into=load, rate=rate)
    )
    for k in range(1, kills + 1):
        await eventually(lambda k=k: len(load.answers) >= events * k / (kills + 1), 120)
        relay.kill9()
        assert relay.proc is not None and relay.proc.returncode == -9
        relay.start()  # "serve B": a new process on the same port and database
        await relay.wait_ready()
    await sending
    load.check()
    assert load.errors, "the kill came after the load: nothing was in flight"
    await assert_accepted_are_stored(load, rig.pg.dsn)
    await rig.sink.wait_delivered(load.accepted, timeout=60 + events / 100)
    await all_delivered(rig.pg.dsn)
    assert_no_error_logs(relay)
    taken_over = await count(rig.pg.dsn, "SELECT count(*) FROM deliveries WHERE claims > 1")
    return Figures.of(
        f"kill -9 under load (x{kills})",
        load,
        rig.sink,
        started=t0,
        rss=rig.rss,
        notes=f"{taken_over} deliveries claimed again after a kill",
    )


KILL9_SIZES: Sizes = {"short": {"events": 400}, "long": {"events": 4000, "rate": 400, "kills": 3}}


async def database_crash_under_load(
    lab: FaultLab,
    *,
    events: int = 600,
    rate: float = 150,
    outage: float = 2.0,
    crashes: int = 2,
    modes: tuple[str, ...] = ("immediate", "fast"),
    spool: bool = True,
) -> Figures:
    """Stop PostgreSQL while events pour in, ``outage`` seconds down, start it again, ``crashes``
    times, the stop modes taken in turn from ``modes`` (``immediate``: a crash, every backend
    killed; ``fast``: a restart, sessions terminated with an admin-shutdown error): ingest
    spools and answers 202 (with ``spool`` false: 503 + Retry-After, /readyz 503), never a
    500; the process stays up, the workers back off, and every 202'd event is delivered once
    the database is back."""
    t0 = time.monotonic()
    rig = await setup(lab, spool={"enabled": spool})
    relay, load = rig.relay, LoadResult()
    sending = asyncio.create_task(
        send_events([relay.base_url], range(events), lab.run, into=load, rate=rate)
    )
    ready_while_down: list[int | None] = []
    restarts: list[float] = []
    for k in range(1, crashes + 1):
        share = (2 * k - 1) / (2 * crashes + 1)
        await eventually(lambda share=share: len(load.answers) >= events * share, 120)
        await asyncio.to_thread(rig.pg.crash, modes[(k - 1) % len(modes)])
        await asyncio.sleep(outage / 2)
        ready_while_down.append(await relay.readyz())
        await asyncio.sleep(outage / 2)
        assert relay.alive, "serve died with its database"
        await asyncio.to_thread(rig.pg.start)
        restarts.append(time.monotonic())
        await relay.wait_ready(timeout=60)
    await sending
    load.check()
    assert relay.alive and len(relay.logs) == 1, "serve must ride the outage out, not restart"
    if spool:
        assert ready_while_down == [200] * crashes
        assert not load.rejected, f"{len(load.rejected)} events refused though spooled"
        assert relay.events("spool_started"), "no request met the outage"
    else:
        assert ready_while_down == [503] * crashes
        assert load.rejected, "no request met the outage"
    # The workers back off while the database is away (no tight loop of failing claims).
    failed_claims = relay.events("claim_failed")
    assert failed_claims, "the dispatcher never noticed the outage"
    assert len(failed_claims) <= crashes * (2 + outage / 0.5), len(failed_claims)
    assert max(f["retry_in"] for f in failed_claims) <= 10
    await rig.sink.wait_delivered(load.accepted, timeout=60 + events / 100)
    await assert_accepted_are_stored(load, rig.pg.dsn)
    await all_delivered(rig.pg.dsn)
    assert_no_error_logs(relay)
    spooled = sum(e["events"] for e in relay.events("spool_drained"))
    assert not load.errors, [load.answers[s] for s in load.errors[:3]]
    # How soon ingest took events again once the database was back.
    back = [
        min((a.at for a in load.answers.values() if a.status == 202 and a.at > t), default=t) - t
        for t in restarts
    ]
    return Figures.of(
        f"database {'+'.join(modes[i % len(modes)] for i in range(crashes))} stop under load "
        f"({outage:g} s down each{'' if spool else ', spool off'})",
        load,
        rig.sink,
        started=t0,
        rss=rig.rss,
        notes=(
            f"/readyz {ready_while_down[0]} while down; {spooled} events spooled; "
            f"first 202 {max(back):.2f} s after pg start; "
            f"{len(failed_claims)} failed claims (backing off)"
        ),
    )


DB_CRASH_SIZES: Sizes = {
    "short": {"events": 1000, "rate": 200, "outage": 1.5},
    "long": {"events": 12000, "rate": 200, "outage": 10.0, "crashes": 4},
}
DB_CRASH_NO_SPOOL_SIZES: Sizes = {
    "short": {"events": 1000, "rate": 200, "outage": 1.5, "spool": False},
    "long": {"events": 12000, "rate": 200, "outage": 10.0, "crashes": 4, "spool": False},
}


async def assert_outbox_once(load: LoadResult, dsn: str) -> None:
    """Every 202'd event is in the outbox once, under the id its 202 named, with one delivery
    (one sink): a drain repeated after a crash duplicated nothing. Beyond those, only
    requests that got no answer may have been stored: a kill -9 can land after an event's
    commit (or spool fsync) and before its 202 reached the client."""
    ids = [load.answers[s].event_id for s in load.accepted]
    rows = await query(
        dsn,
        "SELECT e.id::text AS id, count(d.id) AS n FROM events e"
        " LEFT JOIN deliveries d ON d.event_id = e.id GROUP BY e.id",
    )
    stored = {r["id"]: r["n"] for r in rows}
    missing = [i for i in ids if i not in stored]
    assert not missing, f"{len(missing)} events answered 202 are not in the outbox"
    unanswered = sum(1 for a in load.answers.values() if a.status is None)
    assert len(ids) <= len(stored) <= len(ids) + unanswered, (
        f"{len(stored)} events stored for {len(ids)} accepted and {unanswered} unanswered"
    )
    twice = [i for i, n in stored.items() if n != 1]
    assert not twice, f"{len(twice)} events with other than one delivery: {twice[:5]}"


def arrival_order(load: LoadResult, sink: CountingSink, window: int) -> tuple[int, float]:
    """Events delivered out of arrival order (beyond swaps among ``window`` parallel sends),
    and the share of pairs swapped."""
    order = first_delivery_order(sink)
    reference = load.accept_order()
    total = len(reference)
    displaced = total - longest_in_order(order, reference, window=window)
    return displaced, fraction(inversions(order, reference), total * (total - 1) // 2)


async def database_outage_spooled(
    lab: FaultLab,
    *,
    rate: float = 200,
    before: float = 2.0,
    outage: float = 3.0,
    after: float = 2.0,
) -> Figures:
    """PostgreSQL stopped for ``outage`` seconds under a steady ingest of ``rate`` events/s:
    every request is answered 202 (spooled while the database is away), every event is
    delivered once the database is back, once, and in arrival order (up to the swaps among
    parallel sends)."""
    t0 = time.monotonic()
    rig = await setup(lab)
    relay, load = rig.relay, LoadResult()
    events = round(rate * (before + outage + after))
    sending = asyncio.create_task(
        send_events([relay.base_url], range(events), lab.run, into=load, rate=rate)
    )
    await asyncio.sleep(before)
    await asyncio.to_thread(rig.pg.crash, "fast")
    stopped = time.monotonic()
    await asyncio.sleep(outage / 2)
    ready = await relay.readyz()
    await asyncio.sleep(outage / 2)
    await asyncio.to_thread(rig.pg.start)
    restarted = time.monotonic()
    await sending
    load.check()
    assert ready == 200, "/readyz must stay 200 while spooling"
    assert len(load.accepted) == events, (
        f"{len(load.rejected)} answered 503, {len(load.errors)} not answered, of {events}: "
        f"{[load.answers[s] for s in load.errors[:3]]}"
    )
    spooled_during = [s for s in load.accepted if stopped <= load.answers[s].at <= restarted]
    await rig.sink.wait_delivered(load.accepted, timeout=60 + events / 100)
    drained = relay.events("spool_drained")
    assert drained, "the spool was never drained"
    await all_delivered(rig.pg.dsn)
    await assert_outbox_once(load, rig.pg.dsn)
    assert rig.sink.duplicates() == 0
    concurrency = relay.config["delivery"]["concurrency"]
    displaced, swapped = arrival_order(load, rig.sink, 4 * concurrency)
    assert displaced <= 4 * concurrency + events // 50, f"{displaced} out of arrival order"
    assert_no_error_logs(relay)
    spooled = sum(e["events"] for e in drained)
    return Figures.of(
        f"database stopped {outage:g} s under {rate:g} events/s (spool)",
        load,
        rig.sink,
        started=t0,
        rss=rig.rss,
        notes=(
            f"{spooled} events spooled and drained ({len(spooled_during)} answered while down); "
            f"drained in {max(e['seconds'] for e in drained):.2f} s; out of arrival order: "
            f"{displaced} events, {swapped:.1%} of pairs; /readyz 200 while down"
        ),
    )


SPOOL_OUTAGE_SIZES: Sizes = {
    "short": {},
    "long": {"rate": 200, "before": 10.0, "outage": 30.0, "after": 10.0},
}


async def kill9_while_spooling(
    lab: FaultLab, *, events: int = 600, rate: float = 200, drain_kill: bool = True
) -> Figures:
    """The database is stopped, events are spooled, serve is killed (kill -9) in the middle of
    them; the database comes back and serve starts again: it drains the spool its predecessor
    left (with ``drain_kill``, it is killed once more as soon as it is ready, in the drain,
    and started again). Every event that got a 202 is delivered, none is twice in the
    outbox."""
    t0 = time.monotonic()
    rig = await setup(lab)
    relay, load = rig.relay, LoadResult()
    await asyncio.to_thread(rig.pg.crash, "fast")
    sending = asyncio.create_task(
        send_events([relay.base_url], range(events), lab.run, into=load, rate=rate)
    )
    await eventually(lambda: len(load.answers) >= events / 2, 120)
    relay.kill9()
    await sending
    load.check()
    assert load.accepted, "nothing was spooled before the kill"
    assert not load.rejected
    await asyncio.to_thread(rig.pg.start)
    relay.start()
    await relay.wait_ready()
    found = relay.events("spool_found", 2)
    assert found and found[0]["events"] >= len(load.accepted), found
    if drain_kill:
        relay.kill9()
        relay.start()
        await relay.wait_ready()
    await rig.sink.wait_delivered(load.accepted, timeout=60 + events / 100)
    await all_delivered(rig.pg.dsn)
    await assert_outbox_once(load, rig.pg.dsn)
    assert_no_error_logs(relay)
    return Figures.of(
        f"kill -9 while spooling{' and in the drain' if drain_kill else ''}",
        load,
        rig.sink,
        started=t0,
        notes=(
            f"{len(load.accepted)} spooled before the kill, {len(load.errors)} cut by it; "
            f"spool found at restart: {found[0]['events']} events"
        ),
    )


KILL9_SPOOL_SIZES: Sizes = {"short": {}, "long": {"events": 6000, "rate": 400}}


async def torn_spool_record(lab: FaultLab, *, events: int = 50) -> Figures:
    """A spool whose last record is torn (the segment cut mid-record, as a crash during the
    write leaves it): the intact records are drained and delivered, the torn one is reported
    at error level and never replayed."""
    t0 = time.monotonic()
    rig = await setup(lab)
    relay = rig.relay
    await asyncio.to_thread(rig.pg.crash, "fast")
    load = await send_events([relay.base_url], range(events), lab.run, concurrency=1)
    assert len(load.accepted) == events
    relay.kill9()
    segments = sorted((lab.root / f"{relay.name}.state" / "spool").glob("*.seg"))
    assert segments, "nothing was spooled"
    last = segments[-1]
    last.write_bytes(last.read_bytes()[:-7])  # cut inside the last record
    await asyncio.to_thread(rig.pg.start)
    relay.start()
    await relay.wait_ready()
    intact = [s for s in load.accept_order()][:-1]  # one at a time: the last one is torn
    await rig.sink.wait_delivered(intact, timeout=30)
    await all_delivered(rig.pg.dsn)
    (corrupt,) = relay.events("spool_record_corrupt")
    assert corrupt["level"] == "error", corrupt
    assert await count(rig.pg.dsn, "SELECT count(*) FROM events") == events - 1
    assert load.accept_order()[-1] not in rig.sink.delivered()
    assert rig.sink.duplicates() == 0
    return Figures.of(
        "torn last spool record",
        load,
        rig.sink,
        started=t0,
        notes=f"{len(intact)} intact records drained; the torn one reported ({corrupt['problem']})",
    )


async def spool_full(lab: FaultLab, *, events: int = 100, max_bytes: int = 20_000) -> Figures:
    """The database is away and the spool fills up: ingest answers 202 while the events fit,
    then 503 + Retry-After, never a 202 it could not make durable; the spooled ones are
    delivered once the database is back."""
    t0 = time.monotonic()
    rig = await setup(lab, spool={"max_bytes": max_bytes})
    relay = rig.relay
    await asyncio.to_thread(rig.pg.crash, "fast")
    load = await send_events([relay.base_url], range(events), lab.run, concurrency=1)
    load.check()
    assert load.accepted and load.rejected, (len(load.accepted), len(load.rejected))
    assert max(load.accepted) < min(load.rejected), "a 202 after the spool was full"
    assert len(relay.events("event_not_spooled")) == len(load.rejected)
    await asyncio.to_thread(rig.pg.start)
    await rig.sink.wait_delivered(load.accepted, timeout=30)
    await all_delivered(rig.pg.dsn)
    await assert_outbox_once(load, rig.pg.dsn)
    assert_no_error_logs(relay)
    return Figures.of(
        f"spool full ({max_bytes} bytes) while the database is away",
        load,
        rig.sink,
        started=t0,
        notes=f"{len(load.accepted)} spooled, then 503",
    )


async def database_down_at_startup(
    lab: FaultLab, *, events: int = 50, down: float = 3.0
) -> Figures:
    """serve started before its database: it stays up, says why it waits, and serves once
    the database is there."""
    t0 = time.monotonic()
    pg = await lab.postgres(start=False)
    sink = await lab.sink()
    relay = lab.relay("serve", pg.dsn)
    relay.start()
    await asyncio.sleep(down)
    assert relay.alive, relay.tail()
    waits = relay.events("database_unavailable")
    assert waits, f"no log line says the database is awaited:\n{relay.tail()}"
    assert waits[0]["level"] == "warning" and waits[0]["retry_in"] > 0, waits[0]
    assert str(pg.port) in waits[-1]["detail"], waits[-1]  # names what it cannot reach
    assert await relay.readyz() is None  # not listening before it can serve
    await asyncio.to_thread(pg.start)
    ready_in = await relay.wait_ready(timeout=30)
    await create_webhook_sink(relay, sink.url)
    load = await send_events([relay.base_url], range(events), lab.run)
    load.check()
    assert len(load.accepted) == events
    await sink.wait_delivered(load.accepted, timeout=30)
    assert sink.duplicates() == 0
    assert_no_error_logs(relay)
    return Figures.of(
        f"database down at start-up ({down:g} s)",
        load,
        sink,
        started=t0,
        notes=f"{len(waits)} database_unavailable lines; ready {ready_in:.1f} s after pg start",
    )


DB_DOWN_SIZES: Sizes = {"short": {}, "long": {"down": 30.0}}


@dataclass
class ScheduleCheck:
    claim_gaps: int  # claim-to-claim delays checked against the schedule
    early: int  # attempts that started before the time their predecessor announced


async def check_schedule(dsn: str, schedule: list[float], before: datetime) -> ScheduleCheck:
    """Durable retries follow ``schedule`` (±20 % jitter), and no attempt started earlier than
    its predecessor announced, unless that predecessor failed before ``before`` (when the sink
    recovered, which makes the backlog due at once)."""
    rows = await query(
        dsn,
        "SELECT delivery_id, attempt, created_at, duration_ms, next_attempt_at, outcome"
        " FROM delivery_attempts ORDER BY delivery_id, attempt",
    )
    gaps = early = 0
    previous = None
    for row in rows:
        if previous is not None and previous["delivery_id"] == row["delivery_id"]:
            announced = previous["next_attempt_at"]
            woken = previous["created_at"] < before <= row["created_at"]
            if announced is not None and not woken:
                early += row["created_at"] < announced - timedelta(milliseconds=20)
        previous = row
        if row["outcome"] != "failure" or row["next_attempt_at"] is None or row["attempt"] % 3:
            continue
        # The last attempt of claim k (3 attempts per claim) announces schedule[k - 1].
        ended = row["created_at"] + timedelta(milliseconds=row["duration_ms"])
        gap = (row["next_attempt_at"] - ended).total_seconds()
        step = schedule[row["attempt"] // 3 - 1]
        assert step * 0.8 - 0.1 <= gap <= step * 1.2 + 0.1, (dict(row), step)
        gaps += 1
    return ScheduleCheck(gaps, early)


async def sink_outage(
    lab: FaultLab,
    *,
    events: int = 300,
    rate: float = 100,
    refuse_after: float = 1.0,
    refuse_for: float = 1.5,
    down_after_load: float = 1.5,
    schedule: list[float] | None = None,
    concurrency: int = 8,
    rss_growth_mb: float | None = None,
) -> Figures:
    """The sink answers 503, then refuses connections, then 503 again while events arrive;
    the backlog waits in the database, retries follow the schedule, and when the sink is back
    everything is delivered exactly once, close to the order of arrival, in flat memory. One
    event the sink always answers 500: its retries keep following the schedule through the
    drain (the recovery must not turn them into a tight loop).

    ``concurrency`` is kept below what the retries of the backlog need, as with a real
    backlog (in-claim waits of seconds): the dispatcher is saturated and, when the sink
    returns, most of the backlog is overdue rather than waiting out a backoff.
    """
    t0 = time.monotonic()
    schedule = schedule or SHORT_SCHEDULE
    rig = await setup(
        lab, delivery={"concurrency": concurrency, "retry": {"schedule_seconds": schedule}}
    )
    relay, sink, load = rig.relay, rig.sink, LoadResult()
    healthy = await lab.sink()  # a second sink, up all along, routed the same events
    await create_webhook_sink(relay, healthy.url)
    sink.default = Reply(503)
    poison = events // 2
    sink.for_seq[poison] = Reply(500)
    baseline = relay.rss_kb()
    sending = asyncio.create_task(
        send_events([relay.base_url], range(events), lab.run, into=load, rate=rate)
    )
    await asyncio.sleep(refuse_after)
    await sink.stop_listening()  # connections refused
    await asyncio.sleep(refuse_for)
    await sink.listen()  # 503 again
    await sending
    await asyncio.sleep(down_after_load)
    load.check()
    assert len(load.accepted) == events
    backlog = await delivery_states(rig.pg.dsn, rig.sink_id)
    assert backlog == {"pending": events}, backlog  # all waiting in the database, none dead
    assert not sink.delivered()
    built = time.monotonic()
    recovered_at = datetime.now(UTC)
    sink.default = Reply(200)
    deliverable = [s for s in load.accepted if s != poison]
    await sink.wait_delivered(deliverable, timeout=60 + events / 100)
    drained = time.monotonic()
    await rig.rss.stop()
    assert sink.duplicates() == 0
    await wait_states(rig.pg.dsn, {"delivered": events - 1, "pending": 1}, rig.sink_id)
    checked = await check_schedule(rig.pg.dsn, schedule, recovered_at)
    assert checked.claim_gaps > 0, checked
    assert checked.early == 0, (
        f"{checked.early} retries started before the time their failed predecessor announced, "
        "though that failure came after the sink recovered (retries must follow the schedule)"
    )
    poison_tries = sum(1 for a in sink.requests_for(poison) if a.at > built)
    assert_no_error_logs(relay)
    # Arrival order: claims are ordered (next_attempt_at, created_at) and a recovered sink
    # makes its backlog due at once, so only the claims in flight at the recovery (at most
    # delivery.concurrency) and the reordering among parallel sends may break it.
    order = first_delivery_order(sink)
    reference = [s for s in load.accept_order() if s != poison]
    total = len(reference)
    swapped = fraction(inversions(order, reference), total * (total - 1) // 2)
    displaced = total - longest_in_order(order, reference, window=4 * concurrency)
    assert displaced <= 4 * concurrency + total // 50, (
        f"{displaced} of {total} delivered out of arrival order after the sink recovered "
        f"({swapped:.1%} of pairs swapped; drained in {drained - built:.1f} s)"
    )
    # The healthy sink was served meanwhile (how long after its 202 each event reached it).
    await healthy.wait_delivered(load.accepted, timeout=30)
    first_ok = healthy.first_ok_at()
    lags = sorted(first_ok[s] - load.answers[s].at for s in load.accepted)
    build_mb = rig.rss.max_mb(until=built) or 0.0
    drain_mb = rig.rss.max_mb(since=built) or 0.0
    start_mb = (baseline or 0) / 1024
    if rss_growth_mb is not None:
        grew = max(build_mb, drain_mb) - start_mb
        assert grew < rss_growth_mb, f"RSS grew {grew:.0f} MB with a backlog of {events}"
    return Figures.of(
        f"sink outage ({built - t0 - 1:.0f} s down, backlog {events})",
        load,
        sink,
        started=t0,
        rss=rig.rss,
        notes=(
            f"drained in {drained - built:.1f} s; out of arrival order: {displaced} events, "
            f"{swapped:.1%} of pairs; {checked.claim_gaps} retry gaps on schedule, 0 early; "
            f"the always-500 event sent {poison_tries} times in the drain, still pending; "
            f"RSS MB start {start_mb:.0f} / backlog {build_mb:.0f} / drain {drain_mb:.0f}; "
            f"healthy sink lag p50 {lags[len(lags) // 2]:.2f} s, max {lags[-1]:.2f} s"
        ),
    )


SINK_OUTAGE_SIZES: Sizes = {
    "short": {},
    "long": {
        "events": 20000,
        "rate": 500,
        "refuse_after": 10,
        "refuse_for": 30,
        "down_after_load": 60,
        "schedule": LONG_SCHEDULE,
        "rss_growth_mb": 40,
    },
}


async def several_instances(lab: FaultLab, *, events: int = 400, instances: int = 2) -> Figures:
    """Instances started at the same moment on a fresh database migrate it once between them,
    split the deliveries, and send none twice to a healthy sink."""
    t0 = time.monotonic()
    pg = await lab.postgres()
    sink = await lab.sink()
    first = lab.relay("serve-1", pg.dsn)
    relays = [first] + [lab.twin(first, f"serve-{i}") for i in range(2, instances + 1)]
    for relay in relays:
        relay.start()  # together: concurrent migrations on an empty database
    await asyncio.gather(*(r.wait_ready() for r in relays))
    applied = sorted(e["version"] for r in relays for e in r.events("migration_applied"))
    rows = await query(pg.dsn, "SELECT version FROM air_relay_schema_migrations ORDER BY 1")
    assert applied == [r["version"] for r in rows] == [m.version for m in available_migrations()]
    rss = lab.sampler(relays)
    await create_webhook_sink(first, sink.url)
    load = await send_events([r.base_url for r in relays], range(events), lab.run)
    load.check()
    assert len(load.accepted) == events
    await sink.wait_delivered(load.accepted, timeout=60 + events / 100)
    await asyncio.sleep(1)  # a second send, if any, would come now
    assert sink.duplicates() == 0
    twice = [s for s in load.accepted if len(sink.requests_for(s)) != 1]
    assert not twice, f"sent more than once: {twice[:10]}"
    split = {r.name: len(r.events("delivery_succeeded")) for r in relays}
    assert sum(split.values()) == events
    assert all(split.values()), f"an instance delivered nothing: {split}"
    assert_no_error_logs(*relays)
    return Figures.of(
        f"{instances} instances, one database",
        load,
        sink,
        started=t0,
        rss=rss,
        notes="delivered per instance " + " / ".join(map(str, split.values())),
    )


INSTANCES_SIZES: Sizes = {"short": {}, "long": {"events": 5000, "instances": 3}}


async def sigterm_in_flight(lab: FaultLab, *, events: int = 20, timeout: float = 2.0) -> Figures:
    """SIGTERM while every delivery is being sent: sends that finish within timeout_seconds
    are recorded, the one that hangs is released (not left to its 30 s lease), serve exits 0
    in time; after a restart the released one is delivered at once and nothing twice."""
    t0 = time.monotonic()
    rig = await setup(lab, delivery={"timeout_seconds": timeout, "lease_seconds": 30})
    relay, sink = rig.relay, rig.sink
    sink.default = Reply(200, delay=1.0)  # every send is in flight for a second
    sink.for_seq[0] = Reply(504, delay=60)  # ...and this one hangs
    load = await send_events([relay.base_url], range(events), lab.run)
    assert len(load.accepted) == events
    await sink.wait_arrivals(events, timeout=10)
    relay.sigterm()
    term = time.monotonic()
    await asyncio.sleep(0.3)
    await send_events([relay.base_url], [events], lab.run, into=load)  # stopped accepting
    code = await relay.wait_exit(timeout + 10)
    exit_s = time.monotonic() - term
    load.check()
    assert code == 0, relay.tail()
    assert exit_s <= timeout + 3, f"exit took {exit_s:.1f} s"
    assert load.answers[events].status is None, load.answers[events]
    assert sink.delivered() == set(range(1, events)), "in-flight sends were not finished"
    released = sum(e["count"] for e in relay.events("deliveries_released"))
    assert released == 1, relay.tail()
    sink.for_seq.clear()
    await started(relay)
    restarted = time.monotonic()
    await sink.wait_delivered(load.accepted, timeout=10)  # not after the 30 s lease
    redelivered_in = time.monotonic() - restarted
    assert sink.duplicates() == 0
    assert_no_error_logs(relay)
    return Figures.of(
        "SIGTERM with sends in flight",
        load,
        sink,
        started=t0,
        rss=rig.rss,
        notes=(
            f"exit 0 after {exit_s:.1f} s (timeout_seconds {timeout:g}); {released} released, "
            f"re-sent {redelivered_in:.1f} s after restart"
        ),
    )


async def lease_takeover(lab: FaultLab, *, lease: float = 2.0) -> Figures:
    """A send hangs; a second instance leaves it alone while the first renews the lease; the
    first is killed; the second re-sends once the lease has run out, not before."""
    t0 = time.monotonic()
    rig = await setup(lab, delivery={"lease_seconds": lease, "timeout_seconds": 30})
    a, sink = rig.relay, rig.sink
    sink.script = [Reply(504, delay=30)]  # the first request hangs
    load = await send_events([a.base_url], [0], lab.run)
    assert load.accepted == [0]
    await sink.wait_arrivals(1, timeout=10)
    b = await started(lab.twin(a, "serve-b"))
    await asyncio.sleep(2 * lease)
    assert len(sink.arrivals) == 1, "B took a delivery whose lease A was renewing"
    a.kill9()
    killed = time.monotonic()
    await sink.wait_delivered([0], timeout=lease + 10)
    gap = sink.arrivals[1].at - killed
    assert lease * 0.6 <= gap <= lease + 1.5, f"re-sent {gap:.2f} s after the kill"
    assert len(sink.arrivals) == 2
    await wait_states(rig.pg.dsn, {"delivered": 1})
    await eventually(lambda: bool(b.events("delivery_succeeded")), 5, "B did not record it")
    assert_no_error_logs(a, b)
    return Figures.of(
        "lease take-over after kill -9 during a hanging send",
        load,
        sink,
        started=t0,
        notes=f"lease {lease:g} s; B re-sent {gap:.1f} s after the kill",
    )


async def slow_send_keeps_its_lease(lab: FaultLab, *, lease: float = 2.0) -> Figures:
    """A send that takes 3 leases while its process is alive is renewed, so the other
    instance never sends it too."""
    t0 = time.monotonic()
    rig = await setup(lab, delivery={"lease_seconds": lease, "timeout_seconds": 5 * lease})
    a, sink = rig.relay, rig.sink
    b = await started(lab.twin(a, "serve-b"))
    sink.default = Reply(200, delay=3 * lease)
    load = await send_events([a.base_url, b.base_url], range(2), lab.run)
    assert load.accepted == [0, 1]
    await sink.wait_delivered([0, 1], timeout=3 * lease + 10)
    await asyncio.sleep(lease + 1)  # a stolen lease would show as a late second request
    assert len(sink.arrivals) == 2, [(x.seq, x.at) for x in sink.arrivals]
    assert sink.duplicates() == 0
    renewed = await count(rig.pg.dsn, "SELECT count(*) FROM deliveries WHERE claims = 1")
    assert renewed == 2
    assert_no_error_logs(a, b)
    return Figures.of(
        f"slow send (3 x {lease:g} s lease), two live instances",
        load,
        sink,
        started=t0,
        notes="each delivery claimed once, sent once",
    )


class Poster:
    """Clients posting numbered events one after another, a new connection for each (a kept
    connection would die with the process), until stopped; ``pause`` waits until none is in
    flight."""

    def __init__(self, base: str, run: str, clients: int) -> None:
        self.base = base
        self.run = run
        self.clients = clients
        self.load = LoadResult()
        self.in_flight = 0
        self._next = 0
        self._open = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._open.set()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def pause(self) -> None:
        self._open.clear()
        await eventually(lambda: self.in_flight == 0, 60, "requests still in flight")

    def resume(self) -> None:
        self._open.set()

    async def stop(self) -> LoadResult:
        self._stopping = True
        await asyncio.gather(*self._tasks)
        return self.load

    async def _client(self) -> None:
        while not self._stopping:
            await self._open.wait()
            seq, self._next = self._next, self._next + 1
            self.in_flight += 1
            try:
                # Its own session: a new connection, and long enough to wait out a restart.
                sent = await send_events([self.base], [seq], self.run, concurrency=1, timeout=60)
            finally:
                self.in_flight -= 1
            self.load.answers.update(sent.answers)


async def restart_on_a_passed_socket(
    lab: FaultLab,
    *,
    restarts: int = 1,
    graceful: bool = False,
    gap: float = 1.0,
    clients: int = 8,
    between: float = 1.5,
) -> Figures:
    """Socket activation: the test holds the listening socket, as systemd's air-relay.socket
    does, and passes it to serve as fd 3 (LISTEN_FDS=1, LISTEN_PID). Clients post events
    continuously, a new connection each; serve is stopped, and ``gap`` seconds later a new
    serve started on the same socket, ``restarts`` times. Connections made while no process
    serves wait in the socket's queue: every POST gets a 202, none is refused, and every event
    is delivered.

    ``graceful``: stopped with SIGTERM (systemctl restart) while the clients keep posting; the
    old process finishes what it has accepted. Otherwise kill -9, between two requests: a
    request the killed process had already accepted dies with it, whatever holds the socket.
    """
    t0 = time.monotonic()
    pg = await lab.postgres()
    sink = await lab.sink()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    waited: list[int] = []
    try:
        # The configured port is the socket's: had serve bound it, it would fail (in use).
        relay = lab.relay("serve", pg.dsn, server={"port": listener.getsockname()[1]})
        relay.start(listen_socket=listener)
        await relay.wait_ready()
        await create_webhook_sink(relay, sink.url)
        poster = Poster(relay.base_url, lab.run, clients)
        poster.start()
        for _ in range(restarts):
            await asyncio.sleep(between)
            if graceful:
                relay.sigterm()
                assert await relay.wait_exit(30) == 0, relay.tail()
            else:
                await poster.pause()
                relay.kill9()
                poster.resume()
            await asyncio.sleep(gap)  # no process serves: connections queue on the socket
            waited.append(poster.in_flight)
            relay.start(listen_socket=listener)
            await relay.wait_ready()
        await asyncio.sleep(between)
        load = await poster.stop()
    finally:
        listener.close()
    assert all(waited), f"no POST waited through a restart: {waited}"
    assert not load.errors, f"{len(load.errors)} POSTs refused or cut: {load.errors[:10]}"
    assert load.accepted == sorted(load.answers), "every POST is answered 202"
    await assert_accepted_are_stored(load, pg.dsn)
    await sink.wait_delivered(load.accepted, timeout=60)
    await all_delivered(pg.dsn)
    for start in range(1, restarts + 2):
        (ready,) = relay.events("server_ready", start)
        assert ready["socket_activated"] is True, ready
    assert not relay.events("listen_failed")
    assert_no_error_logs(relay)
    how = "SIGTERM" if graceful else "kill -9"
    return Figures.of(
        f"{how} and restart on a passed socket (x{restarts})",
        load,
        sink,
        started=t0,
        notes=(
            f"{gap:g} s without a process each time; POSTs waiting in the socket's queue "
            f"then: {', '.join(map(str, waited))}; refused: {len(load.errors)}"
        ),
    )


SOCKET_SIZES: Sizes = {"short": {}, "long": {"restarts": 3, "gap": 3.0, "clients": 32}}
GRACEFUL_SOCKET_SIZES: Sizes = {
    "short": {"graceful": True, "clients": 16},
    "long": {"graceful": True, "restarts": 5, "clients": 32},
}


# bench/faults.py runs these by name, at any of their sizes (or with its own arguments).
SCENARIOS: dict[str, tuple[Callable[..., Awaitable[Figures]], Sizes]] = {
    "kill9": (kill9_under_load, KILL9_SIZES),
    "db-crash": (database_crash_under_load, DB_CRASH_SIZES),
    "db-crash-no-spool": (database_crash_under_load, DB_CRASH_NO_SPOOL_SIZES),
    "db-outage-spool": (database_outage_spooled, SPOOL_OUTAGE_SIZES),
    "kill9-spooling": (kill9_while_spooling, KILL9_SPOOL_SIZES),
    "torn-spool-record": (torn_spool_record, {"short": {}}),
    "spool-full": (spool_full, {"short": {}}),
    "db-down-at-start": (database_down_at_startup, DB_DOWN_SIZES),
    "sink-outage": (sink_outage, SINK_OUTAGE_SIZES),
    "instances": (several_instances, INSTANCES_SIZES),
    "sigterm": (sigterm_in_flight, {"short": {}}),
    "lease-takeover": (lease_takeover, {"short": {}}),
    "lease-renewal": (slow_send_keeps_its_lease, {"short": {}}),
    "socket-restart": (restart_on_a_passed_socket, SOCKET_SIZES),
    "socket-restart-sigterm": (restart_on_a_passed_socket, GRACEFUL_SOCKET_SIZES),
}
