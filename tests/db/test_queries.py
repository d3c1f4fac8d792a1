"""The database layer: the claim query's index, migrations under concurrency, the lease."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from air_relay import model
from air_relay.db import repository as repo
from air_relay.db.migrate import apply_migrations, available_migrations, latest_version
from air_relay.db.pool import connect, create_pool
from air_relay.db.queries import QUERIES
from tests.support import claim_plan, insert_event_row, scratch_database


async def test_claim_query_uses_the_partial_index(db: asyncpg.Connection) -> None:
    # With sequential scans priced out, the planner must still be able to answer the claim
    # from deliveries_sink_due_idx: proof that the query's predicates match the index's.
    text = await claim_plan(db)
    assert "deliveries_sink_due_idx" in text
    assert "Seq Scan on deliveries" not in text


async def test_audit_query_uses_the_tenant_index(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")
    plan = await db.fetch(
        "EXPLAIN " + QUERIES["audit_log_page"], "t", None, None, None, None, None, None, None, 10
    )
    assert "delivery_attempts_tenant_idx" in "\n".join(r[0] for r in plan)


def test_migrations_are_numbered_without_gaps() -> None:
    # Each is applied by its number (work done in parallel may land out of order), but what
    # is released has every number once: a gap is a migration that got lost in a merge.
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert latest_version() == versions[-1]


async def test_concurrent_migrations_apply_once(server_dsn: str) -> None:
    async with scratch_database(server_dsn) as dsn:
        conns = [await connect(dsn) for _ in range(4)]
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        assert sorted(v for r in results for v in r) == [m.version for m in available_migrations()]
        rows = await conns[0].fetch("SELECT version FROM air_relay_schema_migrations")
        assert [r["version"] for r in rows] == [m.version for m in available_migrations()]
        for c in conns:
            await c.close()


async def _seed(pool: asyncpg.Pool, n: int) -> uuid.UUID:
    sink = await repo.insert_sink(
        pool,
        uuid.uuid4(),
        model.SinkFields("t", "s", "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, True),
        max_per_tenant=10,
    )
    assert sink is not None and sink.active
    for _ in range(n):
        await repo.ingest_events(
            pool, [model.NewEvent(uuid.uuid4(), "t", "E", 1, b"{}")], timeout=5
        )
    return sink.id


async def test_concurrent_claims_never_overlap(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, 1, 8)
    try:
        await _seed(pool, 50)

        async def claim(worker: str) -> list[Any]:
            return await repo.claim_deliveries(
                pool, sink_types=["Webhook"], limit=7, lease_seconds=60, worker=worker
            )

        batches = await asyncio.gather(*(claim(f"w{i}") for i in range(8)))
        ids = [d.id for batch in batches for d in batch]
        assert len(ids) == len(set(ids)) == 50
        # Everything is leased now: nothing is claimable until a lease ends.
        assert await claim("late") == []
    finally:
        await pool.close()


async def test_one_claim_gives_each_sink_its_room_then_spills_to_sinks_not_barred(
    db_dsn: str, db: asyncpg.Connection
) -> None:
    # Sink a holds 1 here, b none; each may have 2. Room first: 1 of a, 2 of b. The 5 left of
    # the 8 spill to a (not barred); b, barred (failing here), never gets more than its room.
    # Unbarred, the spill goes to the oldest due: a's (older), then b's.
    a, b = uuid.uuid4(), uuid.uuid4()

    async def due(sink: uuid.UUID, n: int, age: timedelta) -> None:
        for _ in range(n):
            event = uuid.uuid4()
            await insert_event_row(db, event)
            await db.execute(
                "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,"
                " created_at, next_attempt_at) VALUES ($1, $2, $3, 't', 'Webhook',"
                " clock_timestamp() - $4::interval, clock_timestamp() - $4::interval)",
                uuid.uuid4(),
                event,
                sink,
                age,
            )

    for sink in (a, b):
        await db.execute(
            "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
            " VALUES ($1, 't', 's', '', 'Webhook', '{\"url\": \"http://127.0.0.1:9/\"}')",
            sink,
        )
        await due(sink, 10, timedelta(hours=1))
    pool = await create_pool(db_dsn, 1, 4)
    try:

        async def claim(
            barred: list[uuid.UUID] | None, spill_limit: int | None = None
        ) -> Counter[uuid.UUID]:
            claimed = await repo.claim_deliveries(
                pool, sink_types=["Webhook"], limit=8, lease_seconds=60, worker="w",
                per_sink=2, running={a: 1}, spill_barred=barred, spill_limit=spill_limit,
            )  # fmt: skip
            return Counter(d.event_sink_id for d in claimed)

        assert await claim(None) == {a: 1, b: 2}  # no spill asked for
        assert await claim([b]) == {a: 6, b: 2}
        assert await claim([]) == {a: 3, b: 5}  # a: 1 + 2 more; b: 2 + 3
        # b has 1 left. Newer ones, a's first: with the spill capped at 2 in all, across
        # sinks, it takes the 2 oldest (a's); at 0, rooms only.
        await due(a, 4, timedelta(minutes=30))
        await due(b, 3, timedelta(minutes=30))
        assert await claim([], spill_limit=2) == {a: 3, b: 2}
        assert await claim([], spill_limit=0) == {a: 1, b: 2}
    finally:
        await pool.close()


@pytest.fixture
async def one_delivery(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database with one Webhook sink and one due delivery to it."""
    pool = await create_pool(db_dsn, 1, 4)
    try:
        await _seed(pool, 1)
        yield pool
    finally:
        await pool.close()


