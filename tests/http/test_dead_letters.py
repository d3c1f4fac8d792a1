"""Inspecting and cleaning up dead letters: GET /v1/delivery/{id} (by UUID and by the
webhook-id a receiver got), POST /v1/delivery/retry and POST /v1/delivery/dismiss, against the
real pipeline and against rows seeded with SQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from jsonschema import Draft202012Validator
from structlog.testing import capture_logs

from air_relay.db.queries import QUERIES
from tests.http.test_delivery_api import (
    ADMIN_ACTOR,
    BASE_TIME,
    ENTRY_KEYS,
    assert_error,
    deliveries,
    post,
    seed,
    wait_status,
)
from tests.support import (
    ADMIN_KEY,
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

DETAIL_KEYS = {"delivery", "event", "attempts", "more_attempts"}
DOCUMENT: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent.parent / "src/air_relay/http/openapi.json").read_text()
)


def conforms(schema_name: str, body: Any) -> None:
    """``body`` is valid against ``components/schemas/<schema_name>`` of the OpenAPI
    document."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": DOCUMENT["components"]}
    Draft202012Validator(root).validate(body)


async def detail(relay: Any, ref: str, key: str = ADMIN_KEY) -> tuple[int, Any]:
    resp = await relay.get(f"/v1/delivery/{ref}", headers=auth(key))
    return resp.status, await resp.json()


async def seed_attempts(db: asyncpg.Connection, delivery_id: uuid.UUID, count: int) -> None:
    row = await db.fetchrow(
        "SELECT d.*, e.event_name, e.organization_id FROM deliveries d"
        " JOIN events e ON e.id = d.event_id WHERE d.id = $1",
        delivery_id,
    )
    assert row is not None
    await db.executemany(
        "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
        " organization_id, event_sink_id, event_sink_type, attempt, outcome, status_code,"
        " error, response_body, duration_ms, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'failure', 500, 'http_500', 'boom', 3, $9)",
        [
            (
                delivery_id,
                row["tenant_id"],
                row["event_id"],
                row["event_name"],
                row["organization_id"],
                row["event_sink_id"],
                row["sink_type"],
                n,
                BASE_TIME + timedelta(seconds=n),
            )
            for n in range(1, count + 1)
        ],
    )


async def statuses(db: asyncpg.Connection, ids: list[uuid.UUID]) -> list[str]:
    got = {r["id"]: r["status"] for r in await db.fetch("SELECT id, status FROM deliveries")}
    return [got[i] for i in ids]


