"""Webhook templates: each preset renders, for every catalog event and for hostile data, the
documented shape of its chat tool's incoming webhook; custom templates are checked at create
and update (400 naming the field and the first failing event), run in a sandbox, and a render
that fails at send is one permanent attempt with its detail in the audit row. Signatures cover
the bytes actually sent. (The template workers' limits: test_template_workers.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from air_relay.sinks import templates
from air_relay.sinks.registry import check_template
from air_relay.sinks.template_workers import TemplateWorkers
from air_relay.sinks.templates import (
    PRESETS_NAMES,
    RenderFailed,
    example_context,
    parse_template,
    render,
)
from air_relay.validation import InvalidArgument
from tests.support import (
    ADMIN_KEY,
    CATALOG,
    TENANT,
    SinkServer,
    audit_rows,
    auth,
    create_sink,
    delivery_state,
    make_config,
    post_event,
    wait_final,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONSOLE = "https://air.example.com"
FIELD = "event_sink_args.Webhook.template"


def u16(text: str) -> int:
    """Length as JavaScript (Discord) counts it."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def hostile() -> dict[str, Any]:
    """Everything a chat tool could choke on or be tricked by, in one event."""
    data: dict[str, Any] = {
        "ruleName": "@everyone <users/all> <!channel> [click](https://evil.example) *bold*",
        "endpointName": "🔥" * 3000,
        "taskDetailsUrl": "/#/task-details/1",
        "reportURL": "javascript:alert(1)",
        "newToken": "secret-token-value-1234",
        "nested": {"a": [1, 2, {"b": "c" * 5000}]},
        "lone": "\ud800 surrogate",
        "": "empty key",
    }
    data.update({f"field{i}": "x" * 3000 for i in range(40)})
    return {"eventName": "TriageRuleMatchedEvent", "organizationId": "<org>", "data": data}


EVENTS = [(e["eventName"], e["example"]) for e in CATALOG] + [
    ("hostile", hostile()),
    ("unknown", {"eventName": "SomethingNewEvent", "organizationId": 7, "data": {"x": None}}),
]


def rendered(preset: str, envelope: dict[str, Any], console_url: str | None = CONSOLE) -> Any:
    body = render(preset, example_context(envelope, console_url))
    return body, json.loads(body)


# --- each preset against its tool's documented shape ---------------------------------------


def teams_problems(msg: Any, size: int) -> list[str]:
    """Teams incoming webhooks (Workflows): an Adaptive Card in a message's attachments,
    at most 28 KB."""
    problems = []
    if size > 28 * 1024:
        problems.append(f"{size} bytes exceed 28 KB")
    if msg.get("type") != "message" or len(msg.get("attachments", [])) != 1:
        return [*problems, "not a message with one attachment"]
    att = msg["attachments"][0]
    if att.get("contentType") != "application/vnd.microsoft.card.adaptive":
        problems.append("not an Adaptive Card attachment")
    card = att.get("content", {})
    if card.get("type") != "AdaptiveCard" or card.get("version") not in ("1.2", "1.3", "1.4"):
        problems.append("not an AdaptiveCard of version 1.2-1.4")
    for element in card.get("body", []):
        if element.get("type") == "TextBlock" and not isinstance(element.get("text"), str):
            problems.append("a TextBlock without text")
        elif element.get("type") == "FactSet":
            for fact in element["facts"]:
                if not (isinstance(fact["title"], str) and isinstance(fact["value"], str)):
                    problems.append("a fact that is not two strings")
        elif element.get("type") not in ("TextBlock", "FactSet"):
            problems.append(f"unexpected element {element.get('type')}")
    for action in card.get("actions", []):
        if action.get("type") != "Action.OpenUrl" or not action["url"].startswith("https://"):
            problems.append("an action that is not an OpenUrl to https")
    return problems


