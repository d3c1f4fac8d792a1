"""Sink health over HTTP: ``GET /v1/event_sink/{id}/health`` and ``GET /v1/status``, on a real
database with a real failing-then-recovering receiver; auth and tenant rules as the sink API."""

from __future__ import annotations

import uuid
from typing import Any

from tests.http.test_sinks_api import call
from tests.support import (
    CATALOG,
    TENANT,
    TENANT_B,
    TENANT_B_KEY,
    Reply,
    SinkServer,
    create_sink,
    post_event,
    wait_until,
)

HEALTH_KEYS = [
    "event_sink_id", "tenant_id", "state", "since", "last_success_at", "last_failure_at",
    "last_error", "last_status_code", "consecutive_failures", "pending", "dead",
    "oldest_pending_at", "delivered_last_hour", "failed_attempts_last_hour",
]  # fmt: skip


async def _health(relay: Any, sink_id: str) -> dict[str, Any]:
    status, body, _ = await call(relay, "GET", f"/v1/event_sink/{sink_id}/health")
    assert status == 200, body
    return dict(body)


async def _metrics(relay: Any) -> str:
    resp = await relay.get("/metrics")
    assert resp.status == 200
    return str(await resp.text())


async def test_health_follows_a_failing_then_recovering_sink(
    relay: Any, sink_server: SinkServer
) -> None:
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    idle = await _health(relay, sink["id"])
    assert list(idle) == HEALTH_KEYS
    assert (idle["state"], idle["since"], idle["tenant_id"]) == ("idle", None, TENANT)

    sink_server.default = Reply(status=503, body="down")
    assert (await post_event(relay, CATALOG[0]["example"])).status == 202

    async def failing() -> bool:
        return (await _health(relay, sink["id"]))["state"] == "failing"

    await wait_until(failing)
    h = await _health(relay, sink["id"])
    assert (h["last_error"], h["last_status_code"]) == ("http_503", 503)
    assert h["consecutive_failures"] >= 1 and h["failed_attempts_last_hour"] >= 1
    assert h["since"].endswith("Z") and h["last_failure_at"] >= h["since"]
    assert h["last_success_at"] is None
    labels = f'{{sink_id="{sink["id"]}",sink_type="Webhook"}}'
    scraped = await _metrics(relay)
    assert f"air_relay_sink_failing{labels} 1.0" in scraped
    assert f"air_relay_sink_deliveries_pending{labels} 1.0" in scraped
    assert f"air_relay_sink_deliveries_dead{labels} 0.0" in scraped
    assert f"air_relay_sink_consecutive_failures{labels} " in scraped
    assert f"air_relay_sink_oldest_pending_age_seconds{labels} " in scraped

    sink_server.default = Reply(status=200)

    async def delivered() -> bool:
        return (await _health(relay, sink["id"]))["delivered_last_hour"] == 1

    await wait_until(delivered, timeout=15)
    h = await _health(relay, sink["id"])
    assert (h["state"], h["consecutive_failures"], h["pending"], h["dead"]) == ("healthy", 0, 0, 0)
    assert h["since"] == h["last_success_at"]
    assert h["last_error"] == "http_503"  # the latest failure stays readable
    assert h["oldest_pending_at"] is None

    scraped = await _metrics(relay)
    assert f"air_relay_sink_failing{labels} 0.0" in scraped
    assert f"air_relay_sink_deliveries_pending{labels} 0.0" in scraped
    assert f"air_relay_sink_oldest_pending_age_seconds{labels} 0.0" in scraped

    status, body, _ = await call(relay, "GET", "/v1/status", params={"tenant_id": TENANT})
    assert status == 200
    assert body["tenant_id"] == TENANT
    (row,) = body["sinks"]
    assert row == {**h, "name": "test sink", "event_sink_type": "Webhook"}
    assert body["totals"] == {
        "sinks": 1, "healthy": 1, "failing": 0, "idle": 0, "inactive": 0, "pending": 0,
        "dead": 0, "oldest_pending_at": None, "delivered_last_hour": 1,
        "failed_attempts_last_hour": h["failed_attempts_last_hour"],
    }  # fmt: skip


async def test_inactive_sink_and_tenant_rules(relay: Any) -> None:
    args = {"Webhook": {"url": "http://127.0.0.1:9/hook"}}
    mine = await create_sink(relay, args, active=False)
    theirs = await create_sink(relay, args, tenant_id=TENANT_B)
    assert (await _health(relay, mine["id"]))["state"] == "inactive"

    # A key of tenant B: its own sink yes, tenant A's sink is not found, A's status forbidden.
    status, body, _ = await call(relay, "GET", f"/v1/event_sink/{theirs['id']}/health",
                                 key=TENANT_B_KEY)  # fmt: skip
    assert (status, body["state"]) == (200, "idle")
    for sink_id in (mine["id"], str(uuid.uuid4()), "not-a-uuid"):
        status, body, _ = await call(
            relay, "GET", f"/v1/event_sink/{sink_id}/health", key=TENANT_B_KEY
        )
        assert (status, body["error"]["code"]) == (404, "not_found"), body
    status, body, _ = await call(
        relay, "GET", "/v1/status", key=TENANT_B_KEY, params={"tenant_id": TENANT}
    )
    assert status == 403
    status, body, _ = await call(
        relay, "GET", "/v1/status", key=TENANT_B_KEY, params={"tenant_id": TENANT_B}
    )
    assert status == 200 and [s["event_sink_id"] for s in body["sinks"]] == [theirs["id"]]
    status, body, _ = await call(relay, "GET", "/v1/status", key=TENANT_B_KEY)
    assert status == 400
    # A deleted sink leaves the health answers and its gauges.
    assert (await call(relay, "DELETE", f"/v1/event_sink/{theirs['id']}"))[0] == 200
    assert (await call(relay, "GET", f"/v1/event_sink/{theirs['id']}/health"))[0] == 404
    scraped = await _metrics(relay)
    assert f'sink_id="{mine["id"]}"' in scraped and theirs["id"] not in scraped
    for path in (f"/v1/event_sink/{mine['id']}/health", f"/v1/status?tenant_id={TENANT}"):
        status, _, headers = await call(relay, "GET", path, key=None)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"


async def test_delivery_outcomes_are_exported_at_zero_from_the_start(relay: Any) -> None:
    """A series first seen at 1 has no increase() in Prometheus: the first dead delivery after
    a restart would not fire the dead-delivery alert."""
    scraped = await _metrics(relay)
    for sink_type in ("Webhook", "Slack", "PagerDuty"):
        for outcome in ("delivered", "dead"):
            line = f'air_relay_deliveries_total{{outcome="{outcome}",sink_type="{sink_type}"}} 0.0'
            assert line in scraped.splitlines(), (line, scraped)
