"""Slack delivery end to end against a local Slack mimic, plus the message builder and the pacer.

The mimic answers ``POST /api/chat.postMessage`` the way Slack's docs describe: HTTP 200 with
``{"ok": false, "error": ...}`` for API errors (bad token, unknown channel, invalid blocks),
HTTP 429 with ``Retry-After`` when rate limited, and ``{"ok": true, ...}`` echoing the message
otherwise. It also enforces the block limits, so a message over them fails the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from air_relay.events import event_title
from air_relay.sinks.base import Answer, SendResult
from air_relay.sinks.slack import ChannelPacer, classify
from air_relay.sinks.slack_message import (
    BLOCKS_TEXT_BUDGET,
    SlackMessage,
    build_message,
    message_for_body,
)
from tests.support import (
    CATALOG,
    SLACK_INTEGRATION,
    Received,
    SinkServer,
    audit_rows,
    create_sink,
    post_event,
    wait_final,
    wait_for_requests,
)

TOKEN = "xoxb-test-token"
OTHER_INTEGRATION = "00000000-0000-0000-0000-0000000000aa"
EXAMPLES = {entry["eventName"]: entry["example"] for entry in CATALOG}
TRIAGE = EXAMPLES["TriageRuleMatchedEvent"]
CHANNELS = {"C0123", "C0456", "C0789", "#dfir-alerts"}


def classify_answer(
    status: int, text: str, audit_body: str, retry_after: float | None
) -> SendResult:
    return classify(Answer(status, text, audit_body, retry_after))


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- Slack's limits, as its docs give them ----------------------------------------------


def _text_problems(where: str, obj: Any, limit: int) -> list[str]:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return [f"{where}: no text object"]
    text = obj["text"]
    if not text:
        return [f"{where}: empty text"]
    return [f"{where}: {u16(text)} > {limit}"] if u16(text) > limit else []


def _block_problems(n: int, block: dict[str, Any]) -> list[str]:
    kind = block.get("type")
    where = f"blocks[{n}]"
    if kind == "header":
        return _text_problems(where, block.get("text"), 150)
    if kind == "section":
        problems: list[str] = []
        if "text" in block:
            problems += _text_problems(where, block["text"], 3000)
        fields = block.get("fields", [])
        if not fields and "text" not in block:
            problems.append(f"{where}: neither text nor fields")
        if len(fields) > 10:
            problems.append(f"{where}: {len(fields)} fields")
        for i, f in enumerate(fields):
            problems += _text_problems(f"{where}.fields[{i}]", f, 2000)
        return problems
    if kind == "context":
        elements = block.get("elements", [])
        problems = [f"{where}: {len(elements)} elements"] if not 0 < len(elements) <= 10 else []
        for i, e in enumerate(elements):
            problems += _text_problems(f"{where}.elements[{i}]", e, 3000)
        return problems
    if kind == "actions":
        elements = block.get("elements", [])
        problems = [f"{where}: {len(elements)} elements"] if not 0 < len(elements) <= 25 else []
        for i, e in enumerate(elements):
            problems += _text_problems(f"{where}.elements[{i}]", e.get("text"), 75)
            url = e.get("url", "")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                problems.append(f"{where}.elements[{i}]: bad url")
            elif len(url) > 3000:
                problems.append(f"{where}.elements[{i}]: url too long")
        return problems
    return [f"{where}: unknown block type {kind!r}"]


def _all_text(obj: Any) -> int:
    if isinstance(obj, dict):
        return sum(
            u16(v) if k in ("text", "url") and isinstance(v, str) else _all_text(v)
            for k, v in obj.items()
        )
    if isinstance(obj, list):
        return sum(_all_text(v) for v in obj)
    return 0


def limit_problems(payload: dict[str, Any], blocks_text_limit: int = 13_000) -> list[str]:
    """Why Slack would refuse ``payload``; empty when it is inside every limit."""
    problems: list[str] = []
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append("text: missing")
    elif u16(text) > 4000:  # Slack's msg_too_long starts far below its documented 40,000
        problems.append(f"text: {u16(text)} characters")
    blocks = payload.get("blocks")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return [*problems, "blocks: missing or more than 50"]
    for n, block in enumerate(blocks):
        problems += _block_problems(n, block)
    if _all_text(blocks) > blocks_text_limit:
        problems.append(f"blocks: {_all_text(blocks)} characters in all")
    return problems


def check(message: SlackMessage) -> dict[str, Any]:
    """The payload for ``message``, asserted to be inside Slack's limits and our own budget."""
    payload = {"channel": "C0123", "text": message.text, "blocks": message.blocks}
    assert limit_problems(payload, BLOCKS_TEXT_BUDGET) == []
    json.dumps(payload, ensure_ascii=False).encode("utf-8")  # serialises, as UTF-8 too
    return payload


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "text" and isinstance(v, str):
                    out.append(v)
                else:
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(blocks)
    return out