async def test_expired_lease_is_claimed_again_and_stale_completion_is_refused(
    one_delivery: asyncpg.Pool,
) -> None:
    pool = one_delivery
    (first,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=0.05, worker="dead-process"
    )
    await asyncio.sleep(0.1)
    (second,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=60, worker="survivor"
    )
    assert second.id == first.id
    assert second.claims == 2
    assert second.claim_token != first.claim_token
    record = model.AttemptRecord(1, "success", 200, None, "", 1, None, _now())
    # Both claims' completions in one batch: only the current holder's state is kept
    # (the lease moved on), while both attempts are recorded (they happened).
    kept = await repo.complete_deliveries(
        pool,
        [model.Completion(claim, "delivered", None, None, [record]) for claim in (first, second)],
    )
    assert kept == {(second.id, second.claim_token)}
    recorded = await pool.fetchval(
        "SELECT count(*) FROM delivery_attempts WHERE delivery_id = $1", first.id
    )
    assert recorded == 2
    status = await pool.fetchrow("SELECT * FROM deliveries WHERE id = $1", first.id)
    assert status is not None and status["status"] == "delivered"


async def test_a_held_delivery_is_not_claimed_again_by_its_holder(
    one_delivery: asyncpg.Pool,
) -> None:
    # Its lease lapsed while the holder waited for the database to record its completion:
    # the holder must not send it a second time; another process may (at-least-once).
    pool = one_delivery
    (first,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=0.05, worker="w"
    )
    await asyncio.sleep(0.1)
    held = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=60, worker="w", held=[first.id]
    )
    assert held == []
    (other,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=60, worker="other"
    )
    assert other.id == first.id


