"""Retention: finished deliveries, their attempts and then their events are purged after
``retention.days``, in batches, by a background task that runs beside delivery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from air_relay.config import RetentionConfig
from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from air_relay.db.queries import QUERIES
from air_relay.delivery.retention import PurgeCounts, RetentionTask
from tests.support import (
    TENANT,
    SinkServer,
    create_sink,
    post_event,
    scratch_database,
    wait_until,
)

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=29)  # inside the default 30 days


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_dsn, 1, 2)
    yield p
    await p.close()


async def add_event(db: asyncpg.Connection, received_at: datetime) -> uuid.UUID:
    event_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO events (id, tenant_id, event_name, organization_id, body, received_at)"
        " VALUES ($1, $2, 'AssetCreatedEvent', '1', $3, $4)",
        event_id,
        TENANT,
        b"{}",
        received_at,
    )
    return event_id


async def add_delivery(
    db: asyncpg.Connection, event_id: uuid.UUID, status: str, updated_at: datetime
) -> uuid.UUID:
    """A delivery with two attempt rows; a pending one is due only tomorrow."""
    delivery_id, sink_id = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status,"
        " attempts, created_at, updated_at, next_attempt_at)"
        " VALUES ($1, $2, $3, $4, 'Webhook', $5, 2, $6, $6, now() + interval '1 day')",
        delivery_id,
        event_id,
        sink_id,
        TENANT,
        status,
        updated_at,
    )
    await db.executemany(
        "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
        " organization_id, event_sink_id, event_sink_type, attempt, outcome, duration_ms,"
        " created_at) VALUES ($1, $2, $3, 'AssetCreatedEvent', '1', $4, 'Webhook', $5,"
        " 'failure', 5, $6)",
        [(delivery_id, TENANT, event_id, sink_id, n, updated_at) for n in (1, 2)],
    )
    return delivery_id


async def ids(db: asyncpg.Connection, table: str) -> set[uuid.UUID]:
    return {r[0] for r in await db.fetch(f"SELECT id FROM {table}")}


async def test_old_finished_rows_are_purged_in_batches(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    old_events = [await add_event(db, OLD) for _ in range(12)]
    for i, event_id in enumerate(old_events):
        await add_delivery(db, event_id, "delivered" if i < 10 else "dead", OLD)
    # Kept: finished within the 30 days (its event is old, but still needed) ...
    recent_event = await add_event(db, OLD)
    recent = await add_delivery(db, recent_event, "dead", RECENT)
    # ... a pending delivery, however old, and its event ...
    pending_event = await add_event(db, OLD)
    pending = await add_delivery(db, pending_event, "pending", OLD)
    # ... and an event one of whose deliveries is still pending (the other one goes).
    shared_event = await add_event(db, OLD)
    shared_pending = await add_delivery(db, shared_event, "pending", OLD)
    await add_delivery(db, shared_event, "delivered", OLD)
    lonely_old = await add_event(db, OLD)  # routed to no sink: goes
    lonely_recent = await add_event(db, RECENT)  # routed to no sink: stays
    cfg = RetentionConfig(days=30, interval_seconds=3600, batch_size=3)

    # One batch is at most batch_size rows.
    cutoff = await repo.retention_cutoff(pool, cfg.days)
    assert NOW - timedelta(days=30, minutes=5) < cutoff < datetime.now(UTC) - timedelta(days=30)
    assert await repo.purge_deliveries(pool, cutoff, 3) == 3
    with capture_logs() as logs:
        counts = await RetentionTask(pool, cfg, batch_pause=0).run_logged()
    # 13 old finished deliveries (3 already gone), 12 + 1 events; 4 + 5 batches, and one
    # statement each that finds no sealed batch of the audit log, no digest window to purge.
    assert counts == PurgeCounts(deliveries=10, events=13, batches=11)
    (line,) = [e for e in logs if e["event"] == "retention_purged"]
    assert (line["deliveries"], line["events"], line["batches"]) == (10, 13, 11)
    assert isinstance(line["duration_ms"], int)

    assert await ids(db, "deliveries") == {recent, pending, shared_pending}
    assert await ids(db, "events") == {recent_event, pending_event, shared_event, lonely_recent}
    assert lonely_old not in await ids(db, "events")
    # The attempts are the audit log: they go by sealed batch only, and none is sealed here.
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 2 * 16
    # A second run finds nothing.
    assert await RetentionTask(pool, cfg).run_once() == PurgeCounts(0, 0, 4)


async def test_exactly_full_batches_and_the_days_setting(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    for age in (5, 5, 5, 5, 5, 5, 1):
        event_id = await add_event(db, NOW - timedelta(days=age))
        await add_delivery(db, event_id, "delivered", NOW - timedelta(days=age))
    cfg = RetentionConfig(days=2, interval_seconds=3600, batch_size=3)
    counts = await RetentionTask(pool, cfg, batch_pause=0).run_once()
    # Two full batches, then one that finds nothing, for each table; no sealed batch, no
    # digest window.
    assert counts == PurgeCounts(deliveries=6, events=6, batches=8)
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_background_task_purges_beside_delivery(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    for _ in range(20):
        await add_delivery(db, await add_event(db, OLD), "delivered", OLD)
    with capture_logs() as logs:
        relay = await make_relay(
            retention={"interval_seconds": 0.1, "batch_size": 4},
            audit={"seal_interval_seconds": 3600},
        )
        await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
        for _ in range(10):
            assert (
                await post_event(relay, {"eventName": "E", "organizationId": 1, "data": {}})
            ).status == 202
            await asyncio.sleep(0.02)
        await sink_server.wait_for(10)

        async def old_rows_gone() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM events") == 10)

        await wait_until(old_rows_gone)

        async def all_delivered() -> bool:
            n = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            return bool(n == 10)

        await wait_until(all_delivered)
        await asyncio.sleep(0.25)  # more runs: the new, recent rows stay
    # The old deliveries' 40 attempts stay with the 10 new ones: not sealed, never purged.
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 50
    runs = [e for e in logs if e["event"] == "retention_purged"]
    assert len(runs) >= 2
    assert sum(e["deliveries"] for e in runs) == 20 and sum(e["events"] for e in runs) == 20
    assert not [e for e in logs if e["event"] == "retention_failed"]


async def test_no_background_purge_without_the_dispatcher(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    event_id = await add_event(db, OLD)
    await add_delivery(db, event_id, "delivered", OLD)
    await make_relay(run_dispatcher=False, retention={"interval_seconds": 0.05})
    await asyncio.sleep(0.3)
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_a_database_error_is_logged_and_the_task_carries_on(server_dsn: str) -> None:
    # A database without the schema: every purge fails with a PostgreSQL error.
    async with scratch_database(server_dsn) as dsn:
        p = await create_pool(dsn, 1, 1)
        task = RetentionTask(p, RetentionConfig(interval_seconds=0.05))
        try:
            with capture_logs() as logs:
                task.start()

                async def failed_twice() -> bool:
                    return len([e for e in logs if e["event"] == "retention_failed"]) >= 2

                await wait_until(failed_twice, timeout=5)
        finally:
            await task.stop()
            await p.close()
    failure = next(e for e in logs if e["event"] == "retention_failed")
    # A missing table is a bug, not an outage: an error with its traceback, not a warning.
    assert failure["log_level"] == "error"
    assert failure["exc_info"]
    assert not [e for e in logs if e["event"] == "retention_purged"]
    await task.stop()  # stopping twice is harmless


async def test_purge_uses_the_finished_index(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")
    plan = await db.fetch("EXPLAIN " + QUERIES["purge_deliveries"], OLD, 500)
    text = "\n".join(r[0] for r in plan)
    assert "deliveries_finished_idx" in text, text
    assert "Seq Scan on deliveries" not in text, text