def discord_problems(msg: Any, size: int) -> list[str]:
    """Discord's execute-webhook limits: content <= 2000, <= 10 embeds, title <= 256,
    description <= 4096, <= 25 fields (name <= 256, value <= 1024, neither empty), footer
    <= 2048, all of an embed's text <= 6000."""
    problems = []
    if "content" not in msg and not msg.get("embeds"):
        problems.append("neither content nor embeds")
    if u16(msg.get("content", "")) > 2000:
        problems.append("content > 2000")
    if msg.get("allowed_mentions") != {"parse": []}:
        problems.append("mentions are not disabled")
    embeds = msg.get("embeds", [])
    if len(embeds) > 10:
        problems.append("more than 10 embeds")
    for embed in embeds:
        total = u16(embed.get("title", "")) + u16(embed.get("description", ""))
        if u16(embed.get("title", "")) > 256 or u16(embed.get("description", "")) > 4096:
            problems.append("title or description too long")
        fields = embed.get("fields", [])
        if len(fields) > 25:
            problems.append("more than 25 fields")
        for f in fields:
            if not 0 < u16(f["name"]) <= 256 or not 0 < u16(f["value"]) <= 1024:
                problems.append(f"field {f['name']!r} out of bounds")
            total += u16(f["name"]) + u16(f["value"])
        footer = embed.get("footer", {}).get("text", "")
        total += u16(footer)
        if u16(footer) > 2048 or total > 6000:
            problems.append(f"embed text {total} > 6000 or footer too long")
        if not 0 <= embed.get("color", 0) <= 0xFFFFFF:
            problems.append("color out of range")
        if "url" in embed and not embed["url"].startswith("https://"):
            problems.append("url not https")
    return problems


def text_problems(msg: Any, limit: int, allowed: set[str]) -> list[str]:
    """Google Chat (``text``, at most 4096 characters) and Mattermost (``text``, at most
    16383) simple messages."""
    problems = []
    if not isinstance(msg.get("text"), str) or not msg["text"].strip():
        problems.append("no text")
    elif u16(msg["text"]) > limit:
        problems.append(f"text longer than {limit}")
    if set(msg) - allowed:
        problems.append(f"unexpected keys {set(msg) - allowed}")
    return problems


CHECKS = {
    "teams": teams_problems,
    "discord": discord_problems,
    "google_chat": lambda msg, size: text_problems(msg, 4096, {"text"}),
    "mattermost": lambda msg, size: text_problems(msg, 16383, {"text", "username"}),
}


@pytest.mark.parametrize("preset", PRESETS_NAMES)
@pytest.mark.parametrize("console_url", [CONSOLE, None])
@pytest.mark.parametrize(("name", "envelope"), EVENTS, ids=[n for n, _ in EVENTS])
def test_preset_renders_its_tools_shape(
    preset: str, console_url: str | None, name: str, envelope: dict[str, Any]
) -> None:
    body, msg = rendered(preset, envelope, console_url)
    assert CHECKS[preset](msg, len(body)) == []
    text = body.decode()
    assert "secret-token-value-1234" not in text  # credential fields are masked
    if name == "hostile" and preset != "google_chat":  # (Google Chat has no such syntax)
        # No Markdown link forged from the event's text.
        assert "[click](https" not in text


def test_presets_make_console_links_clickable_only_with_console_url() -> None:
    example = dict(CATALOG[2]["example"])  # TaskProcessingCompletedEvent
    example["data"] = {**example["data"], "taskDetailsUrl": "/#/task-details/42"}
    url = "https://air.example.com/#/task-details/42"
    _, teams = rendered("teams", example)
    assert teams["attachments"][0]["content"]["actions"] == [
        {"type": "Action.OpenUrl", "title": "Task details", "url": url}
    ]
    _, discord = rendered("discord", example)
    assert discord["embeds"][0]["url"] == url
    assert f"[Task details]({url})" in discord["embeds"][0]["description"]
    _, chat = rendered("google_chat", example)
    assert f"<{url}|Task details>" in chat["text"]
    _, mm = rendered("mattermost", example)
    assert f"[Task details]({url})" in mm["text"]
    # Without the console address: no link anywhere, the relative text as a field.
    _, teams = rendered("teams", example, None)
    assert "actions" not in teams["attachments"][0]["content"]
    facts = teams["attachments"][0]["content"]["body"][2]["facts"]
    assert {"title": "Task details url", "value": "/#/task-details/42"} in facts
    _, discord = rendered("discord", example, None)
    assert "url" not in discord["embeds"][0]


def test_mentions_and_markup_from_the_event_are_neutralised() -> None:
    _, discord = rendered("discord", hostile())
    rule = next(f for f in discord["embeds"][0]["fields"] if f["name"] == "Rule name")
    assert "@\u200beveryone" in rule["value"] and "\\[click\\]" in rule["value"]
    _, chat = rendered("google_chat", hostile())
    assert "<users/all>" not in chat["text"] and "\u2039users/all\u203a" in chat["text"]
    _, mm = rendered("mattermost", hostile())
    assert "@everyone" not in mm["text"]


