"""LISTEN/NOTIFY: the listener wakes on connecting and on every statement that makes work due."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from air_relay import model
from air_relay.db import repository as repo
from air_relay.db.notify import listen
from air_relay.db.pool import create_pool


async def test_listener_wakes_on_connect_and_when_ingest_routes_a_delivery(db_dsn: str) -> None:
    wakes = asyncio.Queue[None]()
    task = asyncio.create_task(listen(db_dsn, lambda: wakes.put_nowait(None)))
    pool = await create_pool(db_dsn, 1, 2)
    try:
        await asyncio.wait_for(wakes.get(), 10)  # connected: whatever is due, claim it
        fields = model.SinkFields("t", "s", "", "Webhook", {"url": "http://h/"}, None, None, True)
        await repo.insert_sink(pool, uuid.uuid4(), fields, max_per_tenant=10)
        event = model.NewEvent(uuid.uuid4(), "other-tenant", "E", 1, b"{}")
        await repo.ingest_events(pool, [event], timeout=5)  # routed to no sink: no wake
        await asyncio.sleep(0.3)
        assert wakes.empty()
        event = model.NewEvent(uuid.uuid4(), "t", "E", 1, b"{}")
        await repo.ingest_events(pool, [event], timeout=5)
        await asyncio.wait_for(wakes.get(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()
