"""Storm digests (the sink option ``digest``) end to end, with real local receivers: the first
event of a (eventName, organizationId) goes out at once, the rest of its window as one digest
per sink type; pairs are never merged; members finish with their digest; the audit log and the
delivery listing name the digest."""

# ruff: noqa: RUF001 (the digest headline has U+00D7, the multiplication sign)
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from standardwebhooks.webhooks import Webhook

from air_relay.db import digests
from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from air_relay.db.queries import QUERIES
from air_relay.model import ClaimedDelivery
from tests.sinks.test_slack import limit_problems
from tests.support import (
    SLACK_INTEGRATION,
    Reply,
    SinkServer,
    api_get,
    audit_rows,
    create_sink,
    dead_pagerduty_and_slack,
    insert_event_row,
    make_sink_server,
    post_event,
    wait_final,
    wait_until,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def failed_task(
    org: Any = 1, n: int = 0, name: str = "TaskProcessingFailedEvent"
) -> dict[str, Any]:
    return {
        "eventName": name,
        "organizationId": org,
        "data": {"taskId": f"task-{n}", "taskName": "Acquire evidence", "endpointName": "ws-7"},
    }


async def post_all(relay: Any, events: list[dict[str, Any]]) -> None:
    answers = await asyncio.gather(*(post_event(relay, e) for e in events))
    assert [a.status for a in answers] == [202] * len(events)


async def post_each(relay: Any, events: list[dict[str, Any]]) -> None:
    """One after the other: the events arrive in this order."""
    for event in events:
        assert (await post_event(relay, event)).status == 202


async def test_a_burst_reaches_slack_as_the_first_message_then_one_digest(
    make_relay: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    slack = await make_sink_server(aiohttp_server)
    slack.default = Reply(body='{"ok": true}', headers={"Content-Type": "application/json"})
    relay = await make_relay(slack={"api_base_url": slack.url("/api")})
    sink = await create_sink(
        relay,
        {"Slack": {"channel_id": "C0123", "slack_integration_id": SLACK_INTEGRATION}},
        digest={"window_seconds": 2},
    )
    assert sink["digest"] == {"window_seconds": 2, "max_listed": 20}
    await post_all(relay, [failed_task()])  # the first, then 199 more of the same at once
    await post_all(relay, [failed_task()] * 199)
    await wait_final(db, 200)
    first, digest = slack.received
    assert len(slack.received) == 2
    assert first.json()["text"].startswith("Task processing failed")
    message = digest.json()
    assert message["text"] == "199 × TaskProcessingFailedEvent in org 1 during the last 2 s"
    assert limit_problems(message) == []
    shown = json.dumps(message["blocks"], ensure_ascii=False)
    assert shown.count("• ") == 20 and "…and 179 more" in shown
    # Every member went out in the digest, delivered with its attempts.
    rows = await db.fetch("SELECT status, attempts, digest_id FROM deliveries")
    assert {(r["status"], r["attempts"]) for r in rows} == {("delivered", 1)}
    digest_ids = [r["digest_id"] for r in rows if r["digest_id"] is not None]
    assert len(digest_ids) == 199 and len(set(digest_ids)) == 1
    # The audit row of the digest names it and its member count; the listing shows it.
    (sent,) = [r for r in await audit_rows(relay) if r["digest_id"] is not None]
    assert (sent["digest_id"], sent["digest_count"], sent["outcome"]) == (
        str(digest_ids[0]),
        199,
        "success",
    )
    status, body = await api_get(relay, "/v1/delivery", limit=300)
    assert status == 200
    listed = body["data"]["deliveries"]
    assert sum(d["digest_id"] == str(digest_ids[0]) for d in listed) == 199
    assert sum(d["digest_id"] is None for d in listed) == 1


async def test_pairs_are_not_merged_and_a_webhook_digest_is_signed(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    await create_sink(
        relay,
        {"Webhook": {"url": sink_server.url(), "secret": SECRET}},
        # 2 s: room for the three firsts to go out before their pairs' next events arrive.
        digest={"window_seconds": 2, "max_listed": 2},
    )
    firsts = [failed_task(1), failed_task(1, name="TaskCompletedEvent"), failed_task("org-2")]
    await post_all(relay, firsts)
    await sink_server.wait_for(3)
    # The digest of (TaskProcessingFailedEvent, 1) fails once: it is retried as one.
    sink_server.script.append(Reply(status=503))
    await post_each(relay, [failed_task(1, n) for n in range(1, 4)])
    await post_all(relay, [failed_task(1, 9, "TaskCompletedEvent"), failed_task("org-2", 9)])
    await wait_final(db, 8)
    singles = [r.json() for r in sink_server.received[:3]]
    assert sorted(str((e["eventName"], e["organizationId"])) for e in singles) == sorted(
        str((e["eventName"], e["organizationId"])) for e in firsts
    )
    digests = [r for r in sink_server.received[3:] if "digest" in r.json()]
    by_pair: dict[tuple[str, Any], list[Any]] = {}
    for r in digests:
        by_pair.setdefault((r.json()["eventName"], r.json()["organizationId"]), []).append(r)
    assert set(by_pair) == {
        ("TaskProcessingFailedEvent", 1),
        ("TaskCompletedEvent", 1),
        ("TaskProcessingFailedEvent", "org-2"),
    }
    storm = by_pair[("TaskProcessingFailedEvent", 1)][-1]
    body = Webhook(SECRET).verify(storm.body, storm.headers)
    assert set(body) == {"eventName", "organizationId", "digest"}
    assert set(body["digest"]) == {"count", "window_start", "window_end", "events"}
    assert body["digest"]["count"] == 3
    assert body["digest"]["window_start"] < body["digest"]["window_end"]
    assert [e["data"]["taskId"] for e in body["digest"]["events"]] == ["task-1", "task-2"]
    assert by_pair[("TaskCompletedEvent", 1)][-1].json()["digest"]["count"] == 1
    # The first digest to arrive failed once: its retry is the same delivery (same
    # webhook-id), and its members end delivered with the digest's two attempts.
    (retried,) = [tries for tries in by_pair.values() if len(tries) == 2]
    assert retried[0].headers["webhook-id"] == retried[1].headers["webhook-id"]
    assert retried[0].body == retried[1].body
    count = retried[1].json()["digest"]["count"]
    rows = await db.fetch(
        "SELECT status, attempts FROM deliveries WHERE digest_id IS NOT NULL ORDER BY attempts"
    )
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 1)] * (5 - count) + [
        ("delivered", 2)
    ] * count


async def test_a_pagerduty_digest_is_one_trigger_naming_the_group(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=202, body='{"status": "success"}')
    relay = await make_relay(pagerduty={"events_url": sink_server.url("/v2/enqueue")})
    await create_sink(
        relay,
        {"PagerDuty": {"integration_key": "pd-routing-key-0123456789abcdef"}},
        digest={"window_seconds": 1, "max_listed": 2},
    )
    await post_all(relay, [failed_task(1, 0)])
    await post_each(relay, [failed_task(1, n) for n in range(1, 4)])
    await wait_final(db, 4)
    single, digest = (r.json() for r in sink_server.received)
    assert single["dedup_key"] != digest["dedup_key"]
    (window,) = await db.fetch("SELECT id FROM digest_windows WHERE member_count = 3")
    assert digest["dedup_key"] == (
        f"air-relay:digest:TaskProcessingFailedEvent:org-1:{window['id'].hex}"
    )
    assert digest["event_action"] == "trigger"
    payload = digest["payload"]
    assert payload["summary"] == (
        "[AIR] 3 × TaskProcessingFailedEvent in org 1 during the last 1 s"
    )
    assert (payload["class"], payload["group"], payload["severity"]) == (
        "TaskProcessingFailedEvent",
        "1",
        "error",
    )
    details = payload["custom_details"]
    assert (details["count"], details["more"]) == (3, 1)
    assert [e["data"]["taskId"] for e in details["events"]] == ["task-1", "task-2"]


async def test_the_digest_option_is_validated_stored_and_echoed(
    relay: Any, sink_server: SinkServer
) -> None:
    args = {"Webhook": {"url": sink_server.url()}}
    sink = await create_sink(relay, args)
    assert sink["digest"] is None
    bad: dict[str, list[Any]] = {
        "digest.window_seconds": [{"window_seconds": 0}, {"window_seconds": 3601},
                                  {"window_seconds": "60"}, {"window_seconds": True}, {}],
        "digest.max_listed": [{"window_seconds": 60, "max_listed": 0},
                              {"window_seconds": 60, "max_listed": 101}],
        "digest.every": [{"window_seconds": 60, "every": 1}],
        "digest": [[60], "60"],
    }  # fmt: skip
    headers = {"Authorization": "Bearer admin-api-key"}
    for field, values in bad.items():
        for value in values:
            resp = await relay.put(
                f"/v1/event_sink/{sink['id']}", json={"digest": value}, headers=headers
            )
            assert resp.status == 400, value
            assert field in (await resp.json())["error"]["message"], value
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}",
        json={"digest": {"window_seconds": 3600, "max_listed": 100}},
        headers=headers,
    )
    assert (await resp.json())["event_sink"]["digest"] == {
        "window_seconds": 3600,
        "max_listed": 100,
    }
    _, body = await api_get(relay, f"/v1/event_sink/{sink['id']}")
    assert body["event_sink"]["digest"] == {"window_seconds": 3600, "max_listed": 100}
    resp = await relay.put(f"/v1/event_sink/{sink['id']}", json={"name": "x"}, headers=headers)
    assert (await resp.json())["event_sink"]["digest"]["window_seconds"] == 3600
    resp = await relay.put(f"/v1/event_sink/{sink['id']}", json={"digest": None}, headers=headers)
    assert (await resp.json())["event_sink"]["digest"] is None


