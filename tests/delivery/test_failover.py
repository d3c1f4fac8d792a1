"""Failover (sink option ``fallback_event_sink_id``) end to end, with real local receivers: a
delivery that ends dead hands its event to the fallback once, whatever the fallback's own
filters, the audit log and the delivery listing link the two, and a fallback's own death
fails over again along its chain."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from air_relay import model
from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from tests.support import (
    ADMIN_KEY,
    CATALOG,
    SLACK_INTEGRATION,
    Reply,
    api_get,
    audit_rows,
    auth,
    create_sink,
    dead_pagerduty_and_slack,
    make_sink_server,
    post_event,
    wait_final,
    wait_until,
)

EVENT = CATALOG[3]["example"]  # TaskProcessingFailedEvent
PD_KEY = "e93facc04764012d7bfb002500d5d1a6"
SLACK_OK = Reply(
    status=200,
    body=json.dumps({"ok": True, "channel": "C0123", "ts": "1700000000.000100"}),
    headers={"Content-Type": "application/json"},
)


async def deliveries(relay: Any) -> dict[str, dict[str, Any]]:
    status, body = await api_get(relay, "/v1/delivery", limit=100)
    assert status == 200, body
    return {d["event_sink_id"]: d for d in body["data"]["deliveries"]}


async def test_a_dead_pagerduty_page_fails_over_to_slack_once(
    make_relay: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    pagerduty, slack, relay = await dead_pagerduty_and_slack(make_relay, aiohttp_server, SLACK_OK)
    # The fallback takes only case events: as a fallback it gets this one all the same.
    to_slack = await create_sink(
        relay,
        {"Slack": {"channel_id": "C0123", "slack_integration_id": SLACK_INTEGRATION}},
        events=["CaseCreatedEvent"],
    )
    to_pd = await create_sink(
        relay, {"PagerDuty": {"integration_key": PD_KEY}}, fallback_event_sink_id=to_slack["id"]
    )
    resp = await post_event(relay, EVENT)
    assert (await resp.json())["deliveries"] == 1  # the fallback is no subscriber
    await wait_final(db, 2)

    (page,) = pagerduty.received
    assert page.path == "/v2/enqueue"
    (message,) = await slack.wait_for(1)
    assert message.path == "/api/chat.postMessage"
    assert message.json()["channel"] == "C0123"

    listed = await deliveries(relay)
    dead, saved = listed[to_pd["id"]], listed[to_slack["id"]]
    assert (dead["status"], saved["status"]) == ("dead", "delivered")
    assert dead["event_id"] == saved["event_id"]
    assert (dead["failed_over_to"], dead["failed_over_from"]) == (saved["id"], None)
    assert (saved["failed_over_from"], saved["failed_over_to"]) == (dead["id"], None)

    rows = {r["event_sink_id"]: r for r in await audit_rows(relay)}
    assert (rows[to_pd["id"]]["status_code"], rows[to_pd["id"]]["outcome"]) == (404, "failure")
    assert rows[to_pd["id"]]["failed_over_to"] == saved["id"]
    assert rows[to_slack["id"]]["outcome"] == "success"
    assert rows[to_slack["id"]]["failed_over_from"] == dead["id"]

    # An operator retry that ends dead again fails over no second time.
    resp = await relay.post(f"/v1/delivery/{dead['id']}/retry", headers=auth(ADMIN_KEY))
    assert resp.status == 202, await resp.text()

    async def dead_again() -> bool:
        row = await db.fetchrow("SELECT status, attempts FROM deliveries WHERE id = $1::uuid",
                                dead["id"])  # fmt: skip
        return row is not None and (row["status"], row["attempts"]) == ("dead", 2)

    await wait_until(dead_again)
    assert len(pagerduty.received) == 2
    assert len(slack.received) == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 2


async def test_a_dead_fallback_fails_over_along_its_chain(
    make_relay: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    servers = [await make_sink_server(aiohttp_server) for _ in range(3)]
    servers[0].default = servers[1].default = Reply(status=410, body="gone")
    relay = await make_relay()
    last = await create_sink(relay, {"Webhook": {"url": servers[2].url()}}, active=True)
    middle = await create_sink(
        relay,
        {"Webhook": {"url": servers[1].url()}},
        fallback_event_sink_id=last["id"],
        organization_ids=["nobody"],
    )
    first = await create_sink(
        relay,
        {"Webhook": {"url": servers[0].url()}},
        fallback_event_sink_id=middle["id"],
        organization_ids=[str(EVENT["organizationId"])],
    )
    # The last sink subscribes too: it gets the event once directly and once as fallback.
    resp = await post_event(relay, EVENT)
    assert (await resp.json())["deliveries"] == 2
    await wait_final(db, 4)
    assert [len(s.received) for s in servers] == [1, 1, 2]
    listed = await api_get(relay, "/v1/delivery", limit=100)
    by_id = {d["id"]: d for d in listed[1]["data"]["deliveries"]}
    start = next(d for d in by_id.values() if d["event_sink_id"] == first["id"])
    hop = by_id[start["failed_over_to"]]
    end = by_id[hop["failed_over_to"]]
    assert (hop["event_sink_id"], hop["status"]) == (middle["id"], "dead")
    assert (end["event_sink_id"], end["status"], end["failed_over_from"]) == (
        last["id"],
        "delivered",
        hop["id"],
    )


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, 1, 2)
    yield pool
    await pool.close()


async def _webhook_sink(
    pool: asyncpg.Pool, name: str, fallback: uuid.UUID | None = None
) -> uuid.UUID:
    fields = model.SinkFields(
        "tenant-a", name, "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, True,
        fallback_event_sink_id=fallback,
    )  # fmt: skip
    sink = await repo.insert_sink(pool, uuid.uuid4(), fields, max_per_tenant=10)
    assert sink is not None
    return sink.id


def _dead(claim: model.ClaimedDelivery) -> model.Completion:
    now = datetime.now(UTC)
    attempt = model.AttemptRecord(1, model.FAILURE, 404, "http_404", "", 1, None, now)
    return model.Completion(claim, model.DEAD, None, "http_404", [attempt])


async def test_sinks_sharing_a_fallback_fail_an_event_over_to_it_once(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """Two dead deliveries of one event whose sinks share a fallback: one delivery to the
    fallback, named by both, whether they die in one batch or one after the other."""
    fallback = await _webhook_sink(pool, "f")
    sinks = [await _webhook_sink(pool, name, fallback) for name in ("a", "b")]

    async def claim_both() -> list[model.ClaimedDelivery]:
        claims = await repo.claim_deliveries(
            pool, sink_types=["Webhook"], limit=10, lease_seconds=60, worker="w"
        )
        assert {c.event_sink_id for c in claims} == set(sinks)
        return list(claims)

    async def failover_rows(event_id: uuid.UUID) -> tuple[list[Any], set[Any]]:
        to_fallback = await db.fetch(
            "SELECT id FROM deliveries WHERE event_id = $1 AND event_sink_id = $2",
            event_id,
            fallback,
        )
        linked = await db.fetch(
            "SELECT failed_over_to FROM deliveries WHERE event_id = $1 AND status = 'dead'",
            event_id,
        )
        return [r["id"] for r in to_fallback], {r["failed_over_to"] for r in linked}

    for one_batch in (True, False):
        # The fallback is switched off while the event is routed: it is no subscriber.
        await db.execute("UPDATE event_sinks SET active = (id <> $1)", fallback)
        event_id = uuid.uuid4()
        await repo.ingest_events(
            pool, [model.NewEvent(event_id, "tenant-a", "E", 1, b"{}")], timeout=5
        )
        await db.execute("UPDATE event_sinks SET active = true")
        claims = await claim_both()
        if one_batch:
            await repo.complete_deliveries(pool, [_dead(c) for c in claims])
        else:
            for claim in claims:
                await repo.complete_deliveries(pool, [_dead(claim)])
        ids, linked = await failover_rows(event_id)
        assert len(ids) == 1, (one_batch, ids)
        assert linked == {ids[0]}, (one_batch, linked)
        # The failover delivery is due now: claim it out of the way of the next round.
        await db.execute("UPDATE deliveries SET status = 'delivered' WHERE id = $1", ids[0])