# --- custom templates: checks at create, the sandbox ---------------------------------------


def test_custom_template_gets_the_context() -> None:
    body = (
        '{"t": {{ title | tojson }}, "s": {{ severity | tojson }}, "e": {{ event_name | tojson }},'
        ' "o": {{ organization_id | tojson }}, "l": {{ links | map(attribute="url") | list'
        ' | tojson }}, "d": {{ data.get("taskId") | tojson }}, "id": {{ event_id | tojson }},'
        ' "at": {{ received_at | tojson }}}'
    )
    spec = parse_template({"body": body}, FIELD)
    example = CATALOG[3]["example"]  # TaskProcessingFailedEvent
    at = datetime(2025, 1, 28, 12, 0, 0, tzinfo=UTC)
    out = json.loads(render(spec, example_context(example, CONSOLE, received_at=at)))
    assert out["t"] == "Task processing failed" and out["s"] == "error"
    assert out["e"] == "TaskProcessingFailedEvent" and out["o"] == 1
    assert out["l"] == ["https://air.example.com/url"] and out["d"] == "taskId"
    assert out["at"] == "2025-01-28T12:00:00Z"


def test_example_contexts_are_new_events() -> None:
    """Catalog examples are checked as if they had just arrived: no constant id or time a
    template could tell them from real events by."""
    first, second = (example_context({"eventName": "E"}, None) for _ in range(2))
    assert first.event_id != second.event_id
    assert first.event_id != "00000000-0000-4000-8000-000000000000"
    assert (first.received_at or "") >= datetime.now(UTC).strftime("%Y-%m-%dT%H:%M")


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ("slack", FIELD, "must be one of teams, discord, google_chat, mattermost"),
        ({"body": "{}", "x": 1}, FIELD, "preset name or an object"),
        ({"body": 5}, f"{FIELD}.body", "non-empty string"),
        ({"body": "x" * 20000}, f"{FIELD}.body", "at most 16384"),
        ({"body": "{{ title "}, FIELD, "does not compile"),
        ({"body": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"}, FIELD, "nested too deeply"),
        ({"body": "{{" * 8000}, FIELD, "does not compile"),
        ({"body": "{% macro f() %}{% endmacro %}{}"}, FIELD, "uses {% macro %}"),
        ({"body": "{% call range(1) %}{% endcall %}{}"}, FIELD, "uses {% call %}"),
        ({"body": "{% block a %}{% endblock %}{}"}, FIELD, "uses {% block %}"),
        ({"body": '{% extends "x" %}'}, FIELD, "uses {% extends %}"),
        ({"body": '{% include "x" %}{}'}, FIELD, "uses {% include %}"),
        ({"body": '{% import "x" as y %}{}'}, FIELD, "uses {% import %}"),
        ({"body": '{% from "x" import y %}{}'}, FIELD, "uses {% from ... import %}"),
        ({"body": "{% for x in [1] recursive %}{% endfor %}{}"}, FIELD, "recursive for loop"),
    ],
)
def test_bad_sources_are_refused_naming_the_field(value: Any, field: str, words: str) -> None:
    """Refused in the relay's process, before any render: parsing is linear in the source."""
    with pytest.raises(InvalidArgument) as info:
        parse_template(value, FIELD)
    assert info.value.field == field
    assert words in str(info.value), str(info.value)


@pytest.fixture
async def workers() -> AsyncIterator[TemplateWorkers]:
    pool = TemplateWorkers()
    yield pool
    await pool.close()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{{ title }}", "fails for the catalog's DeploymentTokenRegeneratedEvent"),
        (
            '{"id": {{ data.taskId | tojson }}}',
            "DeploymentTokenRegeneratedEvent: TypeError: Object of type StrictUndefined",
        ),
        ("{{ ''.__class__ }}", "SecurityError"),
        ("{{ 'x' * 1000000 }}", "repetition"),
        ("{{ '%s' % title }}", "% formatting"),
        ("{{ 'a'.ljust(99999999) }}", "SecurityError"),
        ("{{ '{:>99999999}'.format(1) }}", "SecurityError"),
        ("{{ lipsum(3) }}", "'lipsum' is undefined"),
        (
            "{% for i in range(5000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}",
            "range() beyond",
        ),
        ('"{{ "x" * 99999 }}{{ "x" * 99999 }}" ' * 9, "exceeds 1048576 bytes"),
    ],
)
async def test_bad_renders_are_refused_naming_the_field(
    body: str, words: str, workers: TemplateWorkers
) -> None:
    """Rendered for the catalog's examples in the template workers (as at create)."""
    args = {"url": "http://127.0.0.1:9/", "template": {"body": body}}
    with pytest.raises(InvalidArgument) as info:
        await check_template("Webhook", args, make_config(), workers)
    assert info.value.field == FIELD
    assert words in str(info.value), str(info.value)


