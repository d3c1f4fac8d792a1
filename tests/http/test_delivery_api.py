"""Dead letters, retry and replay: GET /v1/delivery, POST /v1/delivery/{id}/retry and
POST /v1/event_sink/{id}/replay, against the real pipeline and against rows seeded with SQL."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from structlog.testing import capture_logs

from air_relay.db.queries import QUERIES
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
    "tenant_id",
    "event_id",
    "event_name",
    "organization_id",
    "event_sink_id",
    "event_sink_type",
    "status",
    "attempts",
    "last_error",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "failed_over_to",
    "failed_over_from",
    "digest_id",  # an extension: the storm digest it went out in, else null
}
BASE_TIME = datetime(2025, 1, 28, 12, 0, 0, tzinfo=UTC)
ADMIN_ACTOR = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:12]


def event(name: str = "AssetCreatedEvent", org: int | str = 1) -> dict[str, Any]:
    return {"eventName": name, "organizationId": org, "data": {"assetId": "a-1"}}


async def listing(
    relay: Any, key: str = ADMIN_KEY, **params: str | int
) -> tuple[int, dict[str, Any]]:
    return await api_get(relay, "/v1/delivery", key, **params)


async def deliveries(relay: Any, **params: str | int) -> list[dict[str, Any]]:
    status, body = await listing(relay, **params)
    assert status == 200, body
    assert set(body) == {"data", "pagination"} and set(body["data"]) == {"deliveries"}
    found: list[dict[str, Any]] = body["data"]["deliveries"]
    return found


async def post(relay: Any, path: str, body: Any = None, key: str = ADMIN_KEY) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": auth(key)}
    if body is not None:
        kwargs["data" if isinstance(body, bytes) else "json"] = body
    resp = await relay.post(path, **kwargs)
    return resp.status, await resp.json()


def assert_error(status: int, body: Any, want_status: int, code: str, name: str = "") -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert name in body["error"]["message"], body


async def seed(db: asyncpg.Connection, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    """One event and one delivery per row (keys override the defaults); returns delivery ids.

    Pending rows are due only far in the future, so a running dispatcher leaves them alone.
    """
    events, dels = [], []
    for row in rows:
        event_id, delivery_id = uuid.uuid4(), uuid.uuid4()
        tenant = row.get("tenant_id", TENANT)
        created = row.get("created_at", BASE_TIME)
        events.append(
            (
                event_id,
                tenant,
                row.get("event_name", "AssetCreatedEvent"),
                row.get("organization_id", 1),
                b"{}",
                created,
            )
        )
        dels.append(
            (
                delivery_id,
                event_id,
                row["sink_id"],
                tenant,
                row.get("sink_type", "Webhook"),
                row.get("status", "dead"),
                row.get("attempts", 1),
                row.get("claims", 1),
                row.get("last_error", "http_500"),
                created,
                created + timedelta(minutes=1),
                datetime.now(UTC) + timedelta(days=1),
            )
        )
    await db.executemany(
        "INSERT INTO events (id, tenant_id, event_name, organization_id, body, received_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        events,
    )
    await db.executemany(
        "INSERT INTO deliveries (id, event_id, event_sink_id, tenant_id, sink_type, status,"
        " attempts, claims, last_error, created_at, updated_at, next_attempt_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        dels,
    )
    return [d[0] for d in dels]


async def wait_status(db: asyncpg.Connection, delivery_id: str, status: str) -> asyncpg.Record:
    async def reached() -> bool:
        got = await db.fetchval(
            "SELECT status FROM deliveries WHERE id = $1", uuid.UUID(delivery_id)
        )
        return bool(got == status)

    await wait_until(reached)
    row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", uuid.UUID(delivery_id))
    assert row is not None
    return row


# --- listing --------------------------------------------------------------------------------


async def test_entries_from_the_pipeline(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.script.append(Reply(status=404, body="no such hook"))  # first: /dead
    dead_sink = await create_sink(relay, {"Webhook": {"url": sink_server.url("/dead")}})
    resp = await post_event(relay, event("CaseFileSavedEvent", 42))
    event_id = (await resp.json())["event_id"]
    (dead,) = await deliveries(relay)  # may still be pending: wait for the verdict
    await wait_status(db, dead["id"], "dead")
    ok_sink = await create_sink(relay, {"Webhook": {"url": sink_server.url("/ok")}})
    resp = await post_event(relay, event("AssetCreatedEvent", "org-7"))
    second_event = (await resp.json())["event_id"]

    async def settled() -> bool:
        return len(await deliveries(relay, status="delivered")) == 2

    await wait_until(settled)
    (dead,) = await deliveries(relay, status="dead")
    assert set(dead) == ENTRY_KEYS
    assert dead["tenant_id"] == TENANT
    assert dead["event_id"] == event_id
    assert dead["event_name"] == "CaseFileSavedEvent"
    assert dead["organization_id"] == 42  # AIR's type is kept
    assert (dead["event_sink_id"], dead["event_sink_type"]) == (dead_sink["id"], "Webhook")
    assert (dead["status"], dead["attempts"], dead["last_error"]) == ("dead", 1, "http_404")
    assert dead["next_attempt_at"] is None
    row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", uuid.UUID(dead["id"]))
    assert row is not None
    assert dead["created_at"] == row["created_at"].isoformat().replace("+00:00", "Z")
    assert dead["updated_at"] == row["updated_at"].isoformat().replace("+00:00", "Z")
    delivered = await deliveries(relay, status="delivered")
    # Newest first: the second event's two deliveries, then nothing else delivered.
    assert {d["event_id"] for d in delivered} == {second_event}
    assert {d["event_sink_id"] for d in delivered} == {dead_sink["id"], ok_sink["id"]}
    assert all(d["organization_id"] == "org-7" and d["last_error"] is None for d in delivered)
    assert [d["id"] for d in await deliveries(relay)][-1] == dead["id"]
    assert await deliveries(relay, status="pending") == []


async def test_filters(make_relay: Any, db: asyncpg.Connection) -> None:
    relay = await make_relay(run_dispatcher=False)
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    at = [BASE_TIME + timedelta(hours=i) for i in range(4)]
    await seed(
        db,
        [
            {"sink_id": s1, "status": "dead", "created_at": at[0], "event_name": "E1"},
            {"sink_id": s1, "status": "delivered", "created_at": at[1], "event_name": "E1"},
            {"sink_id": s1, "status": "pending", "created_at": at[2], "event_name": "E2"},
            {"sink_id": s2, "status": "dead", "created_at": at[3], "event_name": "E2"},
            {"sink_id": s2, "status": "dead", "created_at": at[3], "tenant_id": TENANT_B},
        ],
    )

    async def keys(**params: str | int) -> list[tuple[str, str]]:
        return [(d["event_sink_id"], d["created_at"]) for d in await deliveries(relay, **params)]

    def k(sink: uuid.UUID, i: int) -> tuple[str, str]:
        return (str(sink), at[i].isoformat().replace("+00:00", "Z"))

    assert await keys() == [k(s2, 3), k(s1, 2), k(s1, 1), k(s1, 0)]  # newest first
    assert await keys(status="all") == await keys()
    assert await keys(status="dead") == [k(s2, 3), k(s1, 0)]
    assert await keys(status="delivered") == [k(s1, 1)]
    assert await keys(status="pending") == [k(s1, 2)]
    (pending,) = await deliveries(relay, status="pending")
    assert pending["next_attempt_at"] is not None  # only a pending row says when it is due
    assert await keys(event_sink_id=str(s1)) == [k(s1, 2), k(s1, 1), k(s1, 0)]
    assert await keys(event_sink_id=str(uuid.uuid4())) == []
    assert await keys(event_name="E2") == [k(s2, 3), k(s1, 2)]
    assert await keys(event_name="E3") == []
    # since / until: inclusive RFC 3339 bounds on the event's arrival, any offset.
    assert await keys(since=at[2].isoformat()) == [k(s2, 3), k(s1, 2)]
    assert await keys(since="2025-01-28T14:00:00.000001Z") == [k(s2, 3)]
    assert await keys(until="2025-01-28T15:00:00+02:00") == [k(s1, 1), k(s1, 0)]
    assert await keys(since="2025-01-28T13:00:00Z", until="2025-01-28T14:00:00Z") == [
        k(s1, 2),
        k(s1, 1),
    ]
    # Filters combine.
    assert await keys(status="dead", event_sink_id=str(s1)) == [k(s1, 0)]
    assert await keys(status="dead", event_name="E1", since=at[1].isoformat()) == []
    # Tenant B's row is only in tenant B's listing.
    (b,) = await deliveries(relay, tenant_id=TENANT_B)
    assert b["tenant_id"] == TENANT_B
    status, body = await listing(relay, key=TENANT_B_KEY, tenant_id=TENANT_B)
    assert status == 200 and [d["id"] for d in body["data"]["deliveries"]] == [b["id"]]


async def test_keyset_pagination_returns_every_row_once(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = uuid.uuid4()
    statuses = ("dead", "delivered", "pending")
    # Seven rows share each timestamp, as one ingest batch's deliveries do: the id breaks ties.
    await seed(
        db,
        [
            {
                "sink_id": sink,
                "status": statuses[i % 3],
                "created_at": BASE_TIME + timedelta(seconds=i // 7),
            }
            for i in range(250)
        ],
    )
    await seed(db, [{"sink_id": sink, "tenant_id": TENANT_B} for _ in range(20)])

    async def expected(status: str | None = None) -> list[str]:
        rows = await db.fetch(
            "SELECT id FROM deliveries WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
            " ORDER BY created_at DESC, id DESC",
            TENANT,
            status,
        )
        return [str(r["id"]) for r in rows]

    async def walk(**params: str | int) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(20):
            query = dict(params) if cursor is None else {**params, "cursor": cursor}
            status, body = await listing(relay, **query)
            assert status == 200, body
            seen += [d["id"] for d in body["data"]["deliveries"]]
            if body["pagination"] is None:
                return seen
            assert set(body["pagination"]) == {"next_cursor"}
            cursor = body["pagination"]["next_cursor"]
            assert isinstance(cursor, str) and cursor
        raise AssertionError("pagination does not end")

    everything = await walk(limit=40)
    assert everything == await expected()  # every row once, newest first, across 7 pages
    assert len(everything) == len(set(everything)) == 250
    dead = await walk(limit=13, status="dead")
    assert dead == await expected("dead") and len(dead) == 84
    # The default page is 100; exactly full pages end without an empty last page.
    status, body = await listing(relay)
    assert len(body["data"]["deliveries"]) == 100 and body["pagination"] is not None
    status, body = await listing(relay, limit=250)
    assert status == 200 and len(body["data"]["deliveries"]) == 250 and body["pagination"] is None


async def test_new_rows_do_not_disturb_a_walk(make_relay: Any, db: asyncpg.Connection) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = uuid.uuid4()
    await seed(
        db, [{"sink_id": sink, "created_at": BASE_TIME + timedelta(seconds=i)} for i in range(10)]
    )
    status, body = await listing(relay, limit=4)
    first = [d["id"] for d in body["data"]["deliveries"]]
    await seed(db, [{"sink_id": sink, "created_at": BASE_TIME + timedelta(hours=1)}])
    status, body = await listing(relay, cursor=body["pagination"]["next_cursor"])
    rest = [d["id"] for d in body["data"]["deliveries"]]
    assert status == 200 and len(rest) == 6 and not set(first) & set(rest)


async def test_invalid_parameters_are_400_naming_the_parameter(make_relay: Any) -> None:
    relay = await make_relay(run_dispatcher=False)
    cursor_of = lambda text: base64.urlsafe_b64encode(text.encode()).decode()  # noqa: E731
    cases = [
        ("status", "failed"),
        ("status", "DEAD"),
        ("status", ""),
        ("event_sink_id", "not-a-uuid"),
        ("event_name", "Asset\x00"),
        ("since", "yesterday"),
        ("since", "2025-01-28T12:00:00"),  # no offset
        ("until", "2025-13-01T00:00:00Z"),
        ("until", "9999-12-31T23:59:59-01:00"),
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "many"),
        ("cursor", "garbage!"),
        ("cursor", "\u00e9t\u00e9"),
        ("cursor", cursor_of("2025-01-28T12:00:00Z")),  # no id
        ("cursor", cursor_of(f"2025-01-28T12:00:00|{uuid.uuid4()}")),  # no offset
        ("cursor", cursor_of(f"0001-01-01T00:00:00+01:00|{uuid.uuid4()}")),
        ("cursor", cursor_of("2025-01-28T12:00:00Z|not-a-uuid")),
        ("cursor", base64.urlsafe_b64encode(b"a:12").decode()),  # an audit-log cursor
        ("tenant_id", "\x00"),
    ]
    for name, value in cases:
        status, body = await listing(relay, **{name: value})
        try:
            assert_error(status, body, 400, "invalid_argument", name)
        except AssertionError as exc:
            raise AssertionError(f"{name}={value!r}: {exc}") from exc
    resp = await relay.get("/v1/delivery", headers=auth(ADMIN_KEY))
    assert_error(resp.status, await resp.json(), 400, "invalid_argument", "tenant_id")
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = await relay.get(f"/v1/delivery?tenant_id={TENANT}", headers=headers)
        assert_error(resp.status, await resp.json(), 401, "unauthorized")
    # A cursor this API made is accepted, with or without its padding.
    good = cursor_of(f"2025-01-28T12:00:00.5Z|{uuid.uuid4()}")
    for cursor in (good, good.rstrip("=")):
        assert (await listing(relay, cursor=cursor))[0] == 200


async def test_listing_uses_the_tenant_index(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")
    for cursor in ((None, None), (BASE_TIME, uuid.uuid4())):
        plan = await db.fetch(
            "EXPLAIN " + QUERIES["delivery_page"],
            TENANT,
            "dead",
            None,
            None,
            None,
            None,
            *cursor,
            101,
        )
        text = "\n".join(r[0] for r in plan)
        # With status=dead, the smaller index of dead rows serves it as well.
        assert "deliveries_tenant_idx" in text or "deliveries_dead_idx" in text, text
        assert "Seq Scan on deliveries" not in text, text
        # The keyset position bounds the index scan itself, so a deep page costs no more.
        index_cond = text.split("Index Cond", 1)[1].split("\n", 1)[0]
        assert "ROW(created_at, id) < ROW(" in index_cond, text


# --- tenant scoping -------------------------------------------------------------------------


async def test_other_tenants_are_403_or_404(make_relay: Any, db: asyncpg.Connection) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink_a = await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/a"}})
    (delivery_a,) = await seed(db, [{"sink_id": uuid.UUID(sink_a["id"]), "status": "dead"}])
    status, body = await listing(relay, key=TENANT_B_KEY, tenant_id=TENANT)
    assert_error(status, body, 403, "forbidden")
    window = {"since": "2000-01-01T00:00:00Z"}
    for path, body_in in (
        (f"/v1/delivery/{delivery_a}/retry", None),
        (f"/v1/event_sink/{sink_a['id']}/replay", window),
    ):
        status, body = await post(relay, path, body_in, key=TENANT_B_KEY)
        assert_error(status, body, 404, "not_found")
    # Unknown and malformed ids look the same.
    for path in (f"/v1/delivery/{uuid.uuid4()}/retry", "/v1/delivery/nope/retry"):
        status, body = await post(relay, path)
        assert_error(status, body, 404, "not_found")
    for path in (f"/v1/event_sink/{uuid.uuid4()}/replay", "/v1/event_sink/nope/replay"):
        status, body = await post(relay, path, window)
        assert_error(status, body, 404, "not_found")
    for path, body_in in (
        (f"/v1/delivery/{delivery_a}/retry", None),
        (f"/v1/event_sink/{sink_a['id']}/replay", window),
    ):
        status, body = await post(relay, path, body_in, key="not-a-key")
        assert_error(status, body, 401, "unauthorized")
    # Nothing was touched, nothing recorded.
    assert await db.fetchval("SELECT status FROM deliveries") == "dead"
    assert await db.fetchval("SELECT count(*) FROM operator_actions") == 0


# --- retry ------------------------------------------------------------------------------------


async def test_retry_requeues_a_dead_delivery(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=500, body="boom")
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, event())
    (d,) = await deliveries(relay)
    row = await wait_status(db, d["id"], "dead")
    assert (row["attempts"], row["claims"]) == (9, 3)  # 3 claims x 3 attempts
    with capture_logs() as logs:
        status, body = await post(relay, f"/v1/delivery/{d['id']}/retry")
        assert status == 202, body
        entry = body["data"]["delivery"]
        assert set(body) == {"data"} and set(entry) == ENTRY_KEYS
        assert (entry["id"], entry["event_sink_id"]) == (d["id"], sink["id"])
        assert (entry["status"], entry["attempts"], entry["last_error"]) == (
            "pending",
            9,
            "http_500",
        )
        assert entry["next_attempt_at"] is not None
        # Still failing: the durable schedule started over, so it runs in full once more.
        await wait_until(lambda: _attempts_at_least(db, 18))
        row = await wait_status(db, d["id"], "dead")
    assert (row["attempts"], row["claims"]) == (18, 3)
    assert len(sink_server.received) == 18
    (line,) = [e for e in logs if e["event"] == "delivery_retry_requested"]
    assert line["tenant_id"] == TENANT and line["actor"] == ADMIN_ACTOR
    assert line["target"] == d["id"] and line["affected"] == 1
    assert line["params"] == {"attempts_before": 9}
    assert ADMIN_KEY not in json.dumps(line, default=str)

    # Now the sink answers: delivered, and the audit log numbers the attempt on from 18.
    sink_server.default = Reply(status=200)
    status, body = await post(relay, f"/v1/delivery/{d['id']}/retry")
    assert status == 202, body
    row = await wait_status(db, d["id"], "delivered")
    assert (row["attempts"], row["claims"]) == (19, 1)
    resp = await relay.get(
        "/v1/audit_log", params={"tenant_id": TENANT, "limit": "1"}, headers=auth(ADMIN_KEY)
    )
    (newest,) = (await resp.json())["data"]["audit_logs"]
    assert (newest["attempt"], newest["outcome"], newest["status_code"]) == (19, "success", 200)
    # One webhook-id throughout: a receiver may dedupe the re-delivery.
    assert len({r.headers["webhook-id"] for r in sink_server.received}) == 1
    actions = await db.fetch("SELECT * FROM operator_actions ORDER BY id")
    assert [(a["action"], a["affected"]) for a in actions] == [("delivery_retry", 1)] * 2
    first = actions[0]
    assert (first["tenant_id"], first["actor"], str(first["target_id"])) == (
        TENANT,
        ADMIN_ACTOR,
        d["id"],
    )
    assert first["params"] == {"attempts_before": 9}
    assert actions[1]["params"] == {"attempts_before": 18}
    assert ADMIN_KEY not in json.dumps([dict(a) for a in actions], default=str)


async def _attempts_at_least(db: asyncpg.Connection, n: int) -> bool:
    got = await db.fetchval("SELECT attempts FROM deliveries")
    return bool(got >= n)


async def test_only_a_dead_delivery_can_be_retried(make_relay: Any, db: asyncpg.Connection) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = uuid.uuid4()
    delivered, pending = await seed(
        db, [{"sink_id": sink, "status": "delivered"}, {"sink_id": sink, "status": "pending"}]
    )
    for delivery_id, state in ((delivered, "delivered"), (pending, "pending")):
        status, body = await post(relay, f"/v1/delivery/{delivery_id}/retry")
        assert_error(status, body, 409, "delivery_not_dead", state)
    rows = await db.fetch("SELECT status, claims FROM deliveries ORDER BY status")
    assert [(r["status"], r["claims"]) for r in rows] == [("delivered", 1), ("pending", 1)]
    assert await db.fetchval("SELECT count(*) FROM operator_actions") == 0
    # A tenant-B-only key retries tenant B's dead delivery (of a sink that exists).
    sink_b = await create_sink(
        relay, {"Webhook": {"url": "http://127.0.0.1:9/b"}}, tenant_id=TENANT_B, key=TENANT_B_KEY
    )
    (dead_b,) = await seed(db, [{"sink_id": uuid.UUID(sink_b["id"]), "tenant_id": TENANT_B}])
    status, body = await post(relay, f"/v1/delivery/{dead_b}/retry", key=TENANT_B_KEY)
    assert status == 202 and body["data"]["delivery"]["tenant_id"] == TENANT_B


# --- replay -----------------------------------------------------------------------------------


async def test_replay_requeues_the_window_and_status(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/hook"}})
    s, other = uuid.UUID(sink["id"]), uuid.uuid4()
    at = [BASE_TIME + timedelta(hours=i) for i in range(5)]
    rows = [
        {"sink_id": s, "status": "dead", "created_at": at[0]},  # before the window
        {"sink_id": s, "status": "dead", "created_at": at[1]},
        {"sink_id": s, "status": "delivered", "created_at": at[2]},
        {"sink_id": s, "status": "pending", "created_at": at[2], "claims": 2},
        {"sink_id": s, "status": "dead", "created_at": at[3]},
        {"sink_id": other, "status": "dead", "created_at": at[2]},  # another sink
        {"sink_id": s, "status": "dead", "created_at": at[4]},  # after the window
    ]
    ids = await seed(db, rows)
    path = f"/v1/event_sink/{s}/replay"
    window = {"since": at[1].isoformat(), "until": "2025-01-28T17:00:00+02:00"}  # = at[3]

    async def states() -> list[tuple[str, int]]:
        got = {
            r["id"]: (r["status"], r["claims"])
            for r in await db.fetch("SELECT id, status, claims FROM deliveries")
        }
        return [got[i] for i in ids]

    with capture_logs() as logs:
        status, body = await post(relay, path, {**window, "status": "dead"})
    assert (status, body) == (202, {"data": {"requeued": 2}})
    assert await states() == [
        ("dead", 1),
        ("pending", 0),
        ("delivered", 1),
        ("pending", 2),  # a pending delivery is never touched
        ("pending", 0),
        ("dead", 1),
        ("dead", 1),
    ]
    requeued = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", ids[1])
    assert requeued is not None
    assert requeued["next_attempt_at"] <= datetime.now(UTC)
    assert requeued["updated_at"] > at[4] and requeued["claim_token"] is None
    assert (requeued["attempts"], requeued["last_error"]) == (1, "http_500")
    (line,) = [e for e in logs if e["event"] == "sink_replay_requested"]
    params = {"since": "2025-01-28T13:00:00Z", "until": "2025-01-28T15:00:00Z", "status": "dead"}
    assert line["params"] == params
    assert (line["tenant_id"], line["actor"], line["target"], line["affected"]) == (
        TENANT,
        ADMIN_ACTOR,
        str(s),
        2,
    )
    (action,) = await db.fetch("SELECT * FROM operator_actions")
    assert (action["action"], action["target_id"], action["affected"]) == ("sink_replay", s, 2)
    assert (action["actor"], action["params"]) == (ADMIN_ACTOR, params)

    # status "delivered", then the default ("all"), then no until (= now).
    status, body = await post(relay, path, {**window, "status": "delivered"})
    assert (status, body) == (202, {"data": {"requeued": 1}})
    await db.execute("UPDATE deliveries SET status = 'dead' WHERE id = ANY ($1)", ids[1:3])
    await db.execute("UPDATE deliveries SET status = 'delivered' WHERE id = $1", ids[4])
    status, body = await post(relay, path, window)
    assert (status, body) == (202, {"data": {"requeued": 3}})
    status, body = await post(relay, path, {"since": at[4].isoformat()})
    assert (status, body) == (202, {"data": {"requeued": 1}})
    assert [st for st, _ in await states()] == ["dead"] + ["pending"] * 4 + ["dead", "pending"]
    # An empty window is still an action, recorded with what it did.
    status, body = await post(
        relay, path, {"since": "2030-01-01T00:00:00Z", "until": "2030-01-02T00:00:00Z"}
    )
    assert (status, body) == (202, {"data": {"requeued": 0}})
    affected = await db.fetch("SELECT affected FROM operator_actions ORDER BY id")
    assert [a["affected"] for a in affected] == [2, 1, 3, 1, 0]


async def test_replay_redelivers_to_an_inactive_sink(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    since = datetime.now(UTC).isoformat()
    for org in (1, 2):
        assert (await post_event(relay, event(org=org))).status == 202
    await sink_server.wait_for(2)
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}", json={"active": False}, headers=auth(ADMIN_KEY)
    )
    assert resp.status == 200, await resp.text()
    await wait_until(lambda: _all_final(db))
    status, body = await post(relay, f"/v1/event_sink/{sink['id']}/replay", {"since": since})
    assert (status, body) == (202, {"data": {"requeued": 2}})
    received = await sink_server.wait_for(4)
    # The same webhook-ids again (Standard Webhooks receivers may dedupe them).
    ids = [r.headers["webhook-id"] for r in received]
    assert sorted(ids[:2]) == sorted(ids[2:4]) and len(set(ids)) == 2
    assert sorted(r.body for r in received[:2]) == sorted(r.body for r in received[2:4])
    await wait_until(lambda: _all_final(db))
    assert {r["status"] for r in await db.fetch("SELECT status FROM deliveries")} == {"delivered"}


async def _all_final(db: asyncpg.Connection) -> bool:
    n = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'")
    return bool(n == 0)


async def test_replay_bad_input_is_400_naming_the_field(make_relay: Any) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/hook"}})
    path = f"/v1/event_sink/{sink['id']}/replay"
    since = "2025-01-28T12:00:00Z"
    cases: list[tuple[Any, str]] = [
        ({}, "since"),
        ({"since": None}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-01-28T12:00:00"}, "since"),
        ({"since": 1738065600}, "since"),
        ({"since": since, "until": "later"}, "until"),
        ({"since": since, "until": ["2025-01-29T00:00:00Z"]}, "until"),
        ({"since": since, "until": "2025-01-28T11:59:59Z"}, "until"),  # since > until
        ({"since": "2999-01-01T00:00:00Z"}, "until"),  # after the default until, now
        ({"since": since, "status": "pending"}, "status"),
        ({"since": since, "status": "DEAD"}, "status"),
        ({"since": since, "status": 1}, "status"),
        ({"since": since, "sink": "x"}, "sink"),
    ]
    for payload, name in cases:
        status, body = await post(relay, path, payload)
        try:
            assert_error(status, body, 400, "invalid_argument", name)
        except AssertionError as exc:
            raise AssertionError(f"{payload!r}: {exc}") from exc
    status, body = await post(relay, path, b"[1, 2]")
    assert_error(status, body, 400, "invalid_argument")
    status, body = await post(relay, path, b"{not json")
    assert_error(status, body, 400, "invalid_json")


async def test_tenant_b_key_replays_its_own_sink(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=404)
    sink_b = await create_sink(
        relay, {"Webhook": {"url": sink_server.url()}}, tenant_id=TENANT_B, key=TENANT_B_KEY
    )
    assert (await post_event(relay, event(), token=INGEST_TOKEN_B)).status == 202
    await sink_server.wait_for(1)
    await wait_until(lambda: _all_final(db))
    sink_server.default = Reply(status=200)
    status, body = await post(
        relay,
        f"/v1/event_sink/{sink_b['id']}/replay",
        {"since": "2000-01-01T00:00:00Z", "status": "dead"},
        key=TENANT_B_KEY,
    )
    assert (status, body) == (202, {"data": {"requeued": 1}})
    await sink_server.wait_for(2)
    await wait_until(lambda: _all_final(db))
    status, listed = await listing(relay, key=TENANT_B_KEY, tenant_id=TENANT_B)
    (entry,) = listed["data"]["deliveries"]
    assert (entry["status"], entry["attempts"]) == ("delivered", 2)
    actor = hashlib.sha256(TENANT_B_KEY.encode()).hexdigest()[:12]
    assert await db.fetchval("SELECT actor FROM operator_actions") == actor
