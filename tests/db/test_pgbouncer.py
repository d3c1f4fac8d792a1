"""Behind a real PgBouncer in transaction mode: with ``database.prepared_statements: false``
the relay migrates, ingests and delivers through it (polling, as LISTEN cannot work there);
with prepared statements left on, the failures are reported as the configuration problem they
are, never as "database unavailable"."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from air_relay.db import repository as repo
from air_relay.db.migrate import apply_migrations, available_migrations
from air_relay.db.notify import listen, through_transaction_pooler
from air_relay.db.pool import connect, create_pool
from air_relay.model import NewEvent
from air_relay.runtime import build_app
from tests.pgbouncer import PgBouncer, pgbouncer_binary, running_pgbouncer
from tests.support import (
    TENANT,
    SinkServer,
    create_sink,
    make_config,
    post_event,
    scratch_database,
    wait_until,
)

EVENTS = 40


def event(n: int) -> dict[str, Any]:
    return {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"id": f"c-{n}"}}


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A brand-new, unmigrated database: the relay migrates it through PgBouncer."""
    async with scratch_database(server_dsn) as dsn:
        yield dsn


async def start_relay(
    aiohttp_client: Any, dsn: str, *, delivery_poll: float | None = 0.05, **database: Any
) -> TestClient[web.Request, web.Application]:
    """The relay on ``dsn``; ``delivery_poll`` None: a poll interval longer than any test."""
    delivery = {"poll_interval_seconds": delivery_poll or 600}
    app = build_app(make_config(database={"dsn": dsn, **database}, delivery=delivery), dsn)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    return client


async def test_ingest_to_delivery_through_pgbouncer_in_transaction_mode(
    pgbouncer: PgBouncer, empty_dsn: str, sink_server: SinkServer, aiohttp_client: Any
) -> None:
    through = pgbouncer.dsn(database_name(empty_dsn))
    with capture_logs() as logs:
        relay = await start_relay(
            aiohttp_client, through, prepared_statements=False, pool_min_size=4
        )
        await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
        # Concurrent requests: many transactions, each on whichever server connection.
        replies = await asyncio.gather(*(post_event(relay, event(n)) for n in range(EVENTS)))
        assert [r.status for r in replies] == [202] * EVENTS
        received = await sink_server.wait_for(EVENTS, timeout=30)
    assert sorted(r.json()["data"]["id"] for r in received) == sorted(
        f"c-{n}" for n in range(EVENTS)
    )
    wakeups = [e for e in logs if e["event"] == "dispatcher_wakeup"]
    assert [w["mode"] for w in wakeups] == ["poll"]
    assert "database.prepared_statements" in wakeups[0]["reason"]
    assert not [e for e in logs if e["log_level"] == "error"]
    assert {e["version"] for e in logs if e["event"] == "migration_applied"} == {
        m.version for m in available_migrations()
    }
    db = await connect(empty_dsn)
    try:
        # A delivery's verdict is written just after the receiver answered it: wait for them.
        async def all_delivered() -> bool:
            statuses = await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
            return {r["status"]: r["count"] for r in statuses} == {"delivered": EVENTS}

        await wait_until(all_delivered, timeout=30)
    finally:
        await db.close()


