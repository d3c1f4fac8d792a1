"""Delivery end to end (through Webhook sinks): retries, the durable schedule, dead letters,
leases, fairness between sinks, audit rows and log lines."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
from structlog.testing import capture_logs

from tests.support import (
    ADMIN_KEY,
    CATALOG,
    TENANT,
    Reply,
    SinkServer,
    audit_rows,
    auth,
    create_sink,
    delivery_state,
    make_sink_server,
    post_event,
    wait_final,
    wait_until,
)

EVENT = CATALOG[3]["example"]  # TaskProcessingFailedEvent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_404_is_one_attempt_then_dead(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=404, body="no such hook")
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    with capture_logs() as logs:
        resp = await post_event(relay, EVENT)
        event_id = (await resp.json())["event_id"]
        await wait_final(db)

        async def dead_logged() -> bool:  # logged just after the state is committed
            return any(e["event"] == "delivery_dead" for e in logs)

        await wait_until(dead_logged)
    await asyncio.sleep(0.2)  # nothing more may arrive
    assert len(sink_server.received) == 1
    state = await delivery_state(db)
    assert (state["status"], state["attempts"], state["last_error"]) == ("dead", 1, "http_404")
    (row,) = await audit_rows(relay)
    assert row["event_id"] == event_id
    assert row["event_sink_id"] == sink["id"]
    assert row["event_sink_type"] == "Webhook"
    assert row["event_name"] == EVENT["eventName"]
    assert row["organization_id"] == EVENT["organizationId"]
    assert row["tenant_id"] == TENANT
    assert (row["attempt"], row["outcome"], row["status_code"]) == (1, "failure", 404)
    assert row["error"] == "http_404"
    assert row["response_body"] == "no such hook"
    assert row["next_attempt_at"] is None
    assert isinstance(row["duration_ms"], int)
    failed = [e for e in logs if e["event"] == "delivery_failed"]
    assert len(failed) == 1
    for key in ("event_id", "event_sink_id", "attempt", "status_code", "error", "next_attempt_at"):
        assert failed[0][key] == row[key], key
    assert [e for e in logs if e["event"] == "delivery_dead"]


async def test_500_exhausts_claims_and_schedule_then_dead(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=500, body="boom")
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    expected = 3 * (1 + 2)  # attempts_per_claim x (1 + len(schedule_seconds))
    with capture_logs() as logs:
        await post_event(relay, EVENT)
        await wait_final(db)
    await asyncio.sleep(0.3)
    assert len(sink_server.received) == expected
    state = await delivery_state(db)
    assert (state["status"], state["attempts"], state["claims"]) == ("dead", expected, 3)
    rows = await audit_rows(relay)
    assert [r["attempt"] for r in rows] == list(range(expected, 0, -1))  # newest first
    assert all(r["outcome"] == "failure" and r["status_code"] == 500 for r in rows)
    assert rows[0]["next_attempt_at"] is None
    assert all(r["next_attempt_at"] is not None for r in rows[1:])
    # One webhook-id for every retry of one delivery.
    assert len({r.headers["webhook-id"] for r in sink_server.received}) == 1
    assert len([e for e in logs if e["event"] == "delivery_failed"]) == expected
    assert len([e for e in logs if e["event"] == "retry_scheduled"]) == 2
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'air_relay_delivery_attempts_failed_total{reason="server_error",sink_type="Webhook"} 9.0'
        in metrics
    )
    assert 'air_relay_deliveries_total{outcome="dead",sink_type="Webhook"} 1.0' in metrics


async def test_500_503_then_200_is_delivered(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.script.extend([Reply(status=500), Reply(status=503)])
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, EVENT)
    await wait_final(db)
    state = await delivery_state(db)
    assert (state["status"], state["attempts"]) == ("delivered", 3)
    rows = await audit_rows(relay)
    assert [(r["attempt"], r["status_code"], r["outcome"]) for r in rows] == [
        (3, 200, "success"),
        (2, 503, "failure"),
        (1, 500, "failure"),
    ]
    assert len(await audit_rows(relay, outcome="failure")) == 2
    metrics = await (await relay.get("/metrics")).text()
    assert 'air_relay_deliveries_total{outcome="delivered",sink_type="Webhook"} 1.0' in metrics


async def test_timeout_and_connection_refused_are_transient(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection, unused_tcp_port: int
) -> None:
    relay = await make_relay(
        delivery={
            "timeout_seconds": 0.3,
            "retry": {"attempts_per_claim": 2, "schedule_seconds": []},
        }
    )
    sink_server.default = Reply(delay=1.0)
    slow = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    closed = await create_sink(relay, {"Webhook": {"url": f"http://127.0.0.1:{unused_tcp_port}/x"}})
    await post_event(relay, EVENT)
    await wait_final(db, count=2)
    rows = await audit_rows(relay)
    by_sink = {r["event_sink_id"]: r for r in rows}
    assert {r["error"] for r in rows if r["event_sink_id"] == slow["id"]} == {"timeout_read"}
    assert {r["error"] for r in rows if r["event_sink_id"] == closed["id"]} == {
        "connection_refused"
    }
    assert len(rows) == 4  # two attempts each: both errors were retried
    assert by_sink[slow["id"]]["status_code"] is None
    metrics = await (await relay.get("/metrics")).text()
    assert 'reason="timeout"' in metrics
    assert 'reason="connection_error"' in metrics


async def test_retry_after_is_honoured(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.script.append(Reply(status=429, headers={"Retry-After": "1"}))
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, EVENT)
    first, second = await sink_server.wait_for(2)
    assert second.at - first.at >= 0.95
    await wait_final(db)
    assert (await delivery_state(db))["status"] == "delivered"
    rows = await audit_rows(relay)
    assert rows[1]["error"] == "http_429"


async def test_deleted_sink_ends_dead(
    make_relay: Any, db: asyncpg.Connection, sink_server: SinkServer
) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, EVENT)
    resp = await relay.delete(f"/v1/event_sink/{sink['id']}", headers=auth(ADMIN_KEY))
    assert resp.status == 200
    worker = await make_relay()  # a second process-like app with a dispatcher, same database
    await wait_final(db)
    state = await delivery_state(db)
    assert (state["status"], state["last_error"]) == ("dead", "sink_deleted")
    assert sink_server.received == []
    assert (await audit_rows(worker))[0]["error"] == "sink_deleted"


async def test_no_secret_in_logs_or_audit_rows(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=500, body="nope")
    args = {"url": sink_server.url(), "secret": SECRET, "bearer_token": "tok-very-secret-123"}
    with capture_logs() as logs:
        await create_sink(relay, {"Webhook": args})
        await post_event(relay, EVENT)
        await wait_final(db)
    text = json.dumps(logs, default=str) + json.dumps(await audit_rows(relay))
    for secret in (SECRET, SECRET.removeprefix("whsec_"), "tok-very-secret-123", "ingest-token"):
        assert secret not in text


async def test_two_dispatchers_split_work_without_duplicates(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(delay=0.01)
    first = await make_relay()
    second = await make_relay()
    await create_sink(first, {"Webhook": {"url": sink_server.url()}})
    count = 60
    for i in range(count):
        client = first if i % 2 else second
        assert (await post_event(client, EVENT)).status == 202
    await wait_final(db, count=count, timeout=30)
    await asyncio.sleep(0.2)
    ids = [r.headers["webhook-id"] for r in sink_server.received]
    assert len(ids) == count
    assert len(set(ids)) == count
    workers = await db.fetchval("SELECT count(DISTINCT delivery_id) FROM delivery_attempts")
    assert workers == count


async def test_delivery_row_ids_are_uuids(relay: Any, db: asyncpg.Connection) -> None:
    await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/x"}})
    resp = await post_event(relay, EVENT)
    event_id = uuid.UUID((await resp.json())["event_id"])
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", event_id) == 1


async def test_a_crashing_sender_still_ends_dead_with_audit_rows(db_dsn: str) -> None:
    from air_relay import model
    from air_relay.db import repository as repo
    from air_relay.db.pool import create_pool
    from air_relay.delivery.claim import ClaimRunner
    from air_relay.metrics import Metrics
    from tests.support import make_config

    class BrokenSender:
        async def send(self, delivery: model.ClaimedDelivery) -> Any:
            raise RuntimeError("bug in a sender")

    cfg = make_config(delivery={"retry": {"attempts_per_claim": 2, "schedule_seconds": []}})
    pool = await create_pool(db_dsn, 1, 2)
    try:
        fields = model.SinkFields(
            TENANT, "s", "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, True
        )
        await repo.insert_sink(pool, uuid.uuid4(), fields, max_per_tenant=10)
        await repo.ingest_events(
            pool, [model.NewEvent(uuid.uuid4(), TENANT, "E", 1, b"{}")], timeout=5
        )
        (claimed,) = await repo.claim_deliveries(
            pool, sink_types=["Webhook"], limit=1, lease_seconds=60, worker="w"
        )
        await ClaimRunner(pool, cfg.delivery, Metrics()).run(BrokenSender(), claimed)
        state = await pool.fetchrow("SELECT * FROM deliveries WHERE id = $1", claimed.id)
        assert state is not None
        assert (state["status"], state["attempts"]) == ("dead", 2)
        assert state["last_error"] == "internal_error:RuntimeError"
    finally:
        await pool.close()


async def test_shutdown_releases_a_send_that_outlives_the_grace(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    relay = await make_relay(delivery={"timeout_seconds": 1})
    sink_server.default = Reply(delay=5)
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, EVENT)
    await sink_server.wait_for(1)
    started = time.monotonic()
    await relay.close()  # the app's shutdown: dispatcher drain, then release
    assert time.monotonic() - started < 4
    state = await delivery_state(db)
    assert state["status"] == "pending"
    assert state["claim_token"] is None
    assert state["claims"] == 0  # released: the claim does not count toward the schedule
    assert state["next_attempt_at"] <= await db.fetchval("SELECT now()")


async def test_a_slow_send_keeps_its_lease_against_a_second_process(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    # The send takes about four leases; without renewal the other dispatcher would claim
    # the delivery again and the sink would get it twice.
    overrides = {"delivery": {"lease_seconds": 0.6, "timeout_seconds": 5}}
    first = await make_relay(**overrides)
    await make_relay(**overrides)
    sink_server.default = Reply(delay=2.5)
    await create_sink(first, {"Webhook": {"url": sink_server.url()}})
    await post_event(first, EVENT)
    await wait_final(db, timeout=15)
    await asyncio.sleep(0.8)
    assert len(sink_server.received) == 1
    state = await delivery_state(db)
    assert (state["status"], state["claims"], state["attempts"]) == ("delivered", 1, 1)


async def test_a_slow_sink_cannot_hold_every_worker(
    make_relay: Any, sink_server: SinkServer, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    # Four workers, a share of one per sink while others wait: a sink taking 1 s per request
    # with a backlog of 8 must leave workers for a healthy sink's event that arrives behind it.
    sink_server.default = Reply(delay=1.0)
    config = {"delivery": {"concurrency": 4, "batch_size": 4, "sink_concurrency": 1}}
    relay = await make_relay(run_dispatcher=False, **config)
    await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/slow")}}, events=["CaseFileSavedEvent"]
    )
    for _ in range(8):
        await post_event(
            relay, {"eventName": "CaseFileSavedEvent", "organizationId": 1, "data": {}}
        )
    healthy = await make_sink_server(aiohttp_server)
    await create_sink(relay, {"Webhook": {"url": healthy.url("/ok")}}, events=["CaseClosedEvent"])
    await make_relay(**config)
    await sink_server.wait_for(4)  # every worker is now in a slow send
    posted = time.monotonic()
    await post_event(relay, {"eventName": "CaseClosedEvent", "organizationId": 1, "data": {}})
    (fast,) = await healthy.wait_for(1)
    # Fair: the next free worker takes it (~1 s). Arrival order alone: after the 4 slow
    # deliveries queued before it, ~2 s.
    assert fast.at - posted < 1.6
    await wait_final(db, count=9)
    # Nothing else due: the slow sink used all four workers (work-conserving).
    first = sorted(r.at for r in sink_server.received)[:4]
    assert first[-1] - first[0] < 0.5


async def test_shutdown_releases_deliveries_claimed_ahead_without_sending_them(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    # One sender and a share of one: one delivery sending, one claimed ahead of it. The first
    # is answered within the grace, so its sender frees up while the process stops.
    relay = await make_relay(delivery={"timeout_seconds": 1, "concurrency": 1, "batch_size": 2})
    sink_server.default = Reply(delay=0.5)
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    for _ in range(2):
        await post_event(relay, EVENT)

    async def all_claimed() -> bool:
        held = await db.fetchval("SELECT count(*) FROM deliveries WHERE claim_token IS NOT NULL")
        return bool(held == 2)

    await wait_until(all_claimed)
    await sink_server.wait_for(1)
    await relay.close()
    await asyncio.sleep(0.7)
    # Only the one sending was sent; the other was handed back unsent.
    sent = {r.headers["webhook-id"] for r in sink_server.received}
    assert len(sent) == 1
    rows = await db.fetch("SELECT id, status, claim_token, claims FROM deliveries")
    states = {f"msg_{r['id'].hex}" in sent: tuple(r)[1:] for r in rows}
    assert states == {True: ("delivered", None, 1), False: ("pending", None, 0)}


async def test_a_failing_sink_holds_no_more_senders_than_its_share(
    make_relay: Any, sink_server: SinkServer, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    # Four senders, a share of one: a sink that times out, with a backlog, must leave three
    # senders idle for a healthy sink's event that arrives behind it (claims waiting for a
    # sender do not count against a sink that fails: all of its claims do).
    sink_server.default = Reply(delay=10)
    config = {
        "delivery": {
            "concurrency": 4,
            "batch_size": 4,
            "sink_concurrency": 1,
            "timeout_seconds": 2,
            "retry": {"attempts_per_claim": 1, "schedule_seconds": [0.1]},
        }
    }
    relay = await make_relay(**config)
    await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/down")}}, events=["CaseFileSavedEvent"]
    )
    for _ in range(8):
        await post_event(
            relay, {"eventName": "CaseFileSavedEvent", "organizationId": 1, "data": {}}
        )
    await sink_server.wait_for(1)

    async def failed_once() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM delivery_attempts"))

    await wait_until(failed_once, timeout=10)  # the sink now fails here
    await asyncio.sleep(0.5)
    healthy = await make_sink_server(aiohttp_server)
    await create_sink(relay, {"Webhook": {"url": healthy.url("/ok")}}, events=["CaseClosedEvent"])
    posted = time.monotonic()
    await post_event(relay, {"eventName": "CaseClosedEvent", "organizationId": 1, "data": {}})
    (fast,) = await healthy.wait_for(1)
    assert fast.at - posted < 1.0  # a free sender at once, not one the down sink lets go


async def test_a_claim_whose_lease_was_taken_while_it_waited_is_not_sent(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    # One sender busy for 1.5 s, one claim waiting behind it. Meanwhile another process takes
    # the waiting one over (as after an outage longer than the lease): it must not be sent
    # from here as well. Two guards, each enough alone: the renewal that finds it lost cancels
    # it, and a claim whose lease has run out when its sender frees up is dropped.
    overrides = {
        "delivery": {"concurrency": 1, "batch_size": 2, "lease_seconds": 0.6, "timeout_seconds": 5}
    }
    relay = await make_relay(**overrides)
    sink_server.default = Reply(delay=1.5)
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    for _ in range(2):
        await post_event(relay, EVENT)
    (first,) = await sink_server.wait_for(1)

    async def waiting_claimed() -> bool:
        held = await db.fetchval("SELECT count(*) FROM deliveries WHERE claim_token IS NOT NULL")
        return bool(held == 2)

    await wait_until(waiting_claimed)
    taken = await db.fetchval(
        "UPDATE deliveries SET claim_token = gen_random_uuid(), claimed_by = 'other',"
        " next_attempt_at = now() + interval '1 hour'"
        " WHERE claim_token IS NOT NULL AND 'msg_' || replace(id::text, '-', '') <> $1"
        " RETURNING id",
        first.headers["webhook-id"],
    )
    assert taken is not None
    with capture_logs() as logs:
        await asyncio.sleep(2.5)
    assert {r.headers["webhook-id"] for r in sink_server.received} == {first.headers["webhook-id"]}
    assert any(e["event"] == "lease_lost" and e["delivery_id"] == str(taken) for e in logs)
