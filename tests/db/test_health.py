"""Sink health: kept by the statement that records completions, read per sink from the kept
state and partial indexes (never the audit log), so it stays cheap on a large database."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from air_relay import model
from air_relay.db import digests, health
from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from air_relay.db.queries import QUERIES
from tests.support import insert_event_row

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def _sink(pool: asyncpg.Pool, tenant: str = "t", *, active: bool = True) -> uuid.UUID:
    fields = model.SinkFields(
        tenant, "hook", "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, active
    )
    sink = await repo.insert_sink(pool, uuid.uuid4(), fields, max_per_tenant=10)
    assert sink is not None
    return sink.id


async def _claim(
    pool: asyncpg.Pool, events: int, tenant: str = "t", limit: int = 100
) -> list[model.ClaimedDelivery]:
    for _ in range(events):
        await repo.ingest_events(
            pool, [model.NewEvent(uuid.uuid4(), tenant, "E", 1, b"{}")], timeout=5
        )
    return await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=limit, lease_seconds=60, worker="w"
    )


def _attempt(n: int, ok: bool, at: datetime, code: int | None = None) -> model.AttemptRecord:
    if ok:
        return model.AttemptRecord(n, model.SUCCESS, 200, None, "", 3, None, at)
    error = f"http_{code}" if code else "connection_refused"
    return model.AttemptRecord(n, model.FAILURE, code, error, "", 3, None, at)


def _done(
    d: model.ClaimedDelivery, status: str, *attempts: model.AttemptRecord
) -> model.Completion:
    return model.Completion(d, status, None, None, attempts)


async def _one(pool: asyncpg.Pool, sink_id: uuid.UUID) -> model.SinkHealth:
    (row,) = await health.sinks_health(pool, ["t"], sink_id)
    return row


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, 1, 4)
    yield pool
    await pool.close()


async def test_states_follow_the_attempts(pool: asyncpg.Pool) -> None:
    sink_id = await _sink(pool)
    idle = await _one(pool, sink_id)
    assert (idle.state, idle.since, idle.pending, idle.consecutive_failures) == ("idle", None, 0, 0)

    a, b, c = await _claim(pool, 3)
    # One batch: a fails twice then goes back to pending; b fails for good (dead).
    await repo.complete_deliveries(
        pool,
        [
            model.Completion(
                a,
                model.PENDING,
                T0 + timedelta(hours=1),
                "http_503",
                [_attempt(1, False, T0, 503), _attempt(2, False, T0 + timedelta(seconds=1), 503)],
            ),
            _done(b, model.DEAD, _attempt(1, False, T0 + timedelta(seconds=2), 404)),
        ],
    )
    h = await _one(pool, sink_id)
    assert h.state == "failing"
    assert h.since == T0  # the first failure of the run
    assert h.consecutive_failures == 3
    assert (h.last_error, h.last_status_code) == ("http_404", 404)
    assert h.last_failure_at == T0 + timedelta(seconds=2)
    assert h.last_success_at is None
    assert (h.pending, h.dead, h.failed_attempts_last_hour, h.delivered_last_hour) == (2, 1, 3, 0)
    assert h.oldest_pending_at is not None

    # Another failing batch continues the run: since stays, the count goes on.
    await repo.complete_deliveries(
        pool, [_done(c, model.PENDING, _attempt(1, False, T0 + timedelta(seconds=5)))]
    )
    h = await _one(pool, sink_id)
    assert (h.state, h.since, h.consecutive_failures) == ("failing", T0, 4)
    assert (h.last_error, h.last_status_code) == ("connection_refused", None)

    # Recovery: success after a failure in one batch; healthy since the success.
    await pool.execute("UPDATE deliveries SET next_attempt_at = now() WHERE status = 'pending'")
    claimed = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=100, lease_seconds=60, worker="w"
    )
    assert len(claimed) == 2
    ok_at = T0 + timedelta(seconds=11)
    await repo.complete_deliveries(
        pool,
        [
            _done(claimed[0], model.DELIVERED, _attempt(3, False, T0 + timedelta(seconds=10)),
                  _attempt(4, True, ok_at)),
            _done(claimed[1], model.DELIVERED, _attempt(2, True, T0 + timedelta(seconds=12))),
        ],
    )  # fmt: skip
    h = await _one(pool, sink_id)
    assert (h.state, h.since, h.consecutive_failures) == ("healthy", ok_at, 0)
    assert h.last_success_at == T0 + timedelta(seconds=12)
    # The latest failure stays readable after the recovery.
    assert (h.last_failure_at, h.last_error) == (T0 + timedelta(seconds=10), "connection_refused")
    assert (h.pending, h.dead, h.oldest_pending_at) == (0, 1, None)
    assert (h.delivered_last_hour, h.failed_attempts_last_hour) == (2, 5)

    js = h.as_json()
    assert list(js) == [
        "event_sink_id", "tenant_id", "state", "since", "last_success_at", "last_failure_at",
        "last_error", "last_status_code", "consecutive_failures", "pending", "dead",
        "oldest_pending_at", "delivered_last_hour", "failed_attempts_last_hour",
    ]  # fmt: skip
    assert js["since"] == "2026-11-27T12:00:11Z"
    assert json.loads(json.dumps(js)) == js


async def test_a_late_batch_does_not_undo_a_newer_state(pool: asyncpg.Pool) -> None:
    sink_id = await _sink(pool)
    a, b = await _claim(pool, 2)
    await repo.complete_deliveries(
        pool, [_done(a, model.DELIVERED, _attempt(1, True, T0 + timedelta(seconds=10)))]
    )
    # Another instance's batch, with an older failure, commits after.
    await repo.complete_deliveries(pool, [_done(b, model.PENDING, _attempt(1, False, T0, 500))])
    h = await _one(pool, sink_id)
    assert (h.state, h.since, h.consecutive_failures) == ("healthy", T0 + timedelta(seconds=10), 0)
    assert (h.last_failure_at, h.last_status_code) == (T0, 500)


async def test_inactive_sinks_tenants_and_totals(pool: asyncpg.Pool) -> None:
    on = await _sink(pool)
    off = await _sink(pool, active=False)
    other = await _sink(pool, "u")
    (d,) = await _claim(pool, 1)
    await repo.complete_deliveries(pool, [_done(d, model.PENDING, _attempt(1, False, T0, 502))])
    rows = await health.sinks_health(pool, ["t"])
    assert [(r.event_sink_id, r.state) for r in rows] == [(on, "failing"), (off, "inactive")]
    assert {r.event_sink_id for r in await health.sinks_health(pool, None)} == {on, off, other}
    assert await health.sinks_health(pool, ["u"], on) == []
    assert [r.event_sink_id for r in health.needs_attention(rows)] == [on]
    totals = health.tenant_totals(rows)
    assert totals["sinks"] == 2
    states = (totals["failing"], totals["inactive"], totals["healthy"], totals["idle"])
    assert states == (1, 1, 0, 0)
    assert (totals["pending"], totals["dead"], totals["failed_attempts_last_hour"]) == (1, 0, 1)
    assert isinstance(totals["oldest_pending_at"], str)
    assert health.tenant_totals([])["oldest_pending_at"] is None
    # Tenant ids are text; one given as a UUID is compared as its text.
    tenant = uuid.uuid4()
    as_uuid = await _sink(pool, str(tenant))
    assert [r.event_sink_id for r in await health.sinks_health(pool, [tenant])] == [as_uuid]


async def test_prune_drops_old_minutes_and_deleted_sinks(pool: asyncpg.Pool) -> None:
    sink_id = await _sink(pool)
    (d,) = await _claim(pool, 1)
    await repo.complete_deliveries(pool, [_done(d, model.DELIVERED, _attempt(1, True, T0))])
    await pool.execute("UPDATE sink_health_minutes SET minute = minute - interval '3 hours'")
    assert (await _one(pool, sink_id)).delivered_last_hour == 0  # outside the hour already
    assert await health.prune_sink_health(pool) == (1, 0)
    assert await repo.delete_sink(pool, sink_id)
    assert await health.prune_sink_health(pool) == (0, 1)


async def test_a_storm_digest_is_queued_and_counted_but_not_old_while_its_window_is_open(
    pool: asyncpg.Pool,
) -> None:
    """A digest sink 30 minutes into an hour-long window: its carrier (pending, due at the
    window's end) and two held events are all pending, none of them old. Once the window has
    closed the digest counts from its end, not from its events' arrival; when it is delivered,
    the hour's count has every event it carried."""
    sink_id = await _sink(pool)
    window_id, carrier_id, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insert_event_row(pool, event_id)
    await pool.execute(
        "INSERT INTO digest_windows (id, event_sink_id, tenant_id, event_name, org_text,"
        " organization_id, window_seconds, max_listed, opened_at, closes_at, opener_id,"
        " carrier_id) VALUES ($1, $2, 't', 'E', '1', '1', 3600, 20,"
        " now() - interval '31 minutes', now() + interval '29 minutes', $3, $4)",
        window_id,
        sink_id,
        uuid.uuid4(),
        carrier_id,
    )
    await pool.executemany(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status,"
        " digest_id, created_at, next_attempt_at) VALUES ($1, $2, $3, 't', 'Webhook', $4, $5,"
        " now() - make_interval(mins => $6), now() + interval '29 minutes')",
        [
            (carrier_id, event_id, sink_id, "pending", window_id, 30),
            (uuid.uuid4(), event_id, sink_id, "held", window_id, 20),
            (uuid.uuid4(), event_id, sink_id, "held", window_id, 10),
        ],
    )
    h = await _one(pool, sink_id)
    assert (h.pending, h.oldest_pending_at) == (3, None)
    assert await repo.pending_stats(pool) == (3, 0.0)

    # The window closed 5 minutes ago and the digest has not gone yet: 5 minutes old.
    closed = await pool.fetchval(
        "UPDATE digest_windows SET closes_at = now() - interval '5 minutes' RETURNING closes_at"
    )
    await pool.execute("UPDATE deliveries SET next_attempt_at = $1", closed)
    h = await _one(pool, sink_id)
    assert (h.pending, h.oldest_pending_at) == (3, closed)
    pending, age = await repo.pending_stats(pool)
    assert pending == 3 and 300 <= age < 20 * 60

    (carrier,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=10, lease_seconds=60, worker="w"
    )
    assert carrier.id == carrier_id
    done = _done(carrier, model.DELIVERED, _attempt(1, True, datetime.now(UTC)))
    assert await digests.complete(pool, done) == (True, 2)
    h = await _one(pool, sink_id)
    assert (h.pending, h.oldest_pending_at, h.delivered_last_hour) == (0, None, 3)


async def test_the_read_never_scans_deliveries_or_the_audit_log(pool: asyncpg.Pool) -> None:
    """On a database with many sinks, 50,000 audit rows and 40,000 deliveries (statistics
    up to date), the planner answers one tenant's health from the indexes per sink: no
    sequential scan of deliveries, and the audit log is not read at all."""
    sinks = [await _sink(pool, f"t{i % 20}") for i in range(40)]
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO events (id, tenant_id, event_name, organization_id, body)
            VALUES ('00000000-0000-0000-0000-0000000000e1', 't0', 'E', '1', '{}');
            """
        )
        await conn.execute(
            """
            INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status,
                                    created_at)
            SELECT gen_random_uuid(), '00000000-0000-0000-0000-0000000000e1',
                   ($1::uuid[])[1 + i % 40], 't0', 'Webhook',
                   CASE WHEN i % 50 = 0 THEN 'pending' WHEN i % 50 = 1 THEN 'dead'
                        WHEN i % 50 = 2 THEN 'held' ELSE 'delivered' END,
                   now() - make_interval(secs => i)
            FROM generate_series(1, 40000) AS i
            """,
            sinks,
        )
        await conn.execute(
            """
            INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,
                organization_id, event_sink_id, event_sink_type, attempt, outcome, duration_ms)
            SELECT gen_random_uuid(), 't0', gen_random_uuid(), 'E', '1',
                   ($1::uuid[])[1 + i % 40], 'Webhook', 1, 'failure', 1
            FROM generate_series(1, 50000) AS i
            """,
            sinks,
        )
        await conn.execute("ANALYZE deliveries, event_sinks, delivery_attempts")
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES["sinks_health"], ["t0"], None)
        text = json.dumps(plan)
        # Pending ones from either index of a sink's pending deliveries.
        assert "deliveries_sink_due_idx" in text or "deliveries_sink_backlog_idx" in text
        assert "deliveries_sink_dead_idx" in text
        assert "deliveries_sink_held_idx" in text
        assert "delivery_attempts" not in text
        for node in _nodes(json.loads(text)[0]["Plan"]):
            assert not (
                node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "deliveries"
            ), node
        counted = await conn.fetch(
            "SELECT event_sink_id,"
            " count(*) FILTER (WHERE status IN ('pending', 'held')) AS pending,"
            " count(*) FILTER (WHERE status = 'dead') AS dead FROM deliveries"
            " GROUP BY event_sink_id"
        )
        expected = {r["event_sink_id"]: (r["pending"], r["dead"]) for r in counted}
        rows = await health.sinks_health(conn, None)
        assert len(rows) == 40
        assert {r.event_sink_id: (r.pending, r.dead) for r in rows} == expected


def _nodes(node: dict[str, object]) -> list[dict[str, object]]:
    children = node.get("Plans", [])
    assert isinstance(children, list)
    return [node, *(n for child in children for n in _nodes(child))]


async def test_concurrent_batches_over_the_same_sinks_neither_deadlock_nor_lose_counts(
    db_dsn: str,
) -> None:
    """Several instances completing batches that touch the same sinks at once: the health
    rows are locked in sink id order (after the deliveries, in id order), so no deadlock, and
    every attempt is counted once."""
    pool = await create_pool(db_dsn, 1, 10)
    try:
        sinks = [await _sink(pool) for _ in range(5)]
        claimed = await _claim(pool, 40, limit=200)
        assert len(claimed) == 200
        random.Random(7).shuffle(claimed)
        at = datetime.now(UTC)
        completions = [
            _done(d, model.DELIVERED, _attempt(1, True, at))
            if i % 3
            else _done(d, model.PENDING, _attempt(1, False, at, 500))
            for i, d in enumerate(claimed)
        ]
        batches = [completions[i : i + 20] for i in range(0, 200, 20)]
        kept = await asyncio.gather(*(repo.complete_deliveries(pool, b) for b in batches))
        assert sum(len(k) for k in kept) == 200
        rows = await health.sinks_health(pool, ["t"])
        assert {r.event_sink_id for r in rows} == set(sinks)
        failed = sum(1 for i in range(200) if i % 3 == 0)
        assert sum(r.failed_attempts_last_hour for r in rows) == failed
        assert sum(r.delivered_last_hour for r in rows) == 200 - failed
        assert sum(r.pending for r in rows) == failed
        assert all(r.last_success_at == at and r.last_failure_at == at for r in rows)
    finally:
        await pool.close()