async def test_migrations_through_pgbouncer_apply_once(
    pgbouncer: PgBouncer, empty_dsn: str
) -> None:
    """The migration lock is a transaction-level one: it holds through transaction pooling."""
    through = pgbouncer.dsn(database_name(empty_dsn))
    conns = [await connect(through, prepared_statements=False) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        versions = [m.version for m in available_migrations()]
        assert sorted(v for r in results for v in r) == versions
        rows = await conns[0].fetch("SELECT version FROM air_relay_schema_migrations")
        assert sorted(r["version"] for r in rows) == versions
    finally:
        for c in conns:
            await c.close()
    direct = await connect(empty_dsn)
    try:
        # Nothing left holding the lock on a server connection of the pooler.
        held = await direct.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert held == 0
    finally:
        await direct.close()


async def test_prepared_statements_through_pgbouncer_are_a_configuration_error(
    pgbouncer: PgBouncer, db_dsn: str, sink_server: SinkServer, aiohttp_client: Any
) -> None:
    through = pgbouncer.dsn(database_name(db_dsn))
    blocker = await connect(through, prepared_statements=False)
    statuses: list[int] = []
    with capture_logs() as logs:
        relay = await start_relay(aiohttp_client, through, pool_min_size=4)
        await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
        for _ in range(5):
            # A transaction held open pins one server connection, so the relay's statements
            # are prepared on others; once it ends, the pooler hands that one out first (it
            # reuses the most recent), where none of them exists.
            await blocker.execute("BEGIN; SELECT 1")
            replies = await asyncio.gather(*(post_event(relay, event(n)) for n in range(10)))
            statuses += [r.status for r in replies]
            await blocker.execute("COMMIT")
            replies = await asyncio.gather(*(post_event(relay, event(n)) for n in range(10)))
            statuses += [r.status for r in replies]
    await blocker.close()
    assert 503 not in statuses
    assert 500 in statuses
    failed = [e for e in logs if e["event"] == "request_failed" and e["log_level"] == "error"]
    assert failed
    assert all("database.prepared_statements: false" in e["hint"] for e in failed)
    assert {e["error"] for e in failed} <= {
        "InvalidSQLStatementNameError",
        "DuplicatePreparedStatementError",
    }
    assert not [e for e in logs if e["event"] in ("database_unavailable", "event_not_committed")]


async def test_listen_through_a_transaction_pooler_is_reported_and_given_up(
    pgbouncer: PgBouncer, db_dsn: str
) -> None:
    wakes = asyncio.Queue[None]()
    with capture_logs() as logs:
        # Returns (the dispatcher polls on), after one wake for whatever is already due.
        await asyncio.wait_for(
            listen(pgbouncer.dsn(database_name(db_dsn)), lambda: wakes.put_nowait(None)), 30
        )
    assert wakes.qsize() == 1
    reported = [e for e in logs if e["event"] == "listen_through_pooler"]
    assert [e["log_level"] for e in reported] == ["error"]
    assert "database.listen_dsn" in reported[0]["hint"]


async def test_the_pooler_check_passes_direct_and_session_mode_connections(
    server_dsn: str, db_dsn: str
) -> None:
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does)")
    direct = await connect(db_dsn)
    try:
        assert not await through_transaction_pooler(direct, db_dsn)
    finally:
        await direct.close()
    with running_pgbouncer(binary, server_dsn, pool_mode="session") as session:
        dsn = session.dsn(database_name(db_dsn))
        conn = await connect(dsn)
        try:
            assert not await through_transaction_pooler(conn, dsn)
        finally:
            await conn.close()


async def test_a_relay_with_a_direct_listen_dsn_listens(
    pgbouncer: PgBouncer, db_dsn: str, sink_server: SinkServer, aiohttp_client: Any
) -> None:
    through = pgbouncer.dsn(database_name(db_dsn))
    with capture_logs() as logs:
        relay = await start_relay(
            aiohttp_client,
            through,
            prepared_statements=False,
            listen_dsn=db_dsn,
            # The poll would not come within the test's wait: only a NOTIFY wakes it.
            delivery_poll=None,
        )
        await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
        await asyncio.sleep(0.5)  # the claim loop has gone back to waiting
        # Committed by another client: this process hears of it by NOTIFY alone.
        pool = await create_pool(db_dsn, 1, 1)
        try:
            raw = json.dumps(event(1)).encode()
            await repo.ingest_events(
                pool, [NewEvent(uuid.uuid4(), TENANT, "CaseCreatedEvent", 1, raw)], timeout=5
            )
        finally:
            await pool.close()
        await sink_server.wait_for(1, timeout=10)
    assert [e["mode"] for e in logs if e["event"] == "dispatcher_wakeup"] == ["listen"]
    assert not [e for e in logs if e["event"] == "listen_through_pooler"]