def field_texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [f["text"] for b in blocks if b["type"] == "section" for f in b.get("fields", [])]


def buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


# --- the Slack mimic ----------------------------------------------------------------------


@dataclass
class SlackReply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SlackMimic:
    server: TestServer
    calls: list[Received] = field(default_factory=list)
    script: list[SlackReply] = field(default_factory=list)
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    channels: set[str] = field(default_factory=lambda: set(CHANNELS))
    channel_errors: dict[str, str] = field(default_factory=dict)
    echo_auth: bool = False

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/api"))

    def to(self, channel: str) -> list[Received]:
        return [c for c in self.calls if c.json().get("channel") == channel]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        return await wait_for_requests(self.calls, count, timeout)

    def answer(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """What Slack answers (HTTP 200) to a well-formed request."""
        authorization = headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            return {"ok": False, "error": "not_authed"}
        if authorization.removeprefix("Bearer ") not in self.tokens:
            return {"ok": False, "error": "invalid_auth"}
        try:
            payload = json.loads(body)
        except ValueError:
            return {"ok": False, "error": "invalid_json"}
        channel = payload.get("channel")
        if channel in self.channel_errors:
            return {"ok": False, "error": self.channel_errors[channel]}
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        problems = limit_problems(payload)
        if problems:
            return {"ok": False, "error": "invalid_blocks", "errors": problems}
        message = {"type": "message", "text": payload["text"], "blocks": payload["blocks"]}
        return {"ok": True, "channel": channel, "ts": f"{time.time():.6f}", "message": message}


@pytest.fixture
async def slack(aiohttp_server: Any) -> SlackMimic:
    state = SlackMimic(server=None)  # type: ignore[arg-type]

    async def post_message(request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        state.calls.append(Received(request.path, headers, body, time.monotonic()))
        if state.script:
            reply = state.script.pop(0)
            text = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            return web.Response(
                status=reply.status,
                text=text,
                headers=reply.headers,
                content_type="application/json",
            )
        answer = state.answer(headers, body)
        if state.echo_auth:
            answer["debug_authorization"] = headers.get("Authorization")
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", post_message)
    state.server = await aiohttp_server(app, host="127.0.0.1")
    return state


@pytest.fixture
async def relay(make_relay: Any, slack: SlackMimic) -> Any:
    """The relay with Slack pointed at the mimic (overrides conftest's ``relay``)."""
    return await make_relay(slack={"api_base_url": slack.base_url})


def slack_args(channel: str = "C0123", integration: str = SLACK_INTEGRATION) -> dict[str, Any]:
    return {"Slack": {"channel_id": channel, "slack_integration_id": integration}}


async def states(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM deliveries ORDER BY created_at"))


async def metrics(relay: Any) -> str:
    text: str = await (await relay.get("/metrics")).text()
    return text


# --- what is sent ---------------------------------------------------------------------------


async def test_triage_rule_request_shape(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    await create_sink(relay, slack_args("C0123"))
    assert (await post_event(relay, TRIAGE)).status == 202
    (call,) = await slack.wait_for(1)
    await wait_final(db)
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.headers["Content-Type"] == "application/json; charset=utf-8"
    assert call.headers["User-Agent"].startswith("air-relay/")
    body = call.json()
    assert body["channel"] == "C0123"
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
    assert body["text"].startswith("Triage rule matched: Rule Name on Endpoint Name")
    assert str(TRIAGE["organizationId"]) in body["text"]
    blocks = body["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Triage rule matched", "emoji": True},
    }
    fields = field_texts(blocks)
    assert "*Rule name*\nRule Name" in fields
    assert "*Endpoint name*\nEndpoint Name" in fields
    assert "*Details*\nkey: value" in fields  # the nested object, compact
    assert blocks[-1]["type"] == "context"
    assert "TriageRuleMatchedEvent" in blocks[-1]["elements"][0]["text"]
    assert (await states(db))[0]["status"] == "delivered"
    (row,) = await audit_rows(relay)
    assert (row["outcome"], row["status_code"], row["event_sink_type"]) == ("success", 200, "Slack")
    # The ok:true answer echoes the whole message: parsed in full, stored as its first 2 KiB.
    assert '"ok": true' in row["response_body"]
    assert len(row["response_body"].encode()) <= 2048


async def test_task_details_url_becomes_a_button(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    url = "https://air.example.com/tasks/42?tab=details&x=<1>"
    event = json.loads(json.dumps(EXAMPLES["TaskProcessingFailedEvent"]))
    event["data"]["taskDetailsUrl"] = url
    await create_sink(relay, slack_args())
    await post_event(relay, event)
    (call,) = await slack.wait_for(1)
    blocks = call.json()["blocks"]
    (button,) = buttons(blocks)
    assert button["url"] == url  # a URL in JSON, not mrkdwn: sent as it is
    assert button["text"]["text"] == "Task details"
    assert not any("air.example.com" in t for t in field_texts(blocks))  # not repeated
    await wait_final(db)
    assert (await states(db))[0]["status"] == "delivered"


async def test_deprecated_channel_name_is_sent_as_channel(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    args = {"Slack": {"channel": "#dfir-alerts", "slack_integration_id": SLACK_INTEGRATION}}
    await create_sink(relay, args)
    await post_event(relay, TRIAGE)
    (call,) = await slack.wait_for(1)
    assert call.json()["channel"] == "#dfir-alerts"
    await wait_final(db)
    assert (await states(db))[0]["status"] == "delivered"


async def test_credential_fields_are_masked_in_the_request(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    event = json.loads(json.dumps(EXAMPLES["DeploymentTokenRegeneratedEvent"]))
    event["data"].update(oldToken="old-deploy-token-abcdef", newToken="secret-deploy-token-123456")
    await create_sink(relay, slack_args())
    await post_event(relay, event)
    (call,) = await slack.wait_for(1)
    raw = call.body.decode()
    assert "secret-deploy-token" not in raw
    assert "old-deploy-token" not in raw
    fields = field_texts(call.json()["blocks"])
    assert "*New token*\n…3456" in fields
    assert "*Old token*\n…cdef" in fields
    await wait_final(db)


async def test_all_28_events_and_an_unknown_one_are_delivered(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    await create_sink(relay, slack_args())
    unknown = {"eventName": "SomethingNewEvent", "organizationId": 7, "data": {"name": "n"}}
    for event in [entry["example"] for entry in CATALOG] + [unknown]:
        assert (await post_event(relay, event)).status == 202
    await wait_final(db, count=len(CATALOG) + 1, timeout=30)
    # The mimic refuses a message outside Slack's limits (invalid_blocks): every one went.
    assert {s["status"] for s in await states(db)} == {"delivered"}
    assert len(slack.calls) == len(CATALOG) + 1
    headers = {c.json()["blocks"][0]["text"]["text"] for c in slack.calls}
    assert headers == {event_title(e["eventName"]) for e in CATALOG} | {"Something new"}


# --- errors ------------------------------------------------------------------------------------


async def test_channel_not_found_is_one_attempt_then_dead(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    sink = await create_sink(relay, slack_args("C_NO_SUCH_CHANNEL"))
    await post_event(relay, TRIAGE)
    await wait_final(db)
    await asyncio.sleep(0.2)  # nothing more may arrive
    assert len(slack.calls) == 1
    (state,) = await states(db)
    assert (state["status"], state["attempts"], state["last_error"]) == (
        "dead",
        1,
        "channel_not_found",
    )
    (row,) = await audit_rows(relay)
    assert row["event_sink_id"] == sink["id"]
    assert (row["outcome"], row["status_code"], row["error"]) == (
        "failure",
        200,
        "channel_not_found",
    )
    assert json.loads(row["response_body"]) == {"ok": False, "error": "channel_not_found"}
    assert row["next_attempt_at"] is None
    assert 'reason="client_error",sink_type="Slack"' in await metrics(relay)


PERMANENT = [
    "not_in_channel",
    "is_archived",
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "account_inactive",
    "missing_scope",
    "msg_too_long",
]


async def test_each_permanent_slack_error_is_one_attempt_then_dead(
    make_relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    # One relay, one event, a sink per error: the mimic answers each channel with its error.
    relay = await make_relay(run_dispatcher=False, slack={"api_base_url": slack.base_url})
    sinks = {}
    for n, code in enumerate(PERMANENT):
        channel = f"C_ERR_{n}"
        slack.channel_errors[channel] = code
        sinks[(await create_sink(relay, slack_args(channel)))["id"]] = code
    await post_event(relay, TRIAGE)
    worker = await make_relay(slack={"api_base_url": slack.base_url})  # now dispatch
    await wait_final(db, count=len(PERMANENT))
    await asyncio.sleep(0.2)
    assert len(slack.calls) == len(PERMANENT)  # one attempt each
    assert all(s["status"] == "dead" and s["attempts"] == 1 for s in await states(db))
    rows = await audit_rows(relay)
    assert {r["event_sink_id"]: r["error"] for r in rows} == sinks
    assert all(r["status_code"] == 200 and r["next_attempt_at"] is None for r in rows)
    text = await metrics(worker)
    assert 'reason="auth_error",sink_type="Slack"} 5.0' in text
    assert 'reason="client_error",sink_type="Slack"} 3.0' in text


async def test_a_token_slack_refuses_is_invalid_auth_and_dead(
    make_relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    relay = await make_relay(
        slack={
            "api_base_url": slack.base_url,
            "integrations": {OTHER_INTEGRATION: {"bot_token": "xoxb-revoked-elsewhere"}},
        }
    )
    await create_sink(relay, slack_args(integration=OTHER_INTEGRATION))
    await post_event(relay, TRIAGE)
    (call,) = await slack.wait_for(1)
    assert call.headers["Authorization"] == "Bearer xoxb-revoked-elsewhere"
    await wait_final(db)
    (row,) = await audit_rows(relay)
    assert (row["error"], row["status_code"]) == ("invalid_auth", 200)
    assert (await states(db))[0]["status"] == "dead"


async def test_ratelimited_429_waits_retry_after_then_delivers(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    slack.script.append(
        SlackReply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})
    )
    await create_sink(relay, slack_args())
    await post_event(relay, TRIAGE)
    first, second = await slack.wait_for(2)
    assert second.at - first.at >= 0.95
    assert first.body == second.body
    await wait_final(db)
    (state,) = await states(db)
    assert (state["status"], state["attempts"]) == ("delivered", 2)
    ok, limited = await audit_rows(relay)
    assert (ok["outcome"], ok["status_code"]) == ("success", 200)
    assert (limited["outcome"], limited["status_code"], limited["error"]) == (
        "failure",
        429,
        "ratelimited",
    )
    assert limited["next_attempt_at"] is not None
    assert 'reason="rate_limited",sink_type="Slack"} 1.0' in await metrics(relay)


async def test_transient_errors_are_retried_until_delivered(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    slack.script.extend(
        [
            SlackReply(200, {"ok": False, "error": "internal_error"}),
            SlackReply(503, "upstream unavailable"),
            SlackReply(200, "<html>proxy error</html>"),  # 200 but not Slack's JSON
        ]
    )
    await create_sink(relay, slack_args())
    await post_event(relay, TRIAGE)
    await wait_final(db)
    (state,) = await states(db)
    assert (state["status"], state["attempts"]) == ("delivered", 4)
    rows = await audit_rows(relay)
    assert [(r["status_code"], r["error"]) for r in reversed(rows)] == [
        (200, "internal_error"),
        (503, "http_503"),
        (200, "invalid_response"),
        (200, None),
    ]
    assert 'reason="server_error",sink_type="Slack"} 3.0' in await metrics(relay)


async def test_bot_token_never_reaches_audit_rows_or_logs(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    slack.echo_auth = True  # every answer repeats the Authorization header it got
    with capture_logs() as logs:
        await create_sink(relay, slack_args("C0123"))
        await create_sink(relay, slack_args("C_UNKNOWN"))
        await post_event(relay, TRIAGE)
        await wait_final(db, count=2)
    rows = await audit_rows(relay)
    assert len(rows) == 2
    assert all("Bearer ***" in r["response_body"] for r in rows)  # the echo was there
    assert [e for e in logs if e["event"] == "delivery_failed"]
    text = json.dumps(logs, default=str) + json.dumps(rows)
    assert TOKEN not in text
    assert "xoxb" not in text


async def test_integration_removed_from_config_is_dead(
    make_relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    extra = {OTHER_INTEGRATION: {"bot_token": "xoxb-other-token"}}
    first = await make_relay(
        run_dispatcher=False, slack={"api_base_url": slack.base_url, "integrations": extra}
    )
    await create_sink(first, slack_args(integration=OTHER_INTEGRATION))
    await post_event(first, TRIAGE)
    # A restart whose config no longer has that integration, on the same database.
    second = await make_relay(slack={"api_base_url": slack.base_url})
    await wait_final(db)
    assert slack.calls == []
    (state,) = await states(db)
    assert (state["status"], state["last_error"]) == ("dead", "slack_integration_not_configured")
    (row,) = await audit_rows(second)
    assert (row["error"], row["status_code"]) == ("slack_integration_not_configured", None)


# --- pacing --------------------------------------------------------------------------------------


async def test_sends_are_paced_per_channel_not_across_channels(
    make_relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    relay = await make_relay(
        run_dispatcher=False,
        slack={"api_base_url": slack.base_url, "min_interval_seconds": 0.3},
    )
    await create_sink(relay, slack_args("C0123"))
    await create_sink(relay, slack_args("C0456"))
    for _ in range(5):
        await post_event(relay, TRIAGE)
    await make_relay(slack={"api_base_url": slack.base_url, "min_interval_seconds": 0.3})
    await wait_final(db, count=10)
    for channel in ("C0123", "C0456"):
        times = sorted(c.at for c in slack.to(channel))
        assert len(times) == 5
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.28, gaps
    a, b = slack.to("C0123"), slack.to("C0456")
    assert abs(min(c.at for c in a) - min(c.at for c in b)) < 0.25
    span = max(c.at for c in slack.calls) - min(c.at for c in slack.calls)
    assert span < 2.2  # 1.2 s if the channels run side by side, 2.7 s or more if serialized


async def test_a_burst_to_one_channel_does_not_hold_other_sinks_back(
    make_relay: Any, slack: SlackMimic, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    # Two workers, ten messages for one channel at 0.5 s: 4.5 s of pacing. Turns more than
    # DEFER_AFTER_SECONDS away go back to the queue instead of keeping the workers asleep, so
    # a Webhook event arriving behind the burst is not queued behind it.
    config = {
        "slack": {"api_base_url": slack.base_url, "min_interval_seconds": 0.5},
        "delivery": {"concurrency": 2, "batch_size": 2},
    }
    relay = await make_relay(run_dispatcher=False, **config)
    await create_sink(relay, slack_args("C0123"), events=["TriageRuleMatchedEvent"])
    for _ in range(10):
        await post_event(relay, TRIAGE)
    await make_relay(**config)
    await slack.wait_for(3)
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}}, events=["CaseCreatedEvent"])
    posted = time.monotonic()
    await post_event(relay, {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {}})
    (webhook,) = await sink_server.wait_for(1)
    assert webhook.at - posted < 1.0  # without deferral: after the Slack burst, ~3.5 s later
    await wait_final(db, count=11)
    times = sorted(c.at for c in slack.to("C0123"))
    assert len(times) == 10
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.45, gaps
    rows = await db.fetch("SELECT status, attempts, claims FROM deliveries")
    # A deferral is not an attempt and does not use up the retry schedule.
    assert {tuple(r) for r in rows} == {("delivered", 1, 1)}
    assert len(await audit_rows(relay)) == 11


async def test_pacer_spaces_one_key_and_not_another() -> None:
    pacer = ChannelPacer(0.2)
    delays = [pacer.reserve(("t", "C1")) for _ in range(3)]
    assert delays[0] == 0
    assert delays[1] == pytest.approx(0.2, abs=0.02)
    assert delays[2] == pytest.approx(0.4, abs=0.02)
    assert pacer.reserve(("t", "C2")) == 0
    assert pacer.reserve(("other-token", "C1")) == 0


async def test_pacer_hold_delays_sends_already_waiting() -> None:
    pacer = ChannelPacer(0.05)
    key = ("t", "C1")
    pacer.reserve(key)  # the send that got the 429
    started = time.monotonic()
    waiting = asyncio.create_task(pacer.wait_turn(key))  # slot at +0.05 s
    await asyncio.sleep(0.01)
    pacer.hold(key, 0.4)  # Slack said Retry-After while it slept
    await waiting
    assert time.monotonic() - started >= 0.39
    assert ChannelPacer(0).reserve(key) == 0


async def test_pacer_memory_is_bounded() -> None:
    pacer = ChannelPacer(0.001, max_entries=100)
    for batch in range(10):
        for n in range(150):
            pacer.reserve(("t", f"C{batch}-{n}"))
        # Past the slots just handed out: the next reserve beyond the bound drops them.
        await asyncio.sleep(0.01)
    pacer.reserve(("t", "fresh"))
    assert len(pacer) <= 101  # 1,501 channels seen, never more than the bound kept
    idle = ChannelPacer(0)
    for n in range(500):
        assert idle.reserve(("t", f"C{n}")) == 0
    assert len(idle) == 0  # pacing off: nothing kept


# --- the message --------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", CATALOG, ids=[e["eventName"] for e in CATALOG])
def test_each_catalog_example_renders_inside_limits(entry: dict[str, Any]) -> None:
    event = entry["example"]
    received = datetime(2025, 1, 28, 12, 0, tzinfo=UTC)
    message = message_for_body(
        event["eventName"], event["organizationId"], json.dumps(event).encode(), received
    )
    payload = check(message)
    assert payload["text"].startswith(event_title(event["eventName"]))
    header = message.blocks[0]
    assert header["type"] == "header"
    assert header["text"]["text"] == event_title(event["eventName"])
    assert message.blocks[1]["text"]["text"] in payload["text"]
    footer = message.blocks[-1]["elements"][0]["text"]
    assert event["eventName"] in footer and "<!date^1738065600^" in footer
    # Every data key shows up as a field (the catalog's link values are not URLs).
    labels = {t.split("\n")[0] for t in field_texts(message.blocks)}
    assert len(labels) == len(event["data"])


def test_huge_event_stays_inside_every_limit() -> None:
    data: dict[str, Any] = {"ruleName": "R" * 100_000, "details": {"blob": "x" * 100_000}}
    data.update({f"field{n}": f"value number {n} " + "y" * 30 for n in range(300)})
    data["taskDetailsUrl"] = "https://air.example.com/t/1"
    message = build_message("TriageRuleMatchedEvent", 0, data)
    check(message)
    assert len(message.text) <= 3000
    assert message.text.endswith("…")
    more = [t for t in texts(message.blocks) if "more fields not shown" in t]
    assert len(more) == 1
    shown = len(field_texts(message.blocks))
    assert f"… {len(data) - 1 - shown} more fields" in more[0]  # the URL is a button
    assert buttons(message.blocks)[0]["url"] == "https://air.example.com/t/1"
    assert message.blocks[-1]["type"] == "context"  # the footer still closes the message


def test_many_small_fields_stop_at_fifty_blocks() -> None:
    data = {f"k{n}": n for n in range(1000)}
    message = build_message("CaseCreatedEvent", 1, data)
    check(message)
    assert len(message.blocks) == 50
    shown = len(field_texts(message.blocks))
    assert f"… {1000 - shown} more fields" in texts(message.blocks)[-2]


def test_user_values_are_escaped_for_mrkdwn() -> None:
    data = {"name": "<!channel> & <https://evil.example|click>", "id": "c-1"}
    message = build_message("CaseCreatedEvent", "<b>", data)
    check(message)
    joined = "\n".join([message.text, *texts(message.blocks[1:])])
    assert "<!channel>" not in joined and "<https://evil" not in joined
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in joined
    assert "Organization &lt;b&gt;" in message.text
    # A cut never leaves half an entity behind.
    cut = build_message("CaseCreatedEvent", 1, {"name": "&" * 5000})
    check(cut)
    assert cut.text.endswith("&amp;…")


def test_unknown_event_and_odd_data_render_a_generic_message() -> None:
    message = build_message(
        "SomethingNewHappenedEvent", 3, {"name": "Thing", "count": 2, "deep": {"a": [1, {"b": 2}]}}
    )
    check(message)
    assert message.blocks[0]["text"]["text"] == "Something new happened"
    assert message.text.startswith("Something new happened: Thing")
    assert "*Deep*\na: [1, {b: 2}]" in field_texts(message.blocks)
    nested: Any = "bottom"
    for _ in range(5000):
        nested = [nested]
    for data in (None, [1, 2], "text", 42, {}, {"x": nested}, {"": ""}):
        check(build_message("X", None, data))
    check(message_for_body("", None, b"not json"))
    check(message_for_body("E", 1, b"[" * 100_000))
    check(build_message("E" * 10_000, "o" * 10_000, {"k" * 10_000: "\ud800 lone surrogate"}))


def test_nested_credentials_are_masked_too() -> None:
    data = {"details": {"apiKey": "k" * 20, "password": "hunter2-long-password"}}
    message = build_message("TriageRuleMatchedEvent", 1, data)
    joined = json.dumps(message.blocks)
    assert "hunter2" not in joined
    assert "kkkkkkkkkk" not in joined


def test_classify_follows_slack_conventions() -> None:
    ok = classify_answer(200, '{"ok": true, "warning": "missing_charset"}', "b", None)
    assert ok.ok and ok.status_code == 200
    limited = classify_answer(429, "", "", 30.0)
    assert (limited.error, limited.reason, limited.transient, limited.retry_after) == (
        "http_429",
        "rate_limited",
        True,
        30.0,
    )
    timeout = classify_answer(200, '{"ok": false, "error": "request_timeout"}', "", None)
    assert (timeout.error, timeout.transient, timeout.reason) == (
        "request_timeout",
        True,
        "server_error",
    )
    scope = classify_answer(200, '{"ok": false, "error": "missing_scope"}', "", None)
    assert (scope.transient, scope.reason) == (False, "auth_error")
    odd = classify_answer(200, '{"ok": false}', "", None)
    assert (odd.error, odd.transient) == ("unknown_error", False)
    not_found = classify_answer(404, "", "", None)
    assert (not_found.error, not_found.transient) == ("http_404", False)


def test_the_limit_checker_itself_catches_violations() -> None:
    # The end-to-end tests trust the mimic's checks; make sure they bite.
    good = check(build_message("CaseCreatedEvent", 1, {"name": "n"}))
    assert limit_problems(good) == []
    header = {"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}
    field_block = {"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}
    bad_button = {"type": "actions", "elements": [{"text": {"text": "b"}, "url": "ftp://x"}]}
    for blocks in ([header], [field_block], [bad_button], [good["blocks"][1]] * 51, []):
        assert limit_problems({"text": "t", "blocks": blocks}) != []
    assert limit_problems({"text": "t" * 4001, "blocks": good["blocks"]}) != []
    many = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}}] * 5
    assert limit_problems({"text": "t", "blocks": many}) != []


# --- AIR's console-relative links (air.console_url) -----------------------------------------

RELATIVE = "/#/task-details/12345"


def _with_relative_link() -> dict[str, Any]:
    event: dict[str, Any] = json.loads(json.dumps(EXAMPLES["TaskProcessingCompletedEvent"]))
    event["data"]["taskDetailsUrl"] = RELATIVE
    return event


async def test_relative_link_stays_text_without_console_url(
    relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    await create_sink(relay, slack_args())
    await post_event(relay, _with_relative_link())
    (call,) = await slack.wait_for(1)
    blocks = call.json()["blocks"]
    assert buttons(blocks) == []
    assert f"*Task details url*\n{RELATIVE}" in field_texts(blocks)


async def test_relative_link_becomes_a_button_with_console_url(
    make_relay: Any, slack: SlackMimic, db: asyncpg.Connection
) -> None:
    relay = await make_relay(
        slack={"api_base_url": slack.base_url}, air={"console_url": "https://air.example.com/"}
    )
    await create_sink(relay, slack_args())
    await post_event(relay, _with_relative_link())
    (call,) = await slack.wait_for(1)
    blocks = call.json()["blocks"]
    (button,) = buttons(blocks)
    assert button["url"] == "https://air.example.com/#/task-details/12345"
    assert button["text"]["text"] == "Task details"
    assert not any(RELATIVE in t for t in field_texts(blocks))  # shown once, as the button
    await wait_final(db)
    assert (await states(db))[0]["status"] == "delivered"


def test_console_url_keeps_its_path_prefix_and_never_changes_host() -> None:
    base = "https://air.example.com/air"
    data = {"taskDetailsUrl": "/#/t/1", "reportURL": "reports/7"}
    message = build_message("CaseFileSavedEvent", 1, data, console_url=base)
    assert [b["url"] for b in buttons(message.blocks)] == [
        "https://air.example.com/air/#/t/1",
        "https://air.example.com/air/reports/7",
    ]
    # Another host, another scheme: never a button, with or without the console address.
    odd = {"taskDetailsUrl": "//evil.example/x", "reportURL": "javascript:alert(1)"}
    assert buttons(build_message("CaseFileSavedEvent", 1, odd, console_url=base).blocks) == []