def test_render_failure_is_a_render_failed() -> None:
    with pytest.raises(RenderFailed, match="not valid JSON"):
        render({"body": "{"}, example_context({"eventName": "E"}, None))
    assert templates.TEMPLATE_SOURCE_LIMIT == 16384


# --- through the API and to a receiver --------------------------------------------------


async def test_api_refuses_a_bad_template_and_echoes_a_good_one(relay: Any) -> None:
    body = {
        "tenant_id": TENANT,
        "name": "chat",
        "description": "",
        "event_sink_args": {
            "Webhook": {"url": "http://127.0.0.1:9/", "template": {"body": "{{ data.name }}"}}
        },
    }
    resp = await relay.post("/v1/event_sink", json=body, headers=auth(ADMIN_KEY))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith(f"{FIELD} fails for the catalog's ")
    args = {"url": "http://127.0.0.1:9/", "template": "teams"}
    sink = await create_sink(relay, {"Webhook": args})
    assert sink["configuration"]["Webhook"]["template"] == "teams"
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}",
        json={"event_sink_args": {"Webhook": {"template": {"body": "[1,"}}}},
        headers=auth(ADMIN_KEY),
    )
    assert resp.status == 400
    assert FIELD in (await resp.json())["error"]["message"]
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}",
        json={"event_sink_args": {"Webhook": {"template": None}}},
        headers=auth(ADMIN_KEY),
    )
    assert resp.status == 200
    assert "template" not in (await resp.json())["event_sink"]["configuration"]["Webhook"]


@pytest.mark.parametrize("preset", PRESETS_NAMES)
async def test_preset_end_to_end_signed_over_the_bytes_sent(
    preset: str, make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    relay = await make_relay(air={"console_url": CONSOLE})
    args = {"url": sink_server.url(), "secret": SECRET, "template": preset}
    await create_sink(relay, {"Webhook": args})
    event = dict(CATALOG[3]["example"])  # TaskProcessingFailedEvent
    event["data"] = {**event["data"], "taskDetailsUrl": "/#/task-details/9"}
    assert (await post_event(relay, event)).status == 202
    (got,) = await sink_server.wait_for(1)
    msg = Webhook(SECRET).verify(got.body, got.headers)  # the signature is over these bytes
    assert msg == json.loads(got.body)
    assert CHECKS[preset](msg, len(got.body)) == []
    assert "https://air.example.com/#/task-details/9" in got.body.decode()
    assert got.headers["Content-Type"] == "application/json"
    await wait_final(db)
    assert (await delivery_state(db))["status"] == "delivered"


async def test_render_error_at_send_is_permanent_with_its_detail(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    # Renders for every catalog example, but not for an event carrying "boom".
    body = '{% if envelope.get("boom") %}{{ envelope.boom.missing }}{% endif %}{"ok": true}'
    await create_sink(relay, {"Webhook": {"url": sink_server.url(), "template": {"body": body}}})
    await post_event(relay, {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {}})
    await post_event(
        relay, {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {}, "boom": {"x": 1}}
    )
    await wait_final(db, 2)
    (got,) = sink_server.received
    assert json.loads(got.body) == {"ok": True}
    rows = await audit_rows(relay)
    failed = [r for r in rows if r["outcome"] == "failure"]
    assert len(rows) == 2 and len(failed) == 1
    (row,) = failed
    assert (row["error"], row["status_code"], row["next_attempt_at"]) == (
        "template_error",
        None,
        None,
    )
    assert "UndefinedError" in row["response_body"] and "missing" in row["response_body"]
    states = {r["status"] for r in await db.fetch("SELECT status FROM deliveries")}
    assert states == {"delivered", "dead"}
