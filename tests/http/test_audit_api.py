"""The audit log, GET /v1/audit_log: rows made by the real delivery pipeline, and
volumes seeded with SQL for the filters and the keyset pagination."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tests.support import (
    ADMIN_KEY,
    INGEST_TOKEN_B,
    TENANT,
    TENANT_B,
    TENANT_B_KEY,
    Reply,
    SinkServer,
    api_get,
    auth,
    create_sink,
    post_event,
    wait_until,
)

ENTRY_KEYS = {
    "id",
    "timestamp",
    "tenant_id",
    "event_id",
    "event_name",
    "organization_id",
    "event_sink_id",
    "event_sink_type",
    "attempt",
    "outcome",
    "status_code",
    "error",
    "error_detail",  # an extension: why, when there was no answer
    "response_body",
    "duration_ms",
    "next_attempt_at",
    "seal_id",  # an extension: null until the row is sealed
    "failed_over_to",  # an extension: failover links, null unless the delivery failed over
    "failed_over_from",
    "digest_id",  # an extension: the storm digest an attempt sent, else null
    "digest_count",
}
BASE_TIME = datetime(2025, 1, 28, 12, 0, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"audit-signing-key-0123456789abcd").decode()
BEARER = "audit-bearer-token-0123456789"


def event(name: str = "AssetCreatedEvent", org: int | str = 1) -> dict[str, Any]:
    return {"eventName": name, "organizationId": org, "data": {"assetId": "a-1"}}


async def audit(
    relay: Any, key: str = ADMIN_KEY, **params: str | int
) -> tuple[int, dict[str, Any]]:
    return await api_get(relay, "/v1/audit_log", key, **params)


async def entries(relay: Any, **params: str | int) -> list[dict[str, Any]]:
    status, body = await audit(relay, **params)
    assert status == 200, body
    assert set(body) == {"data", "pagination"}
    assert set(body["data"]) == {"audit_logs"}
    logs: list[dict[str, Any]] = body["data"]["audit_logs"]
    return logs


async def wait_for_entries(relay: Any, count: int, **params: str | int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = await entries(relay, **params)
        return len(found) >= count

    await wait_until(enough)
    return found


def assert_error(status: int, body: Any, want_status: int, code: str, name: str = "") -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert name in body["error"]["message"], body


def parse_ts(value: str) -> datetime:
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


# --- rows made by the pipeline ---------------------------------------------------------------


async def test_failed_attempt_entry(relay: Any, sink_server: SinkServer) -> None:
    sink_server.default = Reply(status=404, body='{"error": "no such hook"}')
    sink = await create_sink(
        relay,
        {"Webhook": {"url": sink_server.url(), "secret": SECRET, "bearer_token": BEARER}},
    )
    before = datetime.now(UTC)
    resp = await post_event(relay, event("CaseFileSavedEvent", 42))
    assert resp.status == 202
    event_id = (await resp.json())["event_id"]
    (entry,) = await wait_for_entries(relay, 1)
    assert set(entry) == ENTRY_KEYS
    assert isinstance(entry["id"], int)
    assert before - timedelta(seconds=1) <= parse_ts(entry["timestamp"]) <= datetime.now(UTC)
    assert entry["tenant_id"] == TENANT
    assert entry["event_id"] == event_id
    assert entry["event_name"] == "CaseFileSavedEvent"
    assert entry["organization_id"] == 42  # AIR's type is kept
    assert entry["event_sink_id"] == sink["id"]
    assert entry["event_sink_type"] == "Webhook"
    assert entry["attempt"] == 1
    assert entry["outcome"] == "failure"
    assert entry["status_code"] == 404
    assert entry["error"] == "http_404"
    assert entry["response_body"] == '{"error": "no such hook"}'
    assert isinstance(entry["duration_ms"], int) and entry["duration_ms"] >= 0
    assert entry["next_attempt_at"] is None  # 404 is permanent: nothing follows
    # A permanent failure is not retried.
    assert len(sink_server.received) == 1
    status, body = await audit(relay)
    assert (status, body["pagination"]) == (200, None)
    text = json.dumps(body)
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text
    assert BEARER not in text


async def test_successful_attempt_entry(relay: Any, sink_server: SinkServer) -> None:
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    resp = await post_event(relay, event("AssetCreatedEvent", "org-7"))
    event_id = (await resp.json())["event_id"]
    (entry,) = await wait_for_entries(relay, 1)
    assert set(entry) == ENTRY_KEYS
    assert (entry["event_id"], entry["event_sink_id"]) == (event_id, sink["id"])
    assert entry["organization_id"] == "org-7"
    assert (entry["outcome"], entry["status_code"], entry["error"]) == ("success", 200, None)
    assert entry["attempt"] == 1
    assert entry["response_body"] == "ok"
    assert entry["next_attempt_at"] is None


async def test_retried_delivery_is_newest_first(relay: Any, sink_server: SinkServer) -> None:
    sink_server.script.append(Reply(status=503, body="busy"))
    sink_server.script.append(Reply(status=500, body="broken"))
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    resp = await post_event(relay, event())
    assert resp.status == 202
    logs = await wait_for_entries(relay, 3)
    assert [e["attempt"] for e in logs] == [3, 2, 1]
    assert [e["outcome"] for e in logs] == ["success", "failure", "failure"]
    assert [e["status_code"] for e in logs] == [200, 500, 503]
    assert [e["error"] for e in logs] == [None, "http_500", "http_503"]
    assert logs[0]["id"] > logs[1]["id"] > logs[2]["id"]
    assert parse_ts(logs[0]["timestamp"]) >= parse_ts(logs[1]["timestamp"])
    # A failure that is retried says when; the success has nothing after it.
    for failed in logs[1:]:
        assert failed["next_attempt_at"] is not None
        assert parse_ts(failed["next_attempt_at"]) >= parse_ts(failed["timestamp"])
    assert logs[0]["next_attempt_at"] is None
    assert len({e["event_id"] for e in logs}) == 1


async def test_response_body_is_cut_at_2_kib(relay: Any, sink_server: SinkServer) -> None:
    sink_server.default = Reply(status=410, body="x" * 10_000)
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, event())
    (entry,) = await wait_for_entries(relay, 1)
    assert entry["error"] == "http_410"
    assert entry["response_body"] == "x" * 2048


async def test_rows_outlive_their_sink(relay: Any, sink_server: SinkServer) -> None:
    sink_server.default = Reply(status=404)
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, event())
    await wait_for_entries(relay, 1)
    resp = await relay.delete(f"/v1/event_sink/{sink['id']}", headers=auth(ADMIN_KEY))
    assert resp.status == 200
    (entry,) = await entries(relay, event_sink_id=sink["id"])
    assert entry["event_sink_id"] == sink["id"]


async def test_tenants_never_see_each_others_rows(relay: Any, sink_server: SinkServer) -> None:
    sink_server.default = Reply(status=404)
    sink_a = await create_sink(relay, {"Webhook": {"url": sink_server.url("/a")}})
    sink_b = await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/b")}}, tenant_id=TENANT_B
    )
    await post_event(relay, event("AssetCreatedEvent"))
    await post_event(relay, event("CaseFileSavedEvent"), token=INGEST_TOKEN_B)
    (entry_a,) = await wait_for_entries(relay, 1)
    status, body = await audit(relay, key=TENANT_B_KEY, tenant_id=TENANT_B)

    async def b_has_row() -> bool:
        nonlocal status, body
        status, body = await audit(relay, key=TENANT_B_KEY, tenant_id=TENANT_B)
        return status == 200 and len(body["data"]["audit_logs"]) == 1

    await wait_until(b_has_row)
    (entry_b,) = body["data"]["audit_logs"]
    assert (entry_a["tenant_id"], entry_a["event_sink_id"]) == (TENANT, sink_a["id"])
    assert (entry_b["tenant_id"], entry_b["event_sink_id"]) == (TENANT_B, sink_b["id"])
    # Filtering tenant A by tenant B's sink finds nothing.
    assert await entries(relay, event_sink_id=sink_b["id"]) == []
    # Tenant B's key may not read tenant A.
    status, body = await audit(relay, key=TENANT_B_KEY, tenant_id=TENANT)
    assert_error(status, body, 403, "forbidden")


# --- seeded rows: filters and pagination ------------------------------------------------------


async def seed(
    db: asyncpg.Connection,
    rows: list[dict[str, Any]],
    *,
    tenant_id: str = TENANT,
    event_name: str = "AssetCreatedEvent",
    organization_id: int | str = 1,
    sink_id: uuid.UUID | None = None,
    sink_type: str = "Webhook",
) -> uuid.UUID:
    """One event and one finished delivery with the given attempt rows (inserted in order, so
    ids grow with the list). Returns the sink id."""
    sink_id = sink_id or uuid.uuid4()
    event_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        "INSERT INTO events (id, tenant_id, event_name, organization_id, body)"
        " VALUES ($1, $2, $3, $4, $5)",
        event_id,
        tenant_id,
        event_name,
        organization_id,
        b"{}",
    )
    # 'dead', so the running dispatcher leaves it alone.
    await db.execute(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status)"
        " VALUES ($1, $2, $3, $4, $5, 'dead')",
        delivery_id,
        event_id,
        sink_id,
        tenant_id,
        sink_type,
    )
    records = []
    for i, row in enumerate(rows):
        outcome = row.get("outcome", "failure")
        status = row.get("status_code", 500 if outcome == "failure" else 200)
        records.append(
            (
                delivery_id,
                tenant_id,
                event_id,
                event_name,
                organization_id,
                sink_id,
                sink_type,
                row.get("attempt", i + 1),
                outcome,
                status,
                row.get("error", f"http_{status}" if outcome == "failure" and status else None),
                row.get("response_body"),
                row.get("duration_ms", 5),
                row.get("next_attempt_at"),
                row.get("created_at", BASE_TIME + timedelta(seconds=i)),
            )
        )
    await db.executemany(
        "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
        " organization_id, event_sink_id, event_sink_type, attempt, outcome, status_code, error,"
        " response_body, duration_ms, next_attempt_at, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        records,
    )
    return sink_id


async def all_ids(db: asyncpg.Connection, tenant_id: str = TENANT) -> list[int]:
    rows = await db.fetch(
        "SELECT id FROM delivery_attempts WHERE tenant_id = $1 ORDER BY id DESC", tenant_id
    )
    return [r["id"] for r in rows]


async def test_seeded_entry_renders_every_field(relay: Any, db: asyncpg.Connection) -> None:
    at = datetime(2025, 3, 1, 8, 30, 15, 250000, tzinfo=UTC)
    sink_id = await seed(
        db,
        [
            {
                "outcome": "failure",
                "status_code": None,
                "error": "timeout",
                "duration_ms": 10_000,
                "created_at": at,
                "next_attempt_at": at + timedelta(seconds=30),
            }
        ],
        organization_id="abc",
        event_name="TaskProcessingFailedEvent",
        sink_type="Slack",
    )
    (entry,) = await entries(relay)
    assert entry == {
        "id": entry["id"],
        "timestamp": "2025-03-01T08:30:15.250000Z",
        "tenant_id": TENANT,
        "event_id": entry["event_id"],
        "event_name": "TaskProcessingFailedEvent",
        "organization_id": "abc",
        "event_sink_id": str(sink_id),
        "event_sink_type": "Slack",
        "attempt": 1,
        "outcome": "failure",
        "status_code": None,
        "error": "timeout",
        "error_detail": None,
        "response_body": None,
        "duration_ms": 10_000,
        "next_attempt_at": "2025-03-01T08:30:45.250000Z",
        "seal_id": None,
        "failed_over_to": None,
        "failed_over_from": None,
        "digest_id": None,
        "digest_count": None,
    }


async def test_filters(relay: Any, db: asyncpg.Connection) -> None:
    sink_1 = await seed(
        db,
        [
            {"outcome": "failure", "status_code": 404},
            {"outcome": "failure", "status_code": 500},
            {"outcome": "success", "status_code": 200},
        ],
        event_name="AssetCreatedEvent",
    )
    sink_2 = await seed(
        db,
        [
            {
                "outcome": "failure",
                "status_code": 404,
                "created_at": BASE_TIME + timedelta(hours=1),
            },
            {
                "outcome": "success",
                "status_code": 202,
                "created_at": BASE_TIME + timedelta(hours=2),
            },
        ],
        event_name="CaseFileSavedEvent",
        sink_type="PagerDuty",
    )
    await seed(db, [{"outcome": "failure", "status_code": 404}], tenant_id=TENANT_B)

    everything = await entries(relay)
    assert len(everything) == 5
    assert [e["id"] for e in everything] == await all_ids(db)

    def ids(logs: list[dict[str, Any]]) -> set[tuple[str, int | None]]:
        return {(e["event_sink_id"], e["status_code"]) for e in logs}

    s1, s2 = str(sink_1), str(sink_2)
    assert ids(await entries(relay, event_sink_id=s1)) == {(s1, 404), (s1, 500), (s1, 200)}
    assert ids(await entries(relay, event_sink_id=s2)) == {(s2, 404), (s2, 202)}
    assert ids(await entries(relay, event_name="CaseFileSavedEvent")) == {(s2, 404), (s2, 202)}
    assert await entries(relay, event_name="NoSuchEvent") == []
    assert ids(await entries(relay, status_code=404)) == {(s1, 404), (s2, 404)}
    assert ids(await entries(relay, outcome="failure")) == {(s1, 404), (s1, 500), (s2, 404)}
    assert ids(await entries(relay, outcome="success")) == {(s1, 200), (s2, 202)}
    assert len(await entries(relay, outcome="all")) == 5
    # Filters combine.
    assert ids(await entries(relay, outcome="failure", event_sink_id=s2)) == {(s2, 404)}
    assert await entries(relay, outcome="success", status_code=404) == []
    # since / until are inclusive RFC 3339 bounds, in any offset.
    later = BASE_TIME + timedelta(hours=1)
    assert ids(await entries(relay, since=later.isoformat())) == {(s2, 404), (s2, 202)}
    assert ids(await entries(relay, since="2025-01-28T13:00:00.000001Z")) == {(s2, 202)}
    assert ids(await entries(relay, since="2025-01-28T15:00:00+02:00")) == {(s2, 404), (s2, 202)}
    assert ids(await entries(relay, until="2025-01-28T12:00:01Z")) == {(s1, 404), (s1, 500)}
    assert ids(
        await entries(relay, since="2025-01-28T12:00:01Z", until="2025-01-28T13:00:00Z")
    ) == {(s1, 500), (s1, 200), (s2, 404)}
    assert await entries(relay, since="2025-01-28T14:00:00Z", until="2025-01-28T12:00:00Z") == []


async def test_unencoded_plus_in_time_offset(relay: Any, db: asyncpg.Connection) -> None:
    """A client that writes ``since=...+02:00`` into the URL unencoded sends a space."""
    await seed(db, [{}, {"created_at": BASE_TIME + timedelta(hours=1)}])
    resp = await relay.get(
        f"/v1/audit_log?tenant_id={TENANT}&since=2025-01-28T14:30:00+02:00",
        headers=auth(ADMIN_KEY),
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert len(body["data"]["audit_logs"]) == 1


async def test_limit(relay: Any, db: asyncpg.Connection) -> None:
    await seed(db, [{} for _ in range(150)])
    status, body = await audit(relay)
    assert status == 200
    assert len(body["data"]["audit_logs"]) == 100  # the default
    assert body["pagination"] is not None
    status, body = await audit(relay, limit=1000)
    assert len(body["data"]["audit_logs"]) == 150
    assert body["pagination"] is None
    status, body = await audit(relay, limit=150)
    assert len(body["data"]["audit_logs"]) == 150
    assert body["pagination"] is None  # exactly full: no empty last page
    status, body = await audit(relay, limit=1)
    assert [e["id"] for e in body["data"]["audit_logs"]] == (await all_ids(db))[:1]
    for bad in ("0", "-1", "1001", "ten", "1.5"):
        status, body = await audit(relay, limit=bad)
        assert_error(status, body, 400, "invalid_argument", "limit")


async def test_max_limit_is_1000(relay: Any, db: asyncpg.Connection) -> None:
    await seed(db, [{} for _ in range(1001)])
    status, body = await audit(relay, limit=1000)
    assert status == 200
    assert len(body["data"]["audit_logs"]) == 1000
    assert body["pagination"] is not None
    status, body = await audit(relay, limit=1000, cursor=body["pagination"]["next_cursor"])
    assert len(body["data"]["audit_logs"]) == 1
    assert body["pagination"] is None


async def test_keyset_pagination_returns_every_row_once(relay: Any, db: asyncpg.Connection) -> None:
    await seed(
        db, [{"outcome": "failure" if i % 3 else "success"} for i in range(250)], event_name="E1"
    )
    await seed(db, [{} for _ in range(20)], tenant_id=TENANT_B)
    expected = await all_ids(db)
    assert len(expected) == 250

    async def walk(**params: str | int) -> list[int]:
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            query = dict(params)
            if cursor is not None:
                query["cursor"] = cursor
            status, body = await audit(relay, **query)
            assert status == 200, body
            pages += 1
            seen += [e["id"] for e in body["data"]["audit_logs"]]
            assert pages <= 20, "pagination does not end"
            if body["pagination"] is None:
                return seen
            assert set(body["pagination"]) == {"next_cursor"}
            cursor = body["pagination"]["next_cursor"]
            assert isinstance(cursor, str) and cursor

    seen = await walk(limit=40)
    assert seen == expected  # every row once, newest first, across 7 pages
    failures = await walk(limit=33, outcome="failure")
    want = [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM delivery_attempts WHERE tenant_id = $1 AND outcome = 'failure'"
            " ORDER BY id DESC",
            TENANT,
        )
    ]
    assert failures == want and len(want) == 166
    # A cursor carries no tenant: used for tenant B it still shows only B's rows.
    status, first = await audit(relay, limit=5)
    status, body = await audit(relay, tenant_id=TENANT_B, cursor=first["pagination"]["next_cursor"])
    assert status == 200
    assert {e["tenant_id"] for e in body["data"]["audit_logs"]} <= {TENANT_B}


async def test_new_rows_do_not_disturb_a_walk(relay: Any, db: asyncpg.Connection) -> None:
    await seed(db, [{} for _ in range(10)])
    before = await all_ids(db)
    status, body = await audit(relay, limit=4)
    cursor = body["pagination"]["next_cursor"]
    await seed(db, [{} for _ in range(5)])  # newer rows arrive mid-walk
    status, body = await audit(relay, limit=100, cursor=cursor)
    assert status == 200
    assert [e["id"] for e in body["data"]["audit_logs"]] == before[4:]


# --- bad requests --------------------------------------------------------------------------------


async def test_invalid_filters_are_400_naming_the_parameter(relay: Any) -> None:
    cases = [
        ("event_sink_id", "not-a-uuid"),
        ("status_code", "abc"),
        ("status_code", "99"),
        ("status_code", "600"),
        ("status_code", "99999999999999999999"),
        ("outcome", "failed"),
        ("outcome", "FAILURE"),
        ("since", "yesterday"),
        ("since", "2025-01-28T12:00:00"),  # no offset
        ("since", "2025-13-01T00:00:00Z"),
        ("since", "0001-01-01T00:00:00+01:00"),
        ("until", "9999-12-31T23:59:59-01:00"),
        ("until", "1738065600"),
        ("limit", "many"),
        ("limit", "99999999999999999999"),
        ("cursor", "garbage!"),
        ("cursor", "Zm9vOjE"),  # base64 of "foo:1"
        ("cursor", base64.urlsafe_b64encode(b"a:x").decode()),
        ("cursor", base64.urlsafe_b64encode(b"a:99999999999999999999").decode()),
        ("cursor", base64.urlsafe_b64encode(b"a:" + b"9" * 5000).decode()),  # int() refuses
        ("cursor", base64.urlsafe_b64encode("a:²".encode()).decode()),  # a digit, not 0-9
        ("cursor", "\u00e9t\u00e9"),
        ("event_name", "Asset\x00"),
        ("tenant_id", "\x00"),
    ]
    for name, value in cases:
        status, body = await audit(relay, **{name: value})
        try:
            assert_error(status, body, 400, "invalid_argument", name)
        except AssertionError as exc:
            raise AssertionError(f"{name}={value!r}: {exc}") from exc
    # The extremes that are valid stay valid.
    status, body = await audit(
        relay, since="0001-01-01T00:00:00Z", until="9999-12-31T23:59:59.999999Z", limit=1000
    )
    assert (status, body) == (200, {"data": {"audit_logs": []}, "pagination": None})


async def test_tenant_id_is_required_and_scoped(relay: Any) -> None:
    resp = await relay.get("/v1/audit_log", headers=auth(ADMIN_KEY))
    assert_error(resp.status, await resp.json(), 400, "invalid_argument", "tenant_id")
    resp = await relay.get("/v1/audit_log?tenant_id=", headers=auth(ADMIN_KEY))
    assert_error(resp.status, await resp.json(), 400, "invalid_argument", "tenant_id")
    status, body = await audit(relay, key=TENANT_B_KEY, tenant_id=TENANT)
    assert_error(status, body, 403, "forbidden")
    status, body = await audit(relay, key=TENANT_B_KEY, tenant_id=TENANT_B)
    assert (status, body) == (200, {"data": {"audit_logs": []}, "pagination": None})
    status, body = await audit(relay, tenant_id="some-other-tenant")
    assert (status, body) == (200, {"data": {"audit_logs": []}, "pagination": None})


async def test_unauthorized(relay: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Token x"}):
        resp = await relay.get(f"/v1/audit_log?tenant_id={TENANT}", headers=headers)
        assert_error(resp.status, await resp.json(), 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == "Bearer"
