"""Plans that stay cheap as the tables grow: the claim's generic plan (the one a prepared
statement keeps) probes rows by key, and young tables are analyzed as soon as they outgrow
their statistics, so the plans PostgreSQL keeps are not those of an empty database."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from air_relay.db.pool import connect, create_pool
from air_relay.db.queries import QUERIES
from air_relay.delivery.planner_stats import MIN_ROWS, PlannerStatsTask
from tests.support import wait_until


async def _backlog(db: asyncpg.Connection, n: int) -> None:
    """``n`` events, each with a pending delivery to one Webhook sink."""
    sink = uuid.uuid4()
    await db.execute(
        "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
        " VALUES ($1, 't', 's', '', 'Webhook', '{\"url\": \"http://127.0.0.1:9/\"}')",
        sink,
    )
    await db.execute(
        "INSERT INTO events (id, tenant_id, event_name, organization_id, body)"
        " SELECT gen_random_uuid(), 't', 'E', '1', '{}' FROM generate_series(1, $1::int)",
        n,
    )
    await db.execute(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type)"
        " SELECT gen_random_uuid(), id, $1, 't', 'Webhook' FROM events",
        sink,
    )


async def _generic_plan(db: asyncpg.Connection, name: str) -> str:
    query = QUERIES[name]
    params = max(int(n) for n in re.findall(r"\$(\d+)", query))
    await db.execute("SET plan_cache_mode = force_generic_plan")
    await db.execute(f"PREPARE generic AS {query}")
    rows = await db.fetch(f"EXPLAIN EXECUTE generic({', '.join(['NULL'] * params)})")
    return "\n".join(r[0] for r in rows)


async def test_the_claims_generic_plan_never_scans_whole_tables(db: asyncpg.Connection) -> None:
    # A generic plan cannot know how many rows the claim takes ($2): joined to "due", it
    # guessed a tenth of the backlog and scanned deliveries and events whole at every claim
    # (16 ms per claim with 60,000 pending; the drain slowed as the table grew).
    await _backlog(db, 5000)
    await db.execute("ANALYZE")
    plan = await _generic_plan(db, "claim_deliveries")
    assert "Seq Scan on deliveries" not in plan, plan
    assert "Seq Scan on events" not in plan, plan


async def test_young_tables_are_analyzed_once_they_outgrow_their_statistics(db_dsn: str) -> None:
    writer = await connect(db_dsn)
    await _backlog(writer, 3 * MIN_ROWS)
    await writer.close()  # its statistics reach the shared counters when it ends
    pool = await create_pool(db_dsn, min_size=1, max_size=2)
    try:
        task = PlannerStatsTask(pool)
        analyzed: list[str] = []

        async def ran() -> bool:
            analyzed.extend(await task.run_once())
            return bool(analyzed)

        await wait_until(ran, timeout=15, interval=0.2)
        assert analyzed == ["deliveries", "events"]
        planned = await pool.fetchval(
            "SELECT min(reltuples) FROM pg_class WHERE relname IN ('deliveries', 'events')"
        )
        assert planned >= 3 * MIN_ROWS
        # Analyzed: nothing more to do until they double again.
        assert await task.run_once() == []
    finally:
        await pool.close()


async def test_a_user_that_does_not_own_the_tables_leaves_them_to_autovacuum(
    db_dsn: str, db: asyncpg.Connection
) -> None:
    # ANALYZE of another role's table only warns and skips it: the task must not "refresh"
    # (and log it) every second for ever, but say once that it cannot, and stop.
    role = f"reader_{uuid.uuid4().hex[:8]}"
    try:
        await db.execute(f'CREATE ROLE "{role}" LOGIN')
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("the test database's user may not create a role")
    try:
        writer = await connect(db_dsn)
        await _backlog(writer, 3 * MIN_ROWS)
        await writer.close()
        parts = urlsplit(db_dsn)
        host = parts.netloc.rpartition("@")[2]  # empty for a Unix socket (?host=...)
        as_reader = urlunsplit(parts._replace(netloc=f"{role}@{host}"))
        pool = await create_pool(as_reader, min_size=1, max_size=1)
        try:
            task = PlannerStatsTask(pool, interval=0.05)
            with capture_logs() as logs:
                task.start()
                assert task._task is not None
                await wait_until(lambda: _done(task), timeout=15)
            events = [e["event"] for e in logs]
            assert events == ["planner_stats_skipped"]
        finally:
            await task.stop()
            await pool.close()
        assert await db.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'events'") < 0
    finally:
        await db.execute(f'DROP ROLE "{role}"')


async def _done(task: PlannerStatsTask) -> bool:
    return task._task is not None and task._task.done()
