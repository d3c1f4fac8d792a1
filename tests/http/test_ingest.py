"""POST /v1/air/events: authentication, every error status, the commit before the 202."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from tests.support import (
    CATALOG,
    INGEST_TOKEN,
    INGEST_TOKEN_B,
    TENANT,
    TENANT_B,
    SinkServer,
    auth,
    create_sink,
    post_event,
    wait_until,
)

EVENT = {
    "eventName": "CaseCreatedEvent",
    "organizationId": 1,
    "data": {"id": "c1", "name": "n", "ownerUser": "u"},
}


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def test_accepts_and_commits_before_answering(relay: Any, db: asyncpg.Connection) -> None:
    raw = b'{"eventName": "CaseCreatedEvent", "organizationId": 1,  "data": {"id": "c1"}, "x": [1]}'
    resp = await post_event(relay, raw)
    assert resp.status == 202
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    body = await resp.json()
    assert set(body) == {"event_id", "deliveries"}  # committed, not spooled
    assert body["deliveries"] == 0
    assert await resp.read() == json.dumps(body).encode()  # as web.json_response writes it
    row = await db.fetchrow("SELECT * FROM events WHERE id = $1", uuid.UUID(body["event_id"]))
    assert row is not None
    # Kept byte for byte, extra top-level fields and odd spacing included.
    assert row["body"] == raw
    assert row["tenant_id"] == TENANT
    assert row["event_name"] == "CaseCreatedEvent"
    assert row["organization_id"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {INGEST_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
async def test_unauthorized(relay: Any, headers: dict[str, str], db: asyncpg.Connection) -> None:
    resp = await relay.post(
        "/v1/air/events", json=EVENT, headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await error_of(resp))["code"] == "unauthorized"
    assert await db.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_unsupported_media_type(relay: Any, ctype: str | None) -> None:
    headers = auth(INGEST_TOKEN)
    if ctype:
        headers["Content-Type"] = ctype
    resp = await relay.post("/v1/air/events", data=json.dumps(EVENT).encode(), headers=headers)
    assert resp.status == 415
    assert (await error_of(resp))["code"] == "unsupported_media_type"


async def test_json_content_type_with_charset_is_accepted(relay: Any) -> None:
    resp = await relay.post(
        "/v1/air/events",
        data=json.dumps(EVENT).encode(),
        headers={**auth(INGEST_TOKEN), "Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 202


async def test_payload_too_large(relay: Any, db: asyncpg.Connection) -> None:
    big = {**EVENT, "data": {"blob": "x" * 70_000}}  # test config: max_body_bytes 65536
    resp = await post_event(relay, big)
    assert resp.status == 413
    assert (await error_of(resp))["code"] == "payload_too_large"
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_payload_too_large_without_content_length(relay: Any) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 4096
        yield json.dumps(EVENT).encode()

    resp = await relay.post(
        "/v1/air/events",
        data=chunks(),
        headers={**auth(INGEST_TOKEN), "Content-Type": "application/json"},
    )
    assert resp.status == 413


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"eventName": NaN}',
        b"\xff\xfe{}",
        b"[" * 100_00 + b"]" * 100_00,  # a depth bomb
        b'{"eventName": "E", "organizationId": 1, "data": {"n": ' + b"9" * 5000 + b"}}",
        b'{"eventName": "E", "organizationId": 1, "data": {"n": 1e999999}}',
        b'{"eventName": "E", "organizationId": 1, "data": {"n": -Infinity}}',
        b'\xef\xbb\xbf{"eventName": "E", "organizationId": 1, "data": {}}',  # a UTF-8 BOM
    ],
)
async def test_invalid_json(relay: Any, raw: bytes) -> None:
    resp = await post_event(relay, raw)
    assert resp.status == 400
    assert (await error_of(resp))["code"] == "invalid_json"


@pytest.mark.parametrize(
    "event",
    [
        [],
        "string",
        {"organizationId": 1, "data": {}},
        {"eventName": "", "organizationId": 1, "data": {}},
        {"eventName": "   ", "organizationId": 1, "data": {}},
        {"eventName": 5, "organizationId": 1, "data": {}},
        {"eventName": "E", "data": {}},
        {"eventName": "E", "organizationId": True, "data": {}},
        {"eventName": "E", "organizationId": 1.5, "data": {}},
        {"eventName": "E", "organizationId": None, "data": {}},
        {"eventName": "E", "organizationId": "", "data": {}},
        {"eventName": "E", "organizationId": 2**70, "data": {}},
        {"eventName": "E", "organizationId": 1},
        {"eventName": "E", "organizationId": 1, "data": []},
        {"eventName": "E", "organizationId": 1, "data": "x"},
        {"eventName": "E" * 300, "organizationId": 1, "data": {}},
        {"eventName": "a\u0000", "organizationId": 1, "data": {}},
        {"eventName": "a\ud800", "organizationId": 1, "data": {}},
        {"eventName": "E", "organizationId": "x\u0000", "data": {}},
        {"eventName": "E", "organizationId": "\udfff", "data": {}},
    ],
)
async def test_invalid_envelope(relay: Any, event: Any, db: asyncpg.Connection) -> None:
    resp = await post_event(relay, json.dumps(event).encode())
    assert resp.status == 422
    assert (await error_of(resp))["code"] == "invalid_event"
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_organization_id_may_be_a_string(relay: Any, db: asyncpg.Connection) -> None:
    resp = await post_event(relay, {**EVENT, "organizationId": "org-7"})
    assert resp.status == 202
    assert await db.fetchval("SELECT organization_id FROM events") == "org-7"


async def test_every_catalog_example_is_accepted_without_mismatch(relay: Any) -> None:
    with capture_logs() as logs:
        for entry in CATALOG:
            resp = await post_event(relay, entry["example"])
            assert resp.status == 202, entry["eventName"]
    assert not [e for e in logs if e["event"] == "event_schema_mismatch"]
    metrics = await (await relay.get("/metrics")).text()
    for entry in CATALOG:
        assert (
            f'air_relay_events_received_total{{event_name="{entry["eventName"]}"}} 1.0' in metrics
        )


async def test_parameter_mismatch_is_logged_counted_and_accepted(relay: Any) -> None:
    event = {"eventName": "TaskCompletedEvent", "organizationId": 1, "data": {"id": 5, "extra": 1}}
    with capture_logs() as logs:
        resp = await post_event(relay, event)
    assert resp.status == 202
    (mismatch,) = [e for e in logs if e["event"] == "event_schema_mismatch"]
    assert "id is not string" in mismatch["problems"]
    assert "missing name" in mismatch["problems"]
    assert "unexpected extra" in mismatch["problems"]
    metrics = await (await relay.get("/metrics")).text()
    assert 'air_relay_event_schema_mismatches_total{event_name="TaskCompletedEvent"} 1.0' in metrics


async def test_unknown_event_goes_to_sinks_taking_all_events(relay: Any) -> None:
    await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/a"}})
    await create_sink(
        relay, {"Webhook": {"url": "http://127.0.0.1:9/b"}}, events=["CaseCreatedEvent"]
    )
    resp = await post_event(relay, {"eventName": "BrandNewEvent", "organizationId": 1, "data": {}})
    assert resp.status == 202
    assert (await resp.json())["deliveries"] == 1
    metrics = await (await relay.get("/metrics")).text()
    assert 'air_relay_events_received_total{event_name="other"} 1.0' in metrics


async def test_tenant_comes_from_the_token(relay: Any, db: asyncpg.Connection) -> None:
    await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/a"}}, tenant_id=TENANT)
    await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/b"}}, tenant_id=TENANT_B)
    await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/c"}}, tenant_id=TENANT_B)
    resp_a = await post_event(relay, EVENT, token=INGEST_TOKEN)
    resp_b = await post_event(relay, EVENT, token=INGEST_TOKEN_B)
    assert (await resp_a.json())["deliveries"] == 1
    assert (await resp_b.json())["deliveries"] == 2
    rows = await db.fetch(
        "SELECT d.tenant_id, s.tenant_id AS sink_tenant "
        "FROM deliveries d JOIN event_sinks s ON s.id = d.event_sink_id"
    )
    assert all(r["tenant_id"] == r["sink_tenant"] for r in rows)


@contextlib.asynccontextmanager
async def database_refusing(server_dsn: str, db_dsn: str) -> AsyncIterator[None]:
    """The test database refuses connections (and its sessions are ended) inside the block."""
    name = urlsplit(db_dsn).path.lstrip("/")
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )
    try:
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_database_unreachable_without_spool_is_503_then_recovers(
    make_relay: Any, server_dsn: str, db_dsn: str
) -> None:
    relay = await make_relay(
        run_dispatcher=False, database={"acquire_timeout_seconds": 1}, spool={"enabled": False}
    )
    async with database_refusing(server_dsn, db_dsn):
        for _ in range(3):
            resp = await post_event(relay, EVENT)
            assert resp.status == 503
            assert resp.headers["Retry-After"].isdigit()
            assert (await error_of(resp))["code"] == "unavailable"
        ready = await relay.get("/readyz")
        assert ready.status == 503
    resp = await post_event(relay, EVENT)
    assert resp.status == 202
    # Only the accepted event is in the outbox: no 202 was given for the others.
    check = await asyncpg.connect(db_dsn)
    try:
        assert await check.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await check.close()


async def test_database_unreachable_spools_then_drains_in_order_once(
    make_relay: Any, server_dsn: str, db_dsn: str, sink_server: SinkServer, tmp_path: Path
) -> None:
    relay = await make_relay(database={"acquire_timeout_seconds": 1})
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    first = await post_event(relay, {**EVENT, "data": {"seq": -1}})
    assert (await first.json())["deliveries"] == 1
    await sink_server.wait_for(1)
    ids = []
    with capture_logs() as logs:
        async with database_refusing(server_dsn, db_dsn):
            for seq in range(20):
                resp = await post_event(relay, {**EVENT, "data": {"seq": seq}})
                assert resp.status == 202
                body = await resp.json()
                assert body["deliveries"] is None and body["spooled"] is True
                ids.append(uuid.UUID(body["event_id"]))
            ready = await relay.get("/readyz")
            assert ready.status == 200
            assert (await ready.json())["spooling"] is True
            assert (await ready.json())["spooled"] == 20
            metrics = await (await relay.get("/metrics")).text()
            assert "air_relay_spool_events 20.0" in metrics
            assert "air_relay_events_spooled_total 20.0" in metrics
            assert list((tmp_path / "state" / "spool").glob("*.seg"))
        received = await sink_server.wait_for(21, timeout=30)
    assert next(e["event"] for e in logs if e["event"].startswith("spool_")) == "spool_started"
    (drained,) = [e for e in logs if e["event"] == "spool_drained"]
    assert drained["events"] == 20
    await asyncio.sleep(0.3)  # a second send, if any, would come now
    assert len(sink_server.received) == 21
    assert sorted(json.loads(r.body)["data"]["seq"] for r in received[1:]) == list(range(20))
    ready = await (await relay.get("/readyz")).json()
    assert ready["spooling"] is False and ready["spooled"] == 0
    check = await asyncpg.connect(db_dsn)
    try:
        rows = await check.fetch(
            "SELECT e.id FROM deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE e.id = ANY($1::uuid[]) ORDER BY d.created_at",
            ids,
        )
        assert [r["id"] for r in rows] == ids  # one delivery each, in arrival order
    finally:
        await check.close()
    assert not list((tmp_path / "state" / "spool").glob("*.seg"))
    # Back to the database: a new event is committed directly.
    resp = await post_event(relay, EVENT)
    assert (await resp.json())["deliveries"] == 1


async def test_full_spool_is_503(make_relay: Any, server_dsn: str, db_dsn: str) -> None:
    relay = await make_relay(
        run_dispatcher=False, database={"acquire_timeout_seconds": 1}, spool={"max_bytes": 600}
    )
    async with database_refusing(server_dsn, db_dsn):
        answers = [(await post_event(relay, EVENT)).status for _ in range(6)]
        assert 202 in answers and 503 in answers
        assert answers == sorted(answers)  # 202s until it is full, then only 503s
        resp = await post_event(relay, EVENT)
        assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
        assert (await error_of(resp))["code"] == "unavailable"
    spooled = answers.count(202)
    await wait_until(lambda: count_events(db_dsn, spooled), timeout=30)


async def count_events(dsn: str, expected: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM events") == expected)
    finally:
        await conn.close()


async def test_unknown_path_and_method_use_the_error_shape(relay: Any) -> None:
    resp = await relay.get("/nope")
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "not_found"
    resp = await relay.get("/v1/air/events")
    assert resp.status == 405
    assert (await error_of(resp))["code"] == "method_not_allowed"


async def test_ops_endpoints(relay: Any) -> None:
    assert (await relay.get("/healthz")).status == 200
    ready = await relay.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
    metrics = await relay.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = await metrics.text()
    for name in (
        "air_relay_deliveries_pending",
        "air_relay_oldest_pending_age_seconds",
        "# TYPE air_relay_events_received_total counter",
        "# TYPE air_relay_deliveries_total counter",
        "# TYPE air_relay_delivery_attempts_failed_total counter",
        "# TYPE air_relay_delivery_duration_seconds histogram",
    ):
        assert name in text


async def test_event_ids_are_random_version_4_uuids_never_repeated(relay: Any) -> None:
    ids = []
    for _ in range(5):
        resp = await post_event(relay, EVENT)
        assert resp.status == 202
        ids.append(uuid.UUID((await resp.json())["event_id"]))
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == len(ids)
