"""What an API key holder can store is bounded: sinks per tenant, headers per sink and their
bytes; and the sink list is keyset-paginated like the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tests.support import (
    ADMIN_KEY,
    TENANT,
    TENANT_B,
    api_get,
    auth,
    create_sink,
)

WEBHOOK = {"Webhook": {"url": "https://127.0.0.1:9/x"}}


def body(tenant_id: str = TENANT, args: dict[str, Any] = WEBHOOK) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "name": "n", "description": "d", "event_sink_args": args}


async def test_sinks_per_tenant_are_capped(make_relay: Any, db: asyncpg.Connection) -> None:
    relay = await make_relay(api={"max_sinks_per_tenant": 3})
    # Concurrent creates cannot slip past the cap together.
    answers = await asyncio.gather(
        *(relay.post("/v1/event_sink", json=body(), headers=auth(ADMIN_KEY)) for _ in range(6))
    )
    assert sorted(r.status for r in answers) == [200, 200, 200, 409, 409, 409]
    refused = next(r for r in answers if r.status == 409)
    error = (await refused.json())["error"]
    assert error["code"] == "limit_exceeded"
    assert "api.max_sinks_per_tenant" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM event_sinks") == 3
    # Another tenant has its own count; a deleted sink frees its place.
    await create_sink(relay, WEBHOOK, tenant_id=TENANT_B)
    victim = await db.fetchval("SELECT id FROM event_sinks WHERE tenant_id = $1 LIMIT 1", TENANT)
    await relay.delete(f"/v1/event_sink/{victim}", headers=auth(ADMIN_KEY))
    await create_sink(relay, WEBHOOK)


async def test_headers_are_capped_in_count_and_bytes(make_relay: Any) -> None:
    relay = await make_relay(api={"max_headers_per_sink": 4, "max_header_bytes": 1000})
    cases = {
        "count": {f"X-H{i}": "v" for i in range(5)},
        "bytes": {"X-A": "a" * 600, "X-B": "b" * 600},
    }
    for case, headers in cases.items():
        args = {"Webhook": {"url": "https://127.0.0.1:9/x", "headers": headers}}
        resp = await relay.post("/v1/event_sink", json=body(args=args), headers=auth(ADMIN_KEY))
        assert resp.status == 400, case
        message = (await resp.json())["error"]["message"]
        assert message.startswith("event_sink_args.Webhook.headers "), message
    await create_sink(
        relay, {"Webhook": {"url": "https://127.0.0.1:9/x", "headers": {"X-A": "a" * 900}}}
    )
    # What the review sent, 32 headers of 30 KB each, against the default caps.
    relay = await make_relay(server={"max_body_bytes": 2_000_000})
    headers = {f"X-H{i}": "v" * 30_000 for i in range(32)}
    args = {"Webhook": {"url": "https://127.0.0.1:9/x", "headers": headers}}
    resp = await relay.post("/v1/event_sink", json=body(args=args), headers=auth(ADMIN_KEY))
    assert resp.status == 400
    assert "api.max_header_bytes" in (await resp.json())["error"]["message"]


async def test_the_sink_list_is_paginated(relay: Any) -> None:
    made = [(await create_sink(relay, WEBHOOK, name=f"s{i}"))["id"] for i in range(5)]
    await create_sink(relay, WEBHOOK, tenant_id=TENANT_B)
    # The first page with the default limit is the whole list: the Scanner shape.
    status, first = await api_get(relay, "/v1/event_sink")
    assert status == 200
    assert [s["id"] for s in first["data"]["event_sinks"]] == made
    assert first["pagination"] is None
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        status, page = await api_get(relay, "/v1/event_sink", **params)
        assert status == 200, page
        seen += [s["id"] for s in page["data"]["event_sinks"]]
        pages += 1
        if page["pagination"] is None:
            break
        cursor = page["pagination"]["next_cursor"]
        # A cursor is only a position: another tenant's list with it shows that tenant's sinks.
        status, other = await api_get(relay, "/v1/event_sink", tenant_id=TENANT_B, cursor=cursor)
        assert status == 200
        assert all(s["tenant_id"] == TENANT_B for s in other["data"]["event_sinks"])
    assert (seen, pages) == (made, 3)


async def test_bad_list_parameters_are_400(relay: Any) -> None:
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"cursor": "not-a-cursor"}):
        status, answer = await api_get(relay, "/v1/event_sink", **params)
        assert status == 400, params
        assert answer["error"]["code"] == "invalid_argument"


async def test_a_tenant_allowed_more_than_a_page_still_gets_its_whole_list_first(
    make_relay: Any,
) -> None:
    # Scanner clients read one page: with a cap above the default page size, the default
    # page grows with the cap.
    relay = await make_relay(api={"max_sinks_per_tenant": 150})
    for i in range(120):
        await create_sink(relay, WEBHOOK, name=f"s{i}")
    status, first = await api_get(relay, "/v1/event_sink")
    assert status == 200
    assert (len(first["data"]["event_sinks"]), first["pagination"]) == (120, None)
