"""Per-key ordering (sink option ``ordering``) end to end, with a real receiver: each case's
events reach it in arrival order even when one of them fails and is retried, other cases
are not held up meanwhile, and two instances on one database keep the order too."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from air_relay import model
from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from air_relay.db.spool import encode, read_segment
from air_relay.ordering import order_keys
from tests.support import CATALOG, TENANT, claim_plan, create_sink, post_event, wait_final

CASES = [f"case-{n}" for n in range(5)]
PER_CASE = 10
FAILING = ("case-2", 1)  # the second event of case-2: its first two attempts fail
OTHERS = (len(CASES) - 1) * PER_CASE
EXAMPLES = {e["eventName"]: e["example"] for e in CATALOG}


def event(case: str, seq: int) -> dict[str, Any]:
    """Case events of two shapes: a CaseCreatedEvent (the key is its ``id``), then
    TaskScheduledForEndpointEvents (the key is ``caseId``). The marker says which it is."""
    marker = f"{case}#{seq}"
    if seq == 0:
        example = EXAMPLES["CaseCreatedEvent"]
        data = {**example["data"], "id": case, "name": marker}
    else:
        example = EXAMPLES["TaskScheduledForEndpointEvent"]
        data = {**example["data"], "caseId": case, "taskName": marker}
    return {**example, "data": data}


@dataclass
class Receiver:
    """Answers 500 to the failing event's first two attempts; holds its third (successful)
    answer until every event of the other cases has arrived, which only happens if the
    failing case holds up no other."""

    seen: list[tuple[str, int, int]] = field(default_factory=list)  # (case, seq, status)
    failures_left: int = 2
    others_done: asyncio.Event = field(default_factory=asyncio.Event)
    released_by_others: bool | None = None

    async def handle(self, request: web.Request) -> web.Response:
        data = json.loads(await request.read())["data"]
        case, seq = (data.get("taskName") or data["name"]).split("#")
        key = (case, int(seq))
        if key == FAILING and self.failures_left:
            self.failures_left -= 1
            self.seen.append((*key, 500))
            return web.Response(status=500, text="not yet")
        self.seen.append((*key, 200))
        if key == FAILING:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.others_done.wait(), 8)
            self.released_by_others = self.others_done.is_set()
        elif sum(1 for c, _, s in self.seen if c != FAILING[0] and s == 200) == OTHERS:
            self.others_done.set()
        return web.Response(text="ok")


def test_the_catalog_decides_each_event_types_key() -> None:
    data = {"id": "7", "caseId": "c", "endpointId": "e", "taskId": 12}
    assert order_keys("CaseClosedEvent", data) == ("7", None, None)  # Case*: its own id
    assert order_keys("EndpointDeletedEvent", data) == (None, "7", None)
    assert order_keys("TaskCompletedEvent", data) == (None, None, "7")
    assert order_keys("TaskScheduledForEndpointEvent", data) == ("c", "e", None)
    assert order_keys("TriageRuleMatchedEvent", data) == (None, "e", "12")
    assert order_keys("AssetCreatedEvent", data) == (None, None, None)  # no such key
    assert order_keys("UnknownEvent", data) == (None, None, None)  # not in the catalog
    assert order_keys("CaseClosedEvent", {"id": None}) == (None, None, None)


@pytest.mark.parametrize("instances", [1, 2])
async def test_each_case_arrives_in_order_and_a_failing_one_holds_up_no_other(
    make_relay: Any, aiohttp_server: Any, db: asyncpg.Connection, instances: int
) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    # One attempt per claim: each failure is a durable retry, which must keep its key
    # blocked; a long timeout lets the held answer wait for the other cases.
    delivery = {"timeout_seconds": 10, "retry": {"attempts_per_claim": 1}}
    relays = [await make_relay(delivery=delivery) for _ in range(instances)]
    await create_sink(
        relays[0], {"Webhook": {"url": str(server.make_url("/hook"))}}, ordering="case"
    )
    n = 0
    for seq in range(PER_CASE):
        for case in CASES:
            resp = await post_event(relays[n % instances], event(case, seq))
            assert resp.status == 202, await resp.text()
            n += 1
    await wait_final(db, len(CASES) * PER_CASE, timeout=30)

    per_case: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for case, seq, status in receiver.seen:
        per_case[case].append((seq, status))
    for case in CASES:
        expected = [(seq, 200) for seq in range(PER_CASE)]
        if case == FAILING[0]:
            expected[1:1] = [(1, 500), (1, 500)]
        assert per_case[case] == expected, case
    assert receiver.released_by_others is True
    statuses = await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses} == {"delivered": 50}


async def test_the_claims_key_check_uses_the_order_index(db: asyncpg.Connection) -> None:
    # Priced out of sequential scans, the planner must answer "is an earlier delivery of this
    # key pending?" from deliveries_order_idx, and the claim itself still from its own index.
    text = await claim_plan(db)
    assert "deliveries_order_idx" in text, text
    assert "deliveries_sink_due_idx" in text, text
    assert "Seq Scan on deliveries" not in text, text


async def test_the_spools_drain_stores_the_key_as_ingest_does(db_dsn: str, tmp_path: Path) -> None:
    # The spool's records do not carry the keys: they are read again from the body.
    pool = await create_pool(db_dsn, 1, 2)
    try:
        fields = model.SinkFields(
            TENANT, "s", "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, True
        )
        for ordering in ("case", "endpoint", "none"):
            sink = dataclasses.replace(fields, ordering=ordering)
            assert await repo.insert_sink(pool, uuid.uuid4(), sink, max_per_tenant=10)
        body = json.dumps(event("case-7", 3)).encode()
        name = "TaskScheduledForEndpointEvent"
        spooled = model.SpooledEvent(
            model.NewEvent(uuid.uuid4(), TENANT, name, 1, body), datetime.now(UTC)
        )
        segment = tmp_path / "segment"
        segment.write_bytes(encode(spooled))
        (read_back,) = read_segment(segment).records
        assert await repo.ingest_spooled_events(pool, [read_back], timeout=5)
        rows = await pool.fetch(
            "SELECT s.ordering, d.order_key, d.order_pos FROM deliveries d"
            " JOIN event_sinks s ON s.id = d.event_sink_id"
        )
        keys = {r["ordering"]: (r["order_key"], r["order_pos"]) for r in rows}
        assert keys == {"case": ("case-7", 1), "endpoint": ("endpoint-id", 1), "none": (None, None)}
    finally:
        await pool.close()