async def test_retention_purges_old_windows_that_held_nothing_or_whose_digest_is_gone(
    db_dsn: str, db: asyncpg.Connection
) -> None:
    async def window(closed_minutes_ago: int, carrier: uuid.UUID | None) -> uuid.UUID:
        window_id = uuid.uuid4()
        await db.execute(
            "INSERT INTO digest_windows (id, event_sink_id, tenant_id, event_name, org_text,"
            " organization_id, window_seconds, max_listed, opened_at, closes_at, opener_id,"
            " carrier_id) VALUES ($1, $2, 't', 'E', '1', '1', 60, 20,"
            " now() - make_interval(mins => $3 + 1), now() - make_interval(mins => $3), $2, $4)",
            window_id,
            uuid.uuid4(),
            closed_minutes_ago,
            carrier,
        )
        return window_id

    event_id, kept_carrier, audited_carrier = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insert_event_row(db, event_id)
    await db.execute(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status)"
        " VALUES ($1, $2, $3, 't', 'Webhook', 'delivered')",
        kept_carrier,
        event_id,
        uuid.uuid4(),
    )
    # A purged carrier whose attempts are still in the audit log (they go by sealed batch).
    await db.execute(
        "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
        " organization_id, event_sink_id, event_sink_type, attempt, outcome, duration_ms)"
        " VALUES ($1, 't', $2, 'E', '1', $3, 'Webhook', 1, 'success', 1)",
        audited_carrier,
        event_id,
        uuid.uuid4(),
    )
    # Gone: an old window that held nothing, and one whose digest was purged.
    await window(90, None)
    await window(90, uuid.uuid4())
    kept = {
        await window(90, kept_carrier),  # its carrier delivery is still kept
        await window(90, audited_carrier),  # the audit log still names its digest
        await window(10, None),  # closed after the cutoff
        await window(10, uuid.uuid4()),
    }
    cutoff = await db.fetchval("SELECT now() - interval '1 hour'")
    pool = await create_pool(db_dsn, 1, 2)
    try:
        assert await digests.purge_windows(pool, cutoff, 10) == 2
        assert await digests.purge_windows(pool, cutoff, 10) == 0
    finally:
        await pool.close()
    assert {r["id"] for r in await db.fetch("SELECT id FROM digest_windows")} == kept


