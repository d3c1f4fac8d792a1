"""Tenant isolation end to end: two tenants, each with sinks and events, and a key that holds
only tenant B. Nothing of tenant A is visible, changeable or reachable through B."""

from __future__ import annotations

from typing import Any

from tests.support import (
    ADMIN_KEY,
    INGEST_TOKEN,
    INGEST_TOKEN_B,
    TENANT,
    TENANT_B,
    TENANT_B_KEY,
    Reply,
    SinkServer,
    auth,
    create_sink,
    post_event,
    wait_until,
)


def event(tag: str) -> dict[str, Any]:
    return {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"tag": tag}}


async def test_two_tenants_never_meet(relay: Any, sink_server: SinkServer) -> None:
    sink_a = await create_sink(relay, {"Webhook": {"url": sink_server.url("/a")}})
    sink_b = await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/b")}}, tenant_id=TENANT_B, key=TENANT_B_KEY
    )
    assert (await (await post_event(relay, event("a"), INGEST_TOKEN)).json())["deliveries"] == 1
    assert (await (await post_event(relay, event("b"), INGEST_TOKEN_B)).json())["deliveries"] == 1

    # Events go only to their own tenant's sinks.
    received = await sink_server.wait_for(2)
    assert sorted((r.path, r.json()["data"]["tag"]) for r in received) == [("/a", "a"), ("/b", "b")]

    b = auth(TENANT_B_KEY)
    # Lists and creates for tenant A: 403. Tenant A's sink by id: 404, whatever the method.
    for path in (
        f"/v1/event_sink?tenant_id={TENANT}",
        f"/v1/audit_log?tenant_id={TENANT}",
        f"/v1/delivery?tenant_id={TENANT}",
    ):
        assert (await relay.get(path, headers=b)).status == 403, path
    create = {
        "tenant_id": TENANT,
        "name": "n",
        "description": "d",
        "event_sink_args": {"Webhook": {"url": sink_server.url("/x")}},
    }
    assert (await relay.post("/v1/event_sink", json=create, headers=b)).status == 403
    path_a = f"/v1/event_sink/{sink_a['id']}"
    assert (await relay.get(path_a, headers=b)).status == 404
    assert (await relay.put(path_a, json={"name": "taken"}, headers=b)).status == 404
    assert (await relay.delete(path_a, headers=b)).status == 404
    replay = {"since": "2000-01-01T00:00:00Z"}
    assert (await relay.post(f"{path_a}/replay", json=replay, headers=b)).status == 404

    # Tenant B's own views hold only tenant B's rows.
    async def b_delivered() -> bool:
        resp = await relay.get(f"/v1/delivery?tenant_id={TENANT_B}&status=delivered", headers=b)
        return len((await resp.json())["data"]["deliveries"]) == 1

    await wait_until(b_delivered)
    sinks = await (await relay.get(f"/v1/event_sink?tenant_id={TENANT_B}", headers=b)).json()
    assert [s["id"] for s in sinks["data"]["event_sinks"]] == [sink_b["id"]]
    audit = await (await relay.get(f"/v1/audit_log?tenant_id={TENANT_B}", headers=b)).json()
    assert {row["tenant_id"] for row in audit["data"]["audit_logs"]} == {TENANT_B}
    assert {row["event_sink_id"] for row in audit["data"]["audit_logs"]} == {sink_b["id"]}

    # Tenant A's delivery cannot be retried through B, and A's sink is untouched.
    admin = auth(ADMIN_KEY)
    listing = await relay.get(f"/v1/delivery?tenant_id={TENANT}", headers=admin)
    (delivery_a,) = (await listing.json())["data"]["deliveries"]
    retry = await relay.post(f"/v1/delivery/{delivery_a['id']}/retry", headers=b)
    assert retry.status == 404
    still = await (await relay.get(path_a, headers=admin)).json()
    assert still["event_sink"]["name"] == sink_a["name"]


async def test_an_ingest_token_is_no_api_key_and_the_reverse(relay: Any) -> None:
    for path in ("/v1/event_sink", "/v1/audit_log", "/v1/delivery"):
        resp = await relay.get(f"{path}?tenant_id={TENANT}", headers=auth(INGEST_TOKEN))
        assert resp.status == 401, path
    resp = await post_event(relay, event("x"), ADMIN_KEY)
    assert resp.status == 401


async def test_a_cursor_of_one_tenant_shows_nothing_of_it_to_another(
    relay: Any, sink_server: SinkServer
) -> None:
    sink_server.default = Reply(status=500)
    await create_sink(relay, {"Webhook": {"url": sink_server.url("/a")}})
    await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/b")}}, tenant_id=TENANT_B, key=TENANT_B_KEY
    )
    for tag in ("1", "2"):
        await post_event(relay, event(tag), INGEST_TOKEN)
    await post_event(relay, event("b"), INGEST_TOKEN_B)
    admin = auth(ADMIN_KEY)

    async def rows(tenant: str, **query: str) -> dict[str, Any]:
        params = {"tenant_id": tenant, **query}
        body: dict[str, Any] = await (
            await relay.get("/v1/audit_log", params=params, headers=admin)
        ).json()
        return body

    async def both_failed() -> bool:
        a, b = await rows(TENANT), await rows(TENANT_B)
        return len(a["data"]["audit_logs"]) >= 2 and len(b["data"]["audit_logs"]) >= 1

    await wait_until(both_failed)
    cursor = (await rows(TENANT, limit="1"))["pagination"]["next_cursor"]
    other = await rows(TENANT_B, cursor=cursor)
    assert {r["tenant_id"] for r in other["data"]["audit_logs"]} <= {TENANT_B}
