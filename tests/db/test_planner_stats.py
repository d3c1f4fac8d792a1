"""Plans that stay cheap as the tables grow: the claim's generic plan (the one a prepared
statement keeps) probes rows by key, and young tables are analyzed as soon as they outgrow
their statistics, so the plans PostgreSQL keeps are not those of an empty database."""

from __future__ import annotations

import re
import uuid

import asyncpg

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