async def test_a_recovered_sink_wakes_its_backlog_but_not_a_digest_waiting_for_its_window(
    db_dsn: str, db: asyncpg.Connection
) -> None:
    sink_id, event_id = uuid.uuid4(), uuid.uuid4()
    await insert_event_row(db, event_id)

    async def pending(digest_id: uuid.UUID | None, attempts: int) -> uuid.UUID:
        delivery_id = uuid.uuid4()
        await db.execute(
            "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,"
            " attempts, digest_id, created_at, updated_at, next_attempt_at) VALUES ($1, $2,"
            " $3, 't', 'Webhook', $4, $5, now() - interval '1 minute',"
            " now() - interval '1 minute', now() + interval '1 hour')",
            delivery_id,
            event_id,
            sink_id,
            attempts,
            digest_id,
        )
        return delivery_id

    backed_off = await pending(None, 3)
    untried_digest = await pending(uuid.uuid4(), 0)
    failed_digest = await pending(uuid.uuid4(), 2)
    pool = await create_pool(db_dsn, 1, 2)
    try:
        assert await repo.wake_sink_backlog(pool, sink_id, datetime.now(UTC), limit=10) == 2
    finally:
        await pool.close()
    rows = await db.fetch("SELECT id FROM deliveries WHERE next_attempt_at < now()")
    assert {r["id"] for r in rows} == {backed_off, failed_digest}
    assert untried_digest not in {r["id"] for r in rows}


