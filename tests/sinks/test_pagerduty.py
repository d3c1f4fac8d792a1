"""PagerDuty delivery against a local mimic of the Events API v2: what arrives, severity,
dedup_key stability across retries and re-posts, the 512 KB rule, error classification, and the
integration key kept out of audit rows and logs."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from air_relay import events
from air_relay.model import ClaimedDelivery
from air_relay.sinks import pagerduty as pd
from air_relay.sinks.base import Answer, SendResult
from tests.support import (
    CATALOG,
    TENANT,
    audit_rows,
    create_sink,
    post_event,
    wait_final,
    wait_until,
)

KEY = "e93facc04764012d7bfb002500d5d1a6"  # 32 characters, as PagerDuty requires
KEY_B = "0123456789abcdef0123456789abcdef"
BY_NAME = {entry["eventName"]: entry["example"] for entry in CATALOG}
TRIAGE = BY_NAME["TriageRuleMatchedEvent"]
SEVERITIES = {"critical", "error", "warning", "info"}
LIMIT = 512 * 1024


def pd_failure(status: int, body: str, retry_after: float | None) -> SendResult:
    return pd.classify(Answer(status, body, body, retry_after))


# --- a local PagerDuty Events API v2 ------------------------------------------------------


@dataclass
class PdReply:
    """A scripted answer; ``{routing_key}`` in a text body is replaced by the request's key."""

    status: int
    body: dict[str, Any] | str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Mimic:
    server: TestServer
    received: list[dict[str, Any]]
    raw: list[bytes]
    at: list[float]
    script: list[PdReply]

    @property
    def url(self) -> str:
        return str(self.server.make_url("/v2/enqueue"))

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async def enough() -> bool:
            return len(self.received) >= count

        await wait_until(enough, timeout=timeout)
        return self.received


def invalid(*errors: str) -> PdReply:
    return PdReply(
        400,
        {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)},
    )


def validate(event: Any, size: int) -> list[str]:
    """The checks PagerDuty documents for a trigger event (the ones air-relay can get wrong)."""
    if not isinstance(event, dict):
        return ["Event object is not a JSON object"]
    errors: list[str] = []
    if size >= LIMIT:
        errors.append("Event object is too large (must be less than 512 KB)")
    if len(str(event.get("routing_key", ""))) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' is invalid")
    if len(str(event.get("dedup_key", ""))) > 255:
        errors.append("'dedup_key' is too long (max 255 characters)")
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return [*errors, "'payload' is missing or blank"]
    for name in ("summary", "source", "severity"):
        if not isinstance(payload.get(name), str) or not payload[name].strip():
            errors.append(f"'payload.{name}' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append(
            "'payload.severity' is invalid (must be one of the following: "
            "'critical', 'warning', 'error' or 'info')"
        )
    return errors


