"""A recovered sink's backlog is woken a chunk at a time, oldest first, and every chunk follows
the one before it: no statement rewrites the whole backlog, and none of it waits out its
backoff once the sink answers again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from air_relay.delivery import claim
from tests.support import SinkServer, create_sink, insert_event_row

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def _backed_off(
    db: asyncpg.Connection, sink_id: uuid.UUID, n: int, *, due_in: timedelta
) -> list[uuid.UUID]:
    """``n`` deliveries that failed once while the sink was down, arrived a second apart
    (oldest first), each backed off to a later time the older it is: waking by due time would
    take the newest first."""
    ids = []
    for i in range(n):
        event_id, delivery_id = uuid.uuid4(), uuid.uuid4()
        await insert_event_row(db, event_id)
        await db.execute(
            "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,"
            " attempts, claims, last_error, created_at, updated_at, next_attempt_at)"
            " VALUES ($1, $2, $3, 't', 'Webhook', 1, 1, 'http_503', $4, $4, $5)",
            delivery_id,
            event_id,
            sink_id,
            T0 + timedelta(seconds=i),
            datetime.now(UTC) + due_in + timedelta(minutes=n - i),
        )
        ids.append(delivery_id)
    return ids


async def test_each_wake_takes_the_oldest_chunk(db_dsn: str, db: asyncpg.Connection) -> None:
    sink_id = uuid.uuid4()
    ids = await _backed_off(db, sink_id, 25, due_in=timedelta(hours=1))
    pool = await create_pool(db_dsn, 1, 2)
    try:
        woken = [await repo.wake_sink_backlog(pool, sink_id, datetime.now(UTC), limit=10)]
        due = await db.fetch("SELECT id FROM deliveries WHERE next_attempt_at < now()")
        assert {r["id"] for r in due} == set(ids[:10])
        for _ in range(3):
            woken.append(await repo.wake_sink_backlog(pool, sink_id, datetime.now(UTC), limit=10))
    finally:
        await pool.close()
    assert woken == [10, 10, 5, 0]


async def test_a_recovered_sinks_whole_backlog_drains_chunk_after_chunk(
    make_relay: Any,
    sink_server: SinkServer,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claim, "WAKE_CHUNK", 4)
    client = await make_relay()
    sink = await create_sink(client, {"Webhook": {"url": sink_server.url()}})
    sink_id = uuid.UUID(sink["id"])
    # Ten backed off for an hour and more; one more, its retry due now, finds the sink back.
    backlog = await _backed_off(db, sink_id, 10, due_in=timedelta(hours=1))
    (first,) = await _backed_off(db, sink_id, 1, due_in=-timedelta(hours=2))
    await sink_server.wait_for(11, timeout=15)
    rows = await db.fetch("SELECT id, status FROM deliveries")
    assert {r["id"]: r["status"] for r in rows} == dict.fromkeys([*backlog, first], "delivered")