async def test_a_dead_digest_fails_every_member_over_to_the_fallback(
    make_relay: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    pagerduty, slack, relay = await dead_pagerduty_and_slack(
        make_relay,
        aiohttp_server,
        Reply(body='{"ok": true}', headers={"Content-Type": "application/json"}),
    )
    # Slack subscribes to case events only: what it gets here, it gets as the fallback.
    to_slack = await create_sink(
        relay,
        {"Slack": {"channel_id": "C0123", "slack_integration_id": SLACK_INTEGRATION}},
        events=["CaseCreatedEvent"],
    )
    to_pd = await create_sink(
        relay,
        {"PagerDuty": {"integration_key": "pd-routing-key-0123456789abcdef"}},
        digest={"window_seconds": 2},
        fallback_event_sink_id=to_slack["id"],
    )
    await post_all(relay, [failed_task(1, 0)])
    await post_each(relay, [failed_task(1, n) for n in range(1, 6)])
    # The first page dies alone, then the digest of the other five: all six reach Slack.
    await slack.wait_for(6)
    pd_rows = await db.fetch(
        "SELECT id, event_id, status, failed_over_to FROM deliveries WHERE event_sink_id = $1",
        uuid.UUID(to_pd["id"]),
    )
    assert len(pd_rows) == 6 and {r["status"] for r in pd_rows} == {"dead"}
    assert all(r["failed_over_to"] is not None for r in pd_rows)
    _, digest = (r.json() for r in pagerduty.received)
    assert digest["dedup_key"].startswith("air-relay:digest:")
    assert digest["payload"]["custom_details"]["count"] == 5

    async def all_delivered() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE event_sink_id = $1 AND status = 'delivered'",
            uuid.UUID(to_slack["id"]),
        )
        return bool(n == 6)

    await wait_until(all_delivered)
    slack_rows = await db.fetch(
        "SELECT id, event_id, failed_over_from FROM deliveries WHERE event_sink_id = $1",
        uuid.UUID(to_slack["id"]),
    )
    assert len(slack.received) == 6
    assert {r["event_id"] for r in slack_rows} == {r["event_id"] for r in pd_rows}
    assert {(r["failed_over_from"], r["id"]) for r in slack_rows} == {
        (r["id"], r["failed_over_to"]) for r in pd_rows
    }