async def actions(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM operator_actions ORDER BY id")


# --- GET /v1/delivery/{id} ------------------------------------------------------------------


async def test_inspect_by_uuid_and_by_webhook_id_then_retry_in_bulk(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=404, body="no such hook")  # permanent: dead at once
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    sent = {
        "eventName": "CaseFileSavedEvent",
        "organizationId": 42,
        "data": {"caseId": "C-1", "nested": {"n": 1.5}},
        "extra": [1, "two"],  # other top-level fields are kept
    }
    resp = await post_event(relay, sent)
    event_id = (await resp.json())["event_id"]
    (listed,) = await deliveries(relay)
    await wait_status(db, listed["id"], "dead")
    (received,) = await sink_server.wait_for(1)

    status, body = await detail(relay, listed["id"])
    assert status == 200, body
    assert set(body) == {"data"} and set(body["data"]) == DETAIL_KEYS
    conforms("DeliveryDetail", body)
    d = body["data"]
    assert set(d["delivery"]) == ENTRY_KEYS | {"webhook_id", "event_sink_deleted"}
    assert (d["delivery"]["id"], d["delivery"]["status"]) == (listed["id"], "dead")
    assert d["delivery"]["event_sink_id"] == sink["id"]
    assert d["delivery"]["webhook_id"] == received.headers["webhook-id"]
    assert d["delivery"]["event_sink_deleted"] is False
    assert d["event"]["id"] == event_id and d["event"]["received_at"].endswith("Z")
    assert d["event"]["envelope"] == sent == json.loads(received.body)
    (attempt,) = d["attempts"]
    assert (attempt["attempt"], attempt["outcome"], attempt["status_code"]) == (1, "failure", 404)
    assert (attempt["error"], attempt["response_body"]) == ("http_404", "no such hook")
    assert d["more_attempts"] is False

    # The receiver's webhook-id leads to the same delivery, in either case of hex digits.
    msg_id = received.headers["webhook-id"]
    assert msg_id == "msg_" + uuid.UUID(listed["id"]).hex
    for ref in (msg_id, "msg_" + msg_id[4:].upper()):
        assert await detail(relay, ref) == (200, body)

    # The sink answers again: a bulk retry of its dead deliveries delivers it.
    sink_server.default = Reply(status=200)
    status, out = await post(
        relay, "/v1/delivery/retry", {"tenant_id": TENANT, "event_sink_id": sink["id"]}
    )
    assert (status, out) == (202, {"data": {"requeued": 1, "more": False, "sink_deleted": 0}})
    conforms("DeliveriesRequeued", out)
    await wait_status(db, listed["id"], "delivered")
    await sink_server.wait_for(2)
    assert sink_server.received[1].headers["webhook-id"] == msg_id  # the same identity
    status, body = await detail(relay, msg_id)
    assert body["data"]["delivery"]["status"] == "delivered"
    newest, oldest = body["data"]["attempts"]  # newest first
    assert (newest["attempt"], newest["outcome"], oldest["attempt"]) == (2, "success", 1)


async def test_a_delivery_held_for_a_digest_is_inspected_as_pending(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    """A digest sink's burst: the first event goes out, the second carries the window's
    digest (pending, due at the window's end), the third is held. Inspected, the held one is
    pending (the document's enum), due with its digest and naming it, as the listing shows
    it; a retry answers for it as for a pending delivery."""
    await create_sink(
        relay, {"Webhook": {"url": sink_server.url()}}, digest={"window_seconds": 600}
    )
    for n in range(3):
        event = {"eventName": "TaskProcessingFailedEvent", "organizationId": 1, "data": {"n": n}}
        assert (await post_event(relay, event)).status == 202
        if n == 0:
            await sink_server.wait_for(1)

    async def routed() -> bool:
        rows = await db.fetch("SELECT status FROM deliveries")
        return sorted(r["status"] for r in rows) == ["delivered", "held", "pending"]

    await wait_until(routed)
    carrier = await db.fetchrow("SELECT * FROM deliveries WHERE status = 'pending'")
    held = await db.fetchrow("SELECT * FROM deliveries WHERE status = 'held'")
    assert carrier is not None and held is not None
    listed = {d["id"]: d for d in await deliveries(relay)}
    for row in (carrier, held):
        status, body = await detail(relay, str(row["id"]))
        assert status == 200, body
        conforms("DeliveryDetail", body)
        shown = body["data"]["delivery"]
        assert (shown["status"], shown["digest_id"]) == ("pending", str(row["digest_id"]))
        assert shown["next_attempt_at"] is not None
        assert shown["next_attempt_at"] == listed[str(row["id"])]["next_attempt_at"]
        # Only a dead delivery is retried: the held one is refused as a pending one is.
        status, out = await post(relay, f"/v1/delivery/{row['id']}/retry")
        assert_error(status, out, 409, "delivery_not_dead", "pending")
    assert await statuses(db, [carrier["id"], held["id"]]) == ["pending", "held"]


async def test_inspect_is_tenant_scoped_and_bounded(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = uuid.uuid4()
    (mine, theirs) = await seed(db, [{"sink_id": sink}, {"sink_id": sink, "tenant_id": TENANT_B}])
    await seed_attempts(db, mine, 105)
    status, body = await detail(relay, str(mine))
    assert status == 200, body
    shown = [a["attempt"] for a in body["data"]["attempts"]]
    assert shown == list(range(105, 5, -1))  # the newest 100, newest first
    assert body["data"]["more_attempts"] is True
    assert body["data"]["delivery"]["event_sink_deleted"] is True  # no such sink row
    conforms("DeliveryDetail", body)
    # Another tenant's delivery, by either form of its id, looks like no delivery at all.
    for ref in (str(mine), f"msg_{mine.hex}"):
        assert_error(*await detail(relay, ref, key=TENANT_B_KEY), 404, "not_found")
    status, body = await detail(relay, f"msg_{theirs.hex}", key=TENANT_B_KEY)
    assert status == 200 and body["data"]["delivery"]["tenant_id"] == TENANT_B
    for ref in (
        str(uuid.uuid4()),
        "nope",
        "msg_",
        f"msg_{mine.hex[:-1]}",
        f"msg_{mine.hex}0",
        f"msg_{mine.hex[:-1]}g",
        f"msg-{mine.hex}",
        "retry-",
    ):
        assert_error(*await detail(relay, ref), 404, "not_found")
    # The bulk paths are not ids: a GET there is not allowed, and says what is.
    for path in ("/v1/delivery/retry", "/v1/delivery/dismiss"):
        resp = await relay.get(path, headers=auth(ADMIN_KEY))
        assert (resp.status, resp.headers["Allow"]) == (405, "POST"), await resp.text()
    resp = await relay.get(f"/v1/delivery/{mine}", headers=auth("not-a-key"))
    assert_error(resp.status, await resp.json(), 401, "unauthorized")


# --- POST /v1/delivery/retry ----------------------------------------------------------------


async def test_bulk_retry_follows_the_filters_and_the_bound(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    s1 = uuid.UUID((await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/a"}}))["id"])
    s2 = uuid.UUID((await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/b"}}))["id"])
    at = [BASE_TIME + timedelta(hours=i) for i in range(6)]
    ids = await seed(
        db,
        [
            {"sink_id": s1, "created_at": at[4], "event_name": "E1"},  # 0
            {"sink_id": s1, "created_at": at[0], "event_name": "E1"},  # 1 oldest
            {"sink_id": s1, "created_at": at[2], "event_name": "E2"},  # 2
            {"sink_id": s1, "created_at": at[1], "event_name": "E1"},  # 3
            {"sink_id": s1, "created_at": at[3], "status": "delivered"},  # 4
            {"sink_id": s1, "created_at": at[3], "status": "pending"},  # 5
            {"sink_id": s2, "created_at": at[3], "event_name": "E1"},  # 6
            {"sink_id": s1, "created_at": at[3], "tenant_id": TENANT_B},  # 7
        ],
    )
    path = "/v1/delivery/retry"
    with capture_logs() as logs:
        status, body = await post(
            relay, path, {"tenant_id": TENANT, "event_sink_id": str(s1), "limit": 2}
        )
    assert (status, body) == (202, {"data": {"requeued": 2, "more": True, "sink_deleted": 0}})
    # The oldest two of the sink's dead deliveries, reset as a single retry resets one.
    want = ["dead", "pending", "dead", "pending", "delivered", "pending", "dead", "dead"]
    assert await statuses(db, ids) == want
    row = await db.fetchrow(
        "SELECT claims, attempts, next_attempt_at FROM deliveries WHERE id = $1", ids[1]
    )
    assert row is not None and (row["claims"], row["attempts"]) == (0, 1)
    (line,) = [e for e in logs if e["event"] == "deliveries_retried"]
    params = {"status": "dead", "event_sink_id": str(s1), "limit": 2}
    assert (line["tenant_id"], line["actor"], line["params"]) == (TENANT, ADMIN_ACTOR, params)
    assert (line["affected"], line["more"]) == (2, True)
    (action,) = await actions(db)
    assert (action["action"], action["tenant_id"], action["actor"]) == (
        "deliveries_retry",
        TENANT,
        ADMIN_ACTOR,
    )
    assert (action["target_id"], action["affected"]) == (s1, 2)
    assert action["params"] == {**params, "delivery_ids": sorted(str(i) for i in ids[1:4:2])}
    assert ADMIN_KEY not in json.dumps(line, default=str)

    # event_name and the arrival window narrow it further; the rest then goes in one call.
    window = {"since": at[1].isoformat(), "until": "2025-01-28T16:00:00+02:00"}  # at[1]..at[2]
    status, body = await post(relay, path, {"tenant_id": TENANT, "event_name": "E1", **window})
    assert (status, body) == (202, {"data": {"requeued": 0, "more": False, "sink_deleted": 0}})
    status, body = await post(relay, path, {"tenant_id": TENANT, "event_name": "E2", **window})
    assert (status, body) == (202, {"data": {"requeued": 1, "more": False, "sink_deleted": 0}})
    status, body = await post(relay, path, {"tenant_id": TENANT, "status": "dead"})
    assert (status, body) == (202, {"data": {"requeued": 2, "more": False, "sink_deleted": 0}})
    assert await statuses(db, ids) == ["pending"] * 4 + ["delivered", "pending", "pending", "dead"]
    assert [a["affected"] for a in await actions(db)] == [2, 0, 1, 2]
    # Tenant B's row: only through a key holding tenant B, and only by naming tenant B.
    status, body = await post(relay, path, {"tenant_id": TENANT}, key=TENANT_B_KEY)
    assert_error(status, body, 403, "forbidden")
    status, body = await post(relay, path, {"tenant_id": TENANT_B}, key=TENANT_B_KEY)
    assert (status, body) == (202, {"data": {"requeued": 1, "more": False, "sink_deleted": 0}})
    assert (await statuses(db, ids))[7] == "pending"


# --- POST /v1/delivery/dismiss --------------------------------------------------------------


async def test_dismiss_leaves_the_dead_list_and_keeps_the_audit_log(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = uuid.UUID((await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/a"}}))["id"])
    ids = await seed(
        db,
        [{"sink_id": sink, "created_at": BASE_TIME + timedelta(minutes=i)} for i in range(3)]
        + [{"sink_id": sink, "status": "delivered"}, {"sink_id": sink, "tenant_id": TENANT_B}],
    )
    for i in ids[:3]:
        await seed_attempts(db, i, 2)
    path = "/v1/delivery/dismiss"
    with capture_logs() as logs:
        status, body = await post(relay, path, {"tenant_id": TENANT, "limit": 2})
    assert (status, body) == (200, {"data": {"dismissed": 2, "more": True}})
    conforms("DeliveriesDismissed", body)
    (line,) = [e for e in logs if e["event"] == "deliveries_dismissed"]
    assert (line["affected"], line["params"]) == (2, {"status": "dead", "limit": 2})
    status, body = await post(relay, path, {"tenant_id": TENANT, "limit": 2})
    assert (status, body) == (200, {"data": {"dismissed": 1, "more": False}})
    status, body = await post(relay, path, {"tenant_id": TENANT})
    assert (status, body) == (200, {"data": {"dismissed": 0, "more": False}})
    assert await statuses(db, ids) == ["dismissed"] * 3 + ["delivered", "dead"]

    # Out of the dead list, in the dismissed one; never retried, by one or in bulk.
    assert await deliveries(relay, status="dead") == []
    dismissed = await deliveries(relay, status="dismissed")
    assert sorted(d["id"] for d in dismissed) == sorted(str(i) for i in ids[:3])
    assert len(await deliveries(relay)) == 4
    status, body = await post(relay, f"/v1/delivery/{ids[0]}/retry")
    assert_error(status, body, 409, "delivery_not_dead", "dismissed")
    status, body = await post(relay, "/v1/delivery/retry", {"tenant_id": TENANT})
    assert (status, body) == (202, {"data": {"requeued": 0, "more": False, "sink_deleted": 0}})
    # Their attempts stay in the audit log, and the detail still shows them.
    status, audit = await api_get(relay, "/v1/audit_log")
    assert status == 200 and len(audit["data"]["audit_logs"]) == 6
    status, body = await detail(relay, str(ids[0]))
    assert body["data"]["delivery"]["status"] == "dismissed"
    conforms("DeliveryDetail", body)
    assert len(body["data"]["attempts"]) == 2
    recorded = [(a["action"], a["affected"]) for a in await actions(db)]
    dismiss = "deliveries_dismiss"
    assert recorded == [(dismiss, 2), (dismiss, 1), (dismiss, 0), ("deliveries_retry", 0)]
    first = (await actions(db))[0]
    assert first["target_id"] is None
    assert first["params"]["delivery_ids"] == sorted(str(i) for i in ids[:2])
    # Retention purges a dismissed delivery like any finished one (attempts stay, sealed).
    await db.execute(QUERIES["purge_deliveries"], datetime.now(UTC) + timedelta(days=1), 100)
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE tenant_id = $1", TENANT) == 0
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 6


async def test_a_deleted_sinks_deliveries_are_dismissed_not_retried(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    gone = await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/gone"}})
    kept = await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/kept"}})
    g, k = uuid.UUID(gone["id"]), uuid.UUID(kept["id"])
    ids = await seed(db, [{"sink_id": g}, {"sink_id": g}, {"sink_id": k}])
    resp = await relay.delete(f"/v1/event_sink/{g}", headers=auth(ADMIN_KEY))
    assert resp.status == 200
    # The deliveries outlive their sink, and say so.
    status, body = await detail(relay, str(ids[0]))
    assert status == 200 and body["data"]["delivery"]["event_sink_deleted"] is True
    assert body["data"]["delivery"]["event_sink_id"] == str(g)

    for ref in (str(ids[0]), f"msg_{ids[0].hex}"):  # the webhook-id form works here too
        status, body = await post(relay, f"/v1/delivery/{ref}/retry")
        assert_error(status, body, 409, "sink_deleted", "dismiss")
    status, body = await post(
        relay, "/v1/delivery/retry", {"tenant_id": TENANT, "event_sink_id": str(g)}
    )
    assert_error(status, body, 409, "sink_deleted", "dismiss")
    assert await actions(db) == []  # nothing was done, nothing recorded
    # Without the sink filter, the others are retried and the deleted sink's are counted.
    status, body = await post(relay, "/v1/delivery/retry", {"tenant_id": TENANT})
    assert (status, body) == (202, {"data": {"requeued": 1, "more": False, "sink_deleted": 2}})
    assert await statuses(db, ids) == ["dead", "dead", "pending"]
    status, body = await post(
        relay, "/v1/delivery/dismiss", {"tenant_id": TENANT, "event_sink_id": str(g)}
    )
    assert (status, body) == (200, {"data": {"dismissed": 2, "more": False}})
    assert await statuses(db, ids) == ["dismissed", "dismissed", "pending"]
    assert [(a["action"], a["affected"]) for a in await actions(db)] == [
        ("deliveries_retry", 1),
        ("deliveries_dismiss", 2),
    ]


async def test_bulk_bad_input_is_400_naming_the_field(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    cases: list[tuple[Any, str]] = [
        ({}, "tenant_id"),
        ({"tenant_id": None}, "tenant_id"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": 7}, "tenant_id"),
        ({"tenant_id": "\x00"}, "tenant_id"),
        ({"tenant_id": TENANT, "status": "pending"}, "status"),
        ({"tenant_id": TENANT, "status": "all"}, "status"),
        ({"tenant_id": TENANT, "status": None}, "status"),
        ({"tenant_id": TENANT, "event_sink_id": "not-a-uuid"}, "event_sink_id"),
        ({"tenant_id": TENANT, "event_sink_id": 1}, "event_sink_id"),
        ({"tenant_id": TENANT, "event_name": ""}, "event_name"),
        ({"tenant_id": TENANT, "event_name": ["E1"]}, "event_name"),
        ({"tenant_id": TENANT, "since": "yesterday"}, "since"),
        ({"tenant_id": TENANT, "since": "2025-01-28T12:00:00"}, "since"),
        ({"tenant_id": TENANT, "until": 1738065600}, "until"),
        (
            {"tenant_id": TENANT, "since": "2025-01-29T00:00:00Z", "until": "2025-01-28T00:00:00Z"},
            "since",
        ),
        ({"tenant_id": TENANT, "limit": 0}, "limit"),
        ({"tenant_id": TENANT, "limit": 1001}, "limit"),
        ({"tenant_id": TENANT, "limit": "10"}, "limit"),
        ({"tenant_id": TENANT, "limit": True}, "limit"),
        ({"tenant_id": TENANT, "limit": 2.5}, "limit"),
        ({"tenant_id": TENANT, "cursor": "x"}, "cursor"),
        ({"tenant_id": TENANT, "ids": []}, "ids"),
    ]
    for path in ("/v1/delivery/retry", "/v1/delivery/dismiss"):
        for payload, name in cases:
            status, body = await post(relay, path, payload)
            try:
                assert_error(status, body, 400, "invalid_argument", name)
            except AssertionError as exc:
                raise AssertionError(f"{path} {payload!r}: {exc}") from exc
        status, body = await post(relay, path, b"[1, 2]")
        assert_error(status, body, 400, "invalid_argument")
        status, body = await post(relay, path, b"{not json")
        assert_error(status, body, 400, "invalid_json")
        status, body = await post(relay, path, {"tenant_id": TENANT}, key="not-a-key")
        assert_error(status, body, 401, "unauthorized")
    assert await actions(db) == []


# --- locking and plans ----------------------------------------------------------------------


async def test_concurrent_bulk_retries_requeue_each_delivery_once(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(run_dispatcher=False)
    sink = uuid.UUID((await create_sink(relay, {"Webhook": {"url": "http://127.0.0.1:9/a"}}))["id"])
    ids = await seed(
        db, [{"sink_id": sink, "created_at": BASE_TIME + timedelta(seconds=i)} for i in range(300)]
    )

    async def drain() -> int:
        done = 0
        while True:
            status, body = await post(
                relay, "/v1/delivery/retry", {"tenant_id": TENANT, "limit": 40}
            )
            assert status == 202, body
            done += body["data"]["requeued"]
            if not body["data"]["more"]:
                return done

    # Four callers race over the same oldest rows: each row is requeued by exactly one of them.
    counts = await asyncio.gather(*(drain() for _ in range(4)))
    assert sum(counts) == 300
    assert set(await statuses(db, ids)) == {"pending"}
    touched = [i for a in await actions(db) for i in a["params"]["delivery_ids"]]
    assert sorted(touched) == sorted(str(i) for i in ids)


async def test_bulk_actions_use_the_dead_index(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")
    for name in ("retry_deliveries", "dismiss_deliveries"):
        extra = ["air_relay_test"] if name == "retry_deliveries" else []
        plan = await db.fetch(
            "EXPLAIN " + QUERIES[name],
            TENANT,
            None,
            None,
            None,
            None,
            100,
            "actor",
            {},
            *extra,
        )
        text = "\n".join(r[0] for r in plan)
        assert "deliveries_dead_idx" in text, text