async def test_release_makes_a_claim_due_again(one_delivery: asyncpg.Pool) -> None:
    pool = one_delivery
    (claimed,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=600, worker="w"
    )
    assert await repo.release_deliveries(pool, [claimed.claim_token]) == 1
    (again,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=5, lease_seconds=600, worker="w2"
    )
    assert again.id == claimed.id
    assert again.claims == 1  # a released claim does not count toward the schedule


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_upgrade_to_sealing_keeps_and_seals_the_rows_written_before(
    server_dsn: str,
) -> None:
    from air_relay.config import AuditConfig
    from air_relay.delivery.sealing import SealerTask, verify_chain

    async with scratch_database(server_dsn) as dsn:
        conn = await connect(dsn)
        try:
            # The schema of migration 3, with a delivery and its attempts written under it.
            await conn.execute(QUERIES["create_migrations_table"])
            for m in available_migrations()[:3]:
                await conn.execute(m.sql)
                await conn.execute(QUERIES["record_migration"], m.version, m.name)
            pool = await create_pool(dsn, 1, 2)
            try:
                # Written with that schema's own columns (today's statements name later ones).
                sink_id, event_id, delivery_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
                await conn.execute(
                    "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
                    " VALUES ($1, 't', 's', '', 'Webhook', '{}')",
                    sink_id,
                )
                await insert_event_row(conn, event_id)
                await conn.execute(
                    "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type)"
                    " VALUES ($1, $2, $3, 't', 'Webhook')",
                    delivery_id,
                    event_id,
                    sink_id,
                )
                await conn.execute(
                    "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
                    " organization_id, event_sink_id, event_sink_type, attempt, outcome,"
                    " duration_ms) VALUES ($1, 't', $2, 'E', '1', $3, 'Webhook', 1, 'failure', 1)",
                    delivery_id,
                    event_id,
                    sink_id,
                )
                later = [m.version for m in available_migrations()[3:]]
                assert await apply_migrations(conn) == later
                (claimed,) = await repo.claim_deliveries(
                    pool, sink_types=["Webhook"], limit=1, lease_seconds=60, worker="w"
                )
                records = [model.AttemptRecord(n, "failure", 503, "http_503", "", 1, None, _now())
                           for n in (1, 2)]  # fmt: skip
                await repo.complete_deliveries(
                    pool, [model.Completion(claimed, "dead", None, "x", records)]
                )
                (seal,) = await SealerTask(pool, AuditConfig()).run_once()
                assert (seal.first_id, seal.row_count) == (1, 3)
                # Attempts no longer go with their delivery: only with their sealed batch.
                await conn.execute("DELETE FROM deliveries")
                assert await conn.fetchval("SELECT count(*) FROM delivery_attempts") == 3
                async with repo.audit_snapshot(conn) as snapshot:
                    assert (await verify_chain(snapshot)).ok
            finally:
                await pool.close()
        finally:
            await conn.close()


async def test_upgrade_to_sink_health_fills_it_from_the_audit_log(server_dsn: str) -> None:
    """A sink already failing before the upgrade shows failing at once, not idle; one whose
    latest attempt succeeded shows healthy, with its earlier failure kept."""
    from datetime import timedelta

    from air_relay.db.health import sinks_health

    async with scratch_database(server_dsn) as dsn:
        conn = await connect(dsn)
        try:
            # The schema of migration 5, with two sinks' attempts written under it.
            await conn.execute(QUERIES["create_migrations_table"])
            for m in available_migrations()[:5]:
                await conn.execute(m.sql)
                await conn.execute(QUERIES["record_migration"], m.version, m.name)
            failing, healthy, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            for sink_id, name in ((failing, "failing"), (healthy, "healthy")):
                await conn.execute(
                    "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
                    " VALUES ($1, 't', $2, '', 'Webhook', '{}')",
                    sink_id,
                    name,
                )
            t0 = _now() - timedelta(minutes=10)
            attempts = [  # (sink, outcome, status code, error, minutes after t0)
                (failing, "success", 200, None, 0),
                (failing, "failure", 500, "http_500", 1),
                (failing, "failure", 503, "http_503", 2),
                (healthy, "failure", 404, "http_404", 1),
                (healthy, "success", 200, None, 3),
            ]
            for sink_id, outcome, code, error, minutes in attempts:
                await conn.execute(
                    "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
                    " organization_id, event_sink_id, event_sink_type, attempt, outcome,"
                    " status_code, error, duration_ms, created_at)"
                    " VALUES ($1, 't', $2, 'E', '1', $3, 'Webhook', 1, $4, $5, $6, 1, $7)",
                    uuid.uuid4(),
                    event_id,
                    sink_id,
                    outcome,
                    code,
                    error,
                    t0 + timedelta(minutes=minutes),
                )
            assert await apply_migrations(conn) == [m.version for m in available_migrations()[5:]]
            health = {h.event_sink_id: h for h in await sinks_health(conn, None)}
            bad, good = health[failing], health[healthy]
            assert (bad.state, bad.since, bad.consecutive_failures) == (
                "failing",
                t0 + timedelta(minutes=2),
                1,
            )
            assert (bad.last_error, bad.last_status_code) == ("http_503", 503)
            assert (bad.last_success_at, bad.last_failure_at) == (t0, t0 + timedelta(minutes=2))
            assert (good.state, good.since, good.consecutive_failures) == (
                "healthy",
                t0 + timedelta(minutes=3),
                0,
            )
            assert (good.last_error, good.last_status_code) == ("http_404", 404)
        finally:
            await conn.close()