def task_ids(received: Any) -> list[Any]:
    """What each request carried: a single event's taskId, or a digest's list of them."""
    out: list[Any] = []
    for r in received:
        body = r.json()
        if "digest" in body:
            out.append([e["data"]["taskId"] for e in body["digest"]["events"]])
        else:
            out.append(body["data"]["taskId"])
    return out


async def test_a_retried_dead_digest_sends_each_event_once(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=404)
    sink = await create_sink(
        relay, {"Webhook": {"url": sink_server.url()}}, digest={"window_seconds": 2}
    )
    sink_id = uuid.UUID(sink["id"])
    await post_all(relay, [failed_task(1, 0)])
    await sink_server.wait_for(1)
    await post_each(relay, [failed_task(1, n) for n in range(1, 4)])

    async def settled(status: str, n: int = 4) -> bool:
        rows = await db.fetch("SELECT status FROM deliveries WHERE event_sink_id = $1", sink_id)
        return [r["status"] for r in rows] == [status] * n

    await wait_until(lambda: settled("dead"))
    assert task_ids(sink_server.received) == ["task-0", ["task-1", "task-2", "task-3"]]
    headers = {"Authorization": "Bearer admin-api-key"}

    # The receiver is back: a bulk retry of every dead delivery sends each event once.
    sink_server.default = Reply(status=200)
    resp = await relay.post(
        "/v1/delivery/retry",
        json={"tenant_id": sink["tenant_id"], "event_sink_id": sink["id"]},
        headers=headers,
    )
    assert resp.status == 202, await resp.text()
    await wait_until(lambda: settled("delivered"))
    retried = task_ids(sink_server.received[2:])
    assert sorted(map(str, retried)) == sorted(map(str, ["task-0", ["task-1", "task-2", "task-3"]]))

    # Only the carrier retried (its digest dead again): its members go with it, none stays
    # dead.
    carrier = await db.fetchval("SELECT carrier_id FROM digest_windows WHERE member_count = 3")
    await db.execute(
        "UPDATE deliveries SET status = 'dead' WHERE digest_id IS NOT NULL AND event_sink_id = $1",
        sink_id,
    )
    resp = await relay.post(f"/v1/delivery/{carrier}/retry", headers=headers)
    assert resp.status == 202, await resp.text()
    await wait_until(lambda: settled("delivered"))
    assert task_ids(sink_server.received[4:]) == [["task-1", "task-2", "task-3"]]

    # A replay of everything delivered sends each event once again, the digest as one.
    resp = await relay.post(
        f"/v1/event_sink/{sink_id}/replay",
        json={"since": "2000-01-01T00:00:00Z", "status": "delivered"},
        headers=headers,
    )
    assert (resp.status, await resp.json()) == (202, {"data": {"requeued": 4}})
    await wait_until(lambda: settled("delivered"))
    assert sorted(map(str, task_ids(sink_server.received[5:]))) == sorted(
        map(str, ["task-0", ["task-1", "task-2", "task-3"]])
    )

    # A member retried alone goes out on its own and leaves its digest.
    member = await db.fetchval(
        "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.digest_id IS NOT NULL AND d.id <> $1 ORDER BY e.received_at DESC LIMIT 1",
        carrier,
    )
    await db.execute("UPDATE deliveries SET status = 'dead' WHERE id = $1", member)
    resp = await relay.post(f"/v1/delivery/{member}/retry", headers=headers)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["data"]["delivery"]["digest_id"] is None
    await wait_until(lambda: settled("delivered"))
    assert task_ids(sink_server.received[7:]) == ["task-3"]