@pytest.fixture
async def mimic(aiohttp_server: Any) -> Mimic:
    state = Mimic(server=None, received=[], raw=[], at=[], script=[])  # type: ignore[arg-type]

    async def enqueue(request: web.Request) -> web.Response:
        raw = await request.read()
        state.raw.append(raw)
        state.at.append(time.monotonic())
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        state.received.append(event if isinstance(event, dict) else {})
        reply = state.script.pop(0) if state.script else None
        if reply is None:
            errors = validate(event, len(raw))
            if request.content_type != "application/json":
                errors.append("Content-Type must be application/json")
            reply = invalid(*errors) if errors else accepted(event)
        body = reply.body
        if isinstance(body, dict):
            body = json.dumps(body)
        routing_key = str(event.get("routing_key")) if isinstance(event, dict) else ""
        body = body.replace("{routing_key}", routing_key)
        return web.Response(status=reply.status, text=body, headers=reply.headers)

    def accepted(event: dict[str, Any]) -> PdReply:
        key = event.get("dedup_key") or uuid.uuid4().hex
        return PdReply(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/v2/enqueue", enqueue)
    state.server = await aiohttp_server(app, host="127.0.0.1")
    return state


# --- helpers ------------------------------------------------------------------------------


async def pd_relay(make_relay: Any, url: str, **overrides: Any) -> Any:
    return await make_relay(pagerduty={"events_url": url}, **overrides)


async def pd_sink(relay: Any, key: str = KEY) -> dict[str, Any]:
    return await create_sink(relay, {"PagerDuty": {"integration_key": key}})


async def statuses(db: asyncpg.Connection) -> list[tuple[str, int]]:
    rows = await db.fetch("SELECT status, attempts FROM deliveries ORDER BY created_at")
    return [(r["status"], r["attempts"]) for r in rows]


async def audit(relay: Any) -> list[dict[str, Any]]:
    return sorted(await audit_rows(relay), key=lambda r: r["attempt"])


def claimed(
    event: dict[str, Any] | bytes, key: str = KEY, name: str = "", org: int | str = ""
) -> ClaimedDelivery:
    """A delivery as the dispatcher claims it, for the pure rendering functions."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    envelope = {"eventName": name, "organizationId": org} if name else json.loads(body)
    return ClaimedDelivery(
        id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        event_sink_id=uuid.uuid4(),
        tenant_id=TENANT,
        sink_type="PagerDuty",
        attempts=0,
        claims=1,
        claim_token=uuid.uuid4(),
        event_name=envelope["eventName"],
        organization_id=envelope["organizationId"],
        body=body,
        sink_args={"integration_key": key},
        received_at=datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
    )


def rendered(event: dict[str, Any] | bytes) -> dict[str, Any]:
    body = pd.render(claimed(event), KEY)
    assert len(body) < LIMIT
    out: dict[str, Any] = json.loads(body)
    return out


def with_data(name: str, **data: Any) -> dict[str, Any]:
    example = BY_NAME[name]
    return {**example, "data": {**example["data"], **data}}


# --- pure rendering -----------------------------------------------------------------------


def test_severity_table_covers_exactly_the_catalog() -> None:
    assert set(events.SEVERITY) == set(BY_NAME)
    assert set(events.SEVERITY.values()) <= SEVERITIES
    assert events.SEVERITY["TriageRuleMatchedEvent"] == "critical"
    assert events.SEVERITY["TaskProcessingFailedEvent"] == "error"
    assert events.SEVERITY["EndpointDeletedEvent"] == "warning"
    assert events.SEVERITY["CaseCreatedEvent"] == "info"
    assert events.severity_for("SomethingNewEvent") == "info"


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_catalog_example_renders(name: str) -> None:
    example = BY_NAME[name]
    event = rendered(example)
    assert validate(event, len(json.dumps(event))) == []
    payload = event["payload"]
    assert event["routing_key"] == KEY
    assert event["event_action"] == "trigger"
    assert len(event["dedup_key"]) <= 255
    assert payload["summary"].startswith("[AIR] ")
    assert payload["summary"].endswith(" (org 1)")
    assert len(payload["summary"]) <= 1024
    assert payload["source"] == "AIR organization 1"
    assert payload["severity"] == events.SEVERITY[name]
    assert payload["timestamp"] == "2026-03-01T12:30:45.123456Z"
    assert payload["class"] == name
    assert payload["group"] == "1"
    assert payload["custom_details"] == example["data"]
    assert event["client"] == "air-relay"
    # The catalog's example links ("url", "reportUrl") are not http(s): no links at all.
    assert "links" not in event
    assert "client_url" not in event


def test_summary_names_the_subject_and_is_cut_to_1024() -> None:
    payload = rendered(TRIAGE)["payload"]
    assert payload["summary"] == "[AIR] Triage rule matched: Rule Name on Endpoint Name (org 1)"
    assert payload["component"] == "Endpoint Name"
    long = rendered(with_data("TriageRuleMatchedEvent", ruleName="R\n" * 5000))["payload"]
    assert len(long["summary"]) == 1024
    assert "\n" not in long["summary"]
    assert long["summary"].endswith("… (org 1)")  # the organization survives the cut


def test_dedup_key_is_the_event_not_the_delivery() -> None:
    raw = json.dumps(TRIAGE).encode()
    first, second = claimed(raw), claimed(raw)
    assert first.id != second.id
    key = json.loads(pd.render(first, KEY))["dedup_key"]
    assert key == json.loads(pd.render(second, KEY_B))["dedup_key"]
    assert key.startswith("air-relay:TriageRuleMatchedEvent:")
    other = json.loads(pd.render(claimed(with_data("TriageRuleMatchedEvent", ruleName="x")), KEY))
    assert other["dedup_key"] != key
    assert len(pd.dedup_key("E" * 256, raw)) <= 255


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("name", "org", "data"),
    [
        ("BrandNewEvent", "org-7", b'{"a": 1}'),
        ("TriageRuleMatchedEvent", 1, b"[1, 2]"),
        ("TriageRuleMatchedEvent", 1, b'{"x": 1e400, "endpointName": 7}'),
        ("TriageRuleMatchedEvent", 1, b'{"ruleName": "\\ud800 lone", "endpointName": "  "}'),
        # Deeper than ingest's parser allows, and just inside it (it may still fail here,
        # where the stack is deeper): neither may raise.
        ("TriageRuleMatchedEvent", 1, b'{"ruleName": ' + nested(30_000) + b"}"),
        ("TriageRuleMatchedEvent", 1, b'{"ruleName": ' + nested(900) + b"}"),
        ("E" * 256, "o" * 256, b'{"name": "' + b"n" * 100_000 + b'"}'),
    ],
    ids=[
        "unknown-event",
        "data-not-object",
        "huge-number",
        "lone-surrogate",
        "too-deep",
        "deep",
        "long-everything",
    ],
)
def test_odd_events_still_render(name: str, org: int | str, data: bytes) -> None:
    head = json.dumps({"eventName": name, "organizationId": org})[:-1].encode()
    body = head + b', "data": ' + data + b"}"
    delivery = claimed(body, name=name, org=org)
    event = json.loads(pd.render(delivery, KEY))
    assert validate(event, 0) == []
    payload = event["payload"]
    assert (payload["class"], payload["group"]) == (name, str(org))
    assert isinstance(payload["custom_details"], dict)
    assert len(payload["summary"]) <= 1024
    assert len(payload["source"]) <= 255
    assert len(event["dedup_key"]) <= 255


def test_unknown_event_uses_info_and_its_spelled_out_name() -> None:
    raw = b'{"eventName": "BrandNewEvent", "organizationId": "org-7", "data": {"name": "n1"}}'
    event = rendered(raw)
    assert event["payload"]["severity"] == "info"
    assert event["payload"]["summary"] == "[AIR] Brand new: n1 (org org-7)"
    assert event["payload"]["source"] == "AIR organization org-7"


def test_a_400_without_pagerduty_status_is_http_400() -> None:
    assert pd_failure(400, "bad", None).error == "http_400"
    verdict = pd_failure(400, json.dumps({"status": "invalid event", "errors": ["e"]}), None)
    assert (verdict.error, verdict.transient, verdict.status_code) == ("invalid_event", False, 400)
    assert pd_failure(429, "", 2.0).transient
    assert pd_failure(503, "", None).reason == "server_error"
    assert not pd_failure(404, "", None).transient


# --- end to end against the mimic ---------------------------------------------------------


async def test_triage_event_arrives_as_pagerduty_expects(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay)
    before = datetime.now(UTC)
    assert (await post_event(relay, TRIAGE)).status == 202
    (event,) = await mimic.wait_for(1)
    await wait_final(db)
    payload = event["payload"]
    assert event["routing_key"] == KEY
    assert event["event_action"] == "trigger"
    assert (
        event["dedup_key"]
        == "air-relay:TriageRuleMatchedEvent:"
        + hashlib.sha256(json.dumps(TRIAGE).encode()).hexdigest()
    )
    assert payload["summary"] == "[AIR] Triage rule matched: Rule Name on Endpoint Name (org 1)"
    assert payload["source"] == "AIR organization 1"
    assert payload["severity"] == "critical"
    stamp = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
    assert abs((stamp - before).total_seconds()) < 30
    assert payload["class"] == "TriageRuleMatchedEvent"
    assert payload["group"] == str(TRIAGE["organizationId"])
    assert payload["custom_details"] == TRIAGE["data"]
    assert event["client"] == "air-relay"
    assert await statuses(db) == [("delivered", 1)]
    (row,) = await audit(relay)
    assert (row["outcome"], row["status_code"], row["error"]) == ("success", 202, None)
    assert row["event_sink_type"] == "PagerDuty"
    assert json.loads(row["response_body"])["message"] == "Event processed"


async def test_https_links_become_pagerduty_links(make_relay: Any, mimic: Mimic) -> None:
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay)
    url = "https://air.example.com/tasks/task-id"
    await post_event(relay, with_data("TaskProcessingFailedEvent", taskDetailsUrl=url))
    await post_event(relay, with_data("CaseFileSavedEvent", reportURL="javascript:alert(1)"))
    received = await mimic.wait_for(2)
    by_class = {e["payload"]["class"]: e for e in received}
    failed = by_class["TaskProcessingFailedEvent"]
    assert failed["links"] == [{"href": url, "text": "Task details"}]
    assert failed["client_url"] == url
    assert failed["payload"]["severity"] == "error"
    assert "links" not in by_class["CaseFileSavedEvent"]
    assert "client_url" not in by_class["CaseFileSavedEvent"]


async def test_400_is_one_attempt_then_dead_with_pagerduty_errors(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay, key="too-short")  # the mimic validates the key like PagerDuty
    await post_event(relay, TRIAGE)
    await wait_final(db)
    await mimic.wait_for(1)
    assert len(mimic.received) == 1
    assert await statuses(db) == [("dead", 1)]
    (row,) = await audit(relay)
    assert (row["outcome"], row["status_code"], row["error"]) == ("failure", 400, "invalid_event")
    assert row["next_attempt_at"] is None
    assert "Length of 'routing_key' is incorrect (should be 32 characters)" in row["response_body"]
    assert json.loads(row["response_body"])["message"] == "Event object is invalid"


async def test_5xx_is_retried_with_the_same_dedup_key(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    mimic.script.extend([PdReply(500, "boom"), PdReply(502, "bad gateway"), PdReply(503, "")])
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay)
    await post_event(relay, TRIAGE)
    await wait_final(db)
    assert len(mimic.received) == 4
    assert len({e["dedup_key"] for e in mimic.received}) == 1
    assert len(set(mimic.raw)) == 1  # every retry sends the very same bytes
    assert await statuses(db) == [("delivered", 4)]
    rows = await audit(relay)
    assert [(r["status_code"], r["error"]) for r in rows] == [
        (500, "http_500"),
        (502, "http_502"),
        (503, "http_503"),
        (202, None),
    ]


async def test_429_waits_for_retry_after(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    mimic.script.append(PdReply(429, "", {"Retry-After": "1"}))
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay)
    await post_event(relay, TRIAGE)
    await wait_final(db)
    assert len(mimic.received) == 2
    assert mimic.at[1] - mimic.at[0] >= 0.95
    assert mimic.received[0]["dedup_key"] == mimic.received[1]["dedup_key"]
    assert await statuses(db) == [("delivered", 2)]
    first, second = await audit(relay)
    assert (first["status_code"], first["error"]) == (429, "http_429")
    assert first["next_attempt_at"] is not None
    assert second["status_code"] == 202


async def test_same_event_gives_the_same_dedup_key_everywhere(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay, KEY)
    await pd_sink(relay, KEY_B)
    raw = json.dumps(TRIAGE).encode()
    other = json.dumps(with_data("TriageRuleMatchedEvent", ruleName="Other")).encode()
    for body in (raw, raw, other):
        assert (await post_event(relay, body)).status == 202
    received = await mimic.wait_for(6)
    await wait_final(db, 6)
    keys: dict[str, set[str]] = {}
    for event in received:
        rule = event["payload"]["custom_details"]["ruleName"]
        keys.setdefault(rule, set()).add(event["dedup_key"])
    assert (
        sum(1 for e in received if e["payload"]["custom_details"]["ruleName"] == "Rule Name") == 4
    )
    assert len(keys["Rule Name"]) == 1  # 2 posts x 2 sinks, one key
    assert len(keys["Other"]) == 1
    assert keys["Rule Name"] != keys["Other"]
    assert {e["routing_key"] for e in received} == {KEY, KEY_B}


async def test_an_event_over_512_kb_goes_without_custom_details(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    relay = await pd_relay(make_relay, mimic.url, server={"max_body_bytes": 2_000_000})
    await pd_sink(relay)
    big = with_data("TriageRuleMatchedEvent", details={"blob": "x" * 700_000})
    raw = json.dumps(big).encode()
    assert (await post_event(relay, raw)).status == 202
    await wait_final(db)
    assert await statuses(db) == [("delivered", 1)]
    (event,) = mimic.received
    assert len(mimic.raw[0]) < LIMIT
    details = event["payload"]["custom_details"]
    assert details["truncated"] is True
    assert "512 KB" in details["reason"]
    assert details["original_size_bytes"] > 700_000
    assert event["payload"]["severity"] == "critical"
    assert event["dedup_key"].endswith(hashlib.sha256(raw).hexdigest())


async def test_all_28_catalog_events_are_accepted_by_the_mimic(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay)
    for entry in CATALOG:
        assert (await post_event(relay, entry["example"])).status == 202
    await wait_final(db, len(CATALOG))
    assert await statuses(db) == [("delivered", 1)] * len(CATALOG)
    got = {e["payload"]["class"]: e for e in mimic.received}
    assert set(got) == set(BY_NAME)
    for name, event in got.items():
        assert event["payload"]["severity"] == events.SEVERITY[name]
        assert event["payload"]["custom_details"] == BY_NAME[name]["data"]


async def test_integration_key_never_reaches_audit_rows_or_logs(
    make_relay: Any, mimic: Mimic, db: asyncpg.Connection
) -> None:
    echo = invalid("Invalid routing key: {routing_key}")
    mimic.script.extend([echo, PdReply(500, "upstream said {routing_key}")])
    relay = await pd_relay(make_relay, mimic.url)
    await pd_sink(relay)
    with capture_logs() as logs:
        await post_event(relay, TRIAGE)
        await post_event(relay, BY_NAME["CaseCreatedEvent"])
        await wait_final(db, 2)
    assert KEY in mimic.raw[0].decode()  # it was sent ...
    rows = await audit(relay)
    assert len(rows) == 3
    assert any("Invalid routing key: ***" in (r["response_body"] or "") for r in rows)
    assert KEY not in json.dumps(rows)  # ... and echoed back, yet kept out of every row
    assert [e for e in logs if e["event"] == "delivery_failed"]
    assert KEY not in json.dumps(logs, default=str)


async def test_connection_refused_is_transient(
    make_relay: Any, unused_tcp_port: int, db: asyncpg.Connection
) -> None:
    relay = await pd_relay(make_relay, f"http://127.0.0.1:{unused_tcp_port}/v2/enqueue")
    await pd_sink(relay)
    await post_event(relay, TRIAGE)
    await wait_final(db)
    rows = await audit(relay)
    assert {r["error"] for r in rows} == {"connection_refused"}
    assert rows[0]["status_code"] is None
    assert rows[0]["next_attempt_at"] is not None  # transient: another attempt followed
    assert await statuses(db) == [("dead", 9)]  # 3 claims x 3 attempts, then the schedule ends


# --- AIR's console-relative links (air.console_url) -----------------------------------------


def test_relative_links_need_the_console_url() -> None:
    event = with_data("TaskProcessingFailedEvent", taskDetailsUrl="/#/task-details/12345")
    without = json.loads(pd.render(claimed(event), KEY))
    assert "links" not in without and "client_url" not in without
    assert without["payload"]["custom_details"]["taskDetailsUrl"] == "/#/task-details/12345"
    with_url = json.loads(pd.render(claimed(event), KEY, "https://air.example.com"))
    url = "https://air.example.com/#/task-details/12345"
    assert with_url["links"] == [{"href": url, "text": "Task details"}]
    assert with_url["client_url"] == url
    # custom_details stay the data AIR sent.
    assert with_url["payload"]["custom_details"]["taskDetailsUrl"] == "/#/task-details/12345"


async def test_console_url_makes_pagerduty_links_absolute(make_relay: Any, mimic: Mimic) -> None:
    relay = await pd_relay(make_relay, mimic.url, air={"console_url": "https://air.example.com"})
    await pd_sink(relay)
    await post_event(
        relay, with_data("CaseFileSavedEvent", reportURL="/#/reports/r-1", taskId="t-1")
    )
    (event,) = await mimic.wait_for(1)
    assert event["links"] == [{"href": "https://air.example.com/#/reports/r-1", "text": "Report"}]
    assert event["client_url"] == "https://air.example.com/#/reports/r-1"