async def test_a_nul_in_a_dead_digests_error_still_finishes_its_members(
    make_relay: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    # PostgreSQL text takes no NUL: the members' last_error is written as the carrier's is
    # (NUL replaced), or the digest's completion failed and its members stayed held.
    slack = await make_sink_server(aiohttp_server)
    slack.default = Reply(
        body='{"ok": false, "error": "weird\\u0000code"}',
        headers={"Content-Type": "application/json"},
    )
    relay = await make_relay(slack={"api_base_url": slack.url("/api")})
    await create_sink(
        relay,
        {"Slack": {"channel_id": "C0123", "slack_integration_id": SLACK_INTEGRATION}},
        digest={"window_seconds": 1},
    )
    await post_all(relay, [failed_task(1, 0)])
    await post_each(relay, [failed_task(1, n) for n in range(1, 4)])

    async def all_dead() -> bool:
        n = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'dead'")
        return bool(n == 4)

    await wait_until(all_dead)
    errors = await db.fetch("SELECT last_error FROM deliveries")
    assert {r["last_error"] for r in errors} == {"weird\ufffdcode"}


async def test_routing_sends_a_reclaimed_opener_again_and_holds_others_in_its_window(
    db_dsn: str, db: asyncpg.Connection
) -> None:
    # No rows of deliveries are needed for routing to decide: a delivery claimed again after
    # a crash (no attempt recorded) that opened a window goes out on its own again; another
    # of its pair finds that window (and, its claim not being ours here, is lost).
    now = await db.fetchval("SELECT now()")
    sink_id = uuid.uuid4()

    def claimed() -> ClaimedDelivery:
        return ClaimedDelivery(
            id=uuid.uuid4(), event_id=uuid.uuid4(), event_sink_id=sink_id, tenant_id="t",
            sink_type="Webhook", attempts=0, claims=1, claim_token=uuid.uuid4(),
            event_name="E", organization_id=1, body=b"{}", sink_args={}, received_at=now,
        )  # fmt: skip

    opener = claimed()
    pool = await create_pool(db_dsn, 1, 2)
    try:
        assert await digests.route(pool, opener, 60, 20) is digests.Route.SEND
        assert await digests.route(pool, opener, 60, 20) is digests.Route.SEND
        assert await digests.route(pool, claimed(), 60, 20) is digests.Route.LOST
    finally:
        await pool.close()
    windows = await db.fetch(
        "SELECT opener_id FROM digest_windows WHERE event_sink_id = $1", sink_id
    )
    assert [w["opener_id"] for w in windows] == [opener.id]


async def test_a_dead_digests_member_loses_a_concurrent_failover_race_without_failing(
    db_dsn: str, db: asyncpg.Connection
) -> None:
    # Another instance fails the same event over to the same fallback (its own dead delivery
    # of a sink sharing it) and commits while the digest's members fail over: the unique index
    # stops the second failover delivery, as in complete_deliveries, and the member keeps
    # failed_over_to unset instead of failing the carrier's whole completion.
    fallback, sink, digest_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    event_id, member, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for sink_id, falls_back_to in ((fallback, None), (sink, fallback)):
        await db.execute(
            "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args,"
            " fallback_event_sink_id) VALUES ($1, 't', 'n', 'd', 'Webhook', '{}', $2)",
            sink_id,
            falls_back_to,
        )
    await db.execute(
        "INSERT INTO events (id, tenant_id, event_name, organization_id, body)"
        " VALUES ($1, 't', 'E', '1', '{}')",
        event_id,
    )
    await db.execute(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status,"
        " digest_id) VALUES ($1, $2, $3, 't', 'Webhook', 'dead', $4)",
        member,
        event_id,
        sink,
        digest_id,
    )
    rival = await asyncpg.connect(db_dsn)
    try:
        async with rival.transaction():
            await rival.execute(
                "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type,"
                " failed_over_from) VALUES ($1, $2, $3, 't', 'Webhook', $4)",
                uuid.uuid4(),
                event_id,
                fallback,
                other,
            )
            pool = await create_pool(db_dsn, 1, 1)
            fail_over = asyncio.create_task(
                pool.execute(QUERIES["digest_fail_over_members"], digest_id)
            )

            async def waiting() -> bool:
                n = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )
                return bool(n >= 1)

            await wait_until(waiting)
        await fail_over
        await pool.close()
    finally:
        await rival.close()
    assert await db.fetchval("SELECT failed_over_to FROM deliveries WHERE id = $1", member) is None
    assert (
        await db.fetchval("SELECT count(*) FROM deliveries WHERE event_sink_id = $1", fallback) == 1
    )
