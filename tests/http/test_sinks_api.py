"""The Scanner-compatible event sink API, /v1/event_sink, end to end over HTTP on a
real database: shapes, extensions, write-only secrets, PUT merging, validation, auth, tenant
isolation, and the routing effect of a sink's settings on the next event."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import asyncpg
from standardwebhooks.webhooks import Webhook

from tests.support import (
    ADMIN_KEY,
    CATALOG,
    SLACK_INTEGRATION,
    TENANT,
    TENANT_B,
    TENANT_B_KEY,
    SinkServer,
    auth,
    create_sink,
    post_event,
)

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
SCANNER_KEYS = {
    "id",
    "tenant_id",
    "name",
    "description",
    "event_sink_type",
    "configuration",
    "created_at",
    "updated_at",
}
EXTENSION_KEYS = {
    "events",
    "organization_ids",
    "active",
    "ordering",
    "fallback_event_sink_id",
    "digest",
}
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
BEARER = "bearer-token-that-is-long-enough-1234"
EXAMPLE = CATALOG[0]["example"]  # organizationId 1 (an integer)

WEBHOOK_ARGS = {"Webhook": {"url": "https://test.com/webhook/abc"}}
SLACK_ARGS = {"Slack": {"channel_id": "C12345678", "slack_integration_id": SLACK_INTEGRATION}}
PAGERDUTY_ARGS = {"PagerDuty": {"integration_key": "e93facc04764012d7bfb002500d5d1a6"}}
# The integration key is write-only: shown as its last four characters.
PAGERDUTY_SHOWN = {"PagerDuty": {"integration_key": "\u2026d1a6"}}


# --- helpers ---------------------------------------------------------------------------------


async def call(
    relay: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = ADMIN_KEY,
    raw: bytes | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """(status, parsed body, headers) of one API call."""
    headers = auth(key) if key is not None else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if raw is not None:
        kwargs["data"] = raw
        headers["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    if params is not None:
        kwargs["params"] = params
    resp = await relay.request(method, path, **kwargs)
    text = await resp.text()
    return resp.status, json.loads(text), resp.headers


def assert_error(status: int, body: Any, want_status: int, code: str, *names: str) -> str:
    """The one error shape; the message names every one of ``names``."""
    assert status == want_status, body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert isinstance(message, str) and message
    for name in names:
        assert name in message, (name, message)
    return message


def new_sink_body(args: Any, **extra: Any) -> dict[str, Any]:
    return {
        "tenant_id": TENANT,
        "name": "Webhook",
        "description": "Detection alerts webhook",
        "event_sink_args": args,
        **extra,
    }


def assert_sink_shape(sink: dict[str, Any]) -> None:
    assert set(sink) == SCANNER_KEYS | EXTENSION_KEYS, sink
    uuid.UUID(sink["id"])
    assert TIMESTAMP.match(sink["created_at"]), sink["created_at"]
    assert TIMESTAMP.match(sink["updated_at"]), sink["updated_at"]
    assert sink["event_sink_type"] in ("Slack", "Webhook", "PagerDuty")
    assert set(sink["configuration"]) == {sink["event_sink_type"]}


# --- create / get / list / put / delete ---------------------------------------------------------


async def test_create_webhook_matches_scanner_example(relay: Any) -> None:
    status, body, _ = await call(relay, "POST", "/v1/event_sink", new_sink_body(WEBHOOK_ARGS))
    assert status == 200, body
    assert set(body) == {"event_sink"}
    sink = body["event_sink"]
    assert_sink_shape(sink)
    assert sink["tenant_id"] == TENANT
    assert sink["name"] == "Webhook"
    assert sink["description"] == "Detection alerts webhook"
    assert sink["event_sink_type"] == "Webhook"
    assert sink["configuration"] == {"Webhook": {"url": "https://test.com/webhook/abc"}}
    assert sink["created_at"] == sink["updated_at"]
    # The extensions' defaults: all events, all organizations, active.
    assert sink["events"] is None
    assert sink["organization_ids"] is None
    assert sink["active"] is True


EACH_TYPE: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    (SLACK_ARGS, "Slack", SLACK_ARGS),
    (SLACK_NAMED := {"Slack": {"channel": "#alerts", "slack_integration_id": SLACK_INTEGRATION}},
     "Slack", SLACK_NAMED),
    (SLACK_BOTH := {"Slack": {"channel_id": "C1", "channel": "#a",
                              "slack_integration_id": SLACK_INTEGRATION}},
     "Slack", SLACK_BOTH),
    (WEBHOOK_ARGS, "Webhook", WEBHOOK_ARGS),
    (PAGERDUTY_ARGS, "PagerDuty", PAGERDUTY_SHOWN),
]  # fmt: skip


async def test_create_get_list_each_type(relay: Any) -> None:
    """Slack (channel_id, the deprecated channel, both), Webhook, PagerDuty."""
    created_all = []
    for args, sink_type, shown in EACH_TYPE:
        status, body, _ = await call(relay, "POST", "/v1/event_sink", new_sink_body(args))
        assert status == 200, body
        created = body["event_sink"]
        assert_sink_shape(created)
        assert created["event_sink_type"] == sink_type
        assert created["configuration"] == shown
        created_all.append(created)

        status, got, _ = await call(relay, "GET", f"/v1/event_sink/{created['id']}")
        assert status == 200
        assert got == {"event_sink": created}

    status, listed, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT})
    assert status == 200
    assert listed == {"data": {"event_sinks": created_all}, "pagination": None}


async def test_list_is_per_tenant_in_creation_order(relay: Any) -> None:
    empty = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT})
    assert empty[:2] == (200, {"data": {"event_sinks": []}, "pagination": None})
    first = await create_sink(relay, WEBHOOK_ARGS, name="one")
    second = await create_sink(relay, SLACK_ARGS, name="two")
    third = await create_sink(relay, PAGERDUTY_ARGS, name="three")
    other = await create_sink(relay, WEBHOOK_ARGS, tenant_id=TENANT_B, name="b")

    _, listed, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT})
    assert [s["id"] for s in listed["data"]["event_sinks"]] == [
        first["id"],
        second["id"],
        third["id"],
    ]
    assert listed["pagination"] is None
    _, listed_b, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT_B})
    assert listed_b["data"]["event_sinks"] == [other]


async def test_list_without_tenant_id_is_400(relay: Any) -> None:
    status, body, _ = await call(relay, "GET", "/v1/event_sink")
    assert_error(status, body, 400, "invalid_argument", "tenant_id")
    status, body, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": " "})
    assert_error(status, body, 400, "invalid_argument", "tenant_id")
    status, body, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": "a\x00"})
    assert_error(status, body, 400, "invalid_argument", "tenant_id")


async def test_put_webhook_url_like_scanner_example(relay: Any) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS, name="Webhook", description="d")
    update = {"id": sink["id"], "event_sink_args": {"Webhook": {"url": "https://foo.com/x"}}}
    status, body, _ = await call(relay, "PUT", f"/v1/event_sink/{sink['id']}", update)
    assert status == 200, body
    updated = body["event_sink"]
    assert_sink_shape(updated)
    assert updated["configuration"] == {"Webhook": {"url": "https://foo.com/x"}}
    assert (updated["id"], updated["tenant_id"]) == (sink["id"], TENANT)
    assert (updated["name"], updated["description"]) == ("Webhook", "d")
    assert updated["created_at"] == sink["created_at"]
    assert updated["updated_at"] >= sink["updated_at"]
    _, got, _ = await call(relay, "GET", f"/v1/event_sink/{sink['id']}")
    assert got == body


async def test_put_without_id_and_with_only_name_or_description(relay: Any) -> None:
    sink = await create_sink(relay, PAGERDUTY_ARGS, name="old", description="old d")
    path = f"/v1/event_sink/{sink['id']}"
    status, body, _ = await call(relay, "PUT", path, {"name": "new"})
    assert status == 200, body
    assert body["event_sink"]["name"] == "new"
    assert body["event_sink"]["description"] == "old d"
    assert body["event_sink"]["configuration"] == PAGERDUTY_SHOWN
    status, body, _ = await call(relay, "PUT", path, {"description": ""})
    assert status == 200, body
    assert (body["event_sink"]["name"], body["event_sink"]["description"]) == ("new", "")
    status, body, _ = await call(relay, "PUT", path, {})
    assert status == 200, body
    assert body["event_sink"]["name"] == "new"


async def test_put_slack_channel_id_keeps_integration(relay: Any) -> None:
    sink = await create_sink(relay, SLACK_ARGS)
    update = {"id": sink["id"], "event_sink_args": {"Slack": {"channel_id": "C87654321"}}}
    status, body, _ = await call(relay, "PUT", f"/v1/event_sink/{sink['id']}", update)
    assert status == 200, body
    assert body["event_sink"]["configuration"] == {
        "Slack": {"channel_id": "C87654321", "slack_integration_id": SLACK_INTEGRATION}
    }


async def test_put_slack_switching_between_channel_and_channel_id(relay: Any) -> None:
    """channel and channel_id name the same destination: a PUT naming one replaces the other,
    or the old value would go on deciding where messages are posted."""
    sink = await create_sink(relay, SLACK_ARGS)
    path = f"/v1/event_sink/{sink['id']}"
    status, body, _ = await call(
        relay, "PUT", path, {"event_sink_args": {"Slack": {"channel": "#b"}}}
    )
    assert status == 200, body
    assert body["event_sink"]["configuration"] == {
        "Slack": {"channel": "#b", "slack_integration_id": SLACK_INTEGRATION}
    }
    status, body, _ = await call(
        relay, "PUT", path, {"event_sink_args": {"Slack": {"channel_id": "C9"}}}
    )
    assert status == 200, body
    assert body["event_sink"]["configuration"] == {
        "Slack": {"channel_id": "C9", "slack_integration_id": SLACK_INTEGRATION}
    }
    both = {"Slack": {"channel_id": "C7", "channel": "#c"}}
    status, body, _ = await call(relay, "PUT", path, {"event_sink_args": both})
    assert status == 200, body
    assert body["event_sink"]["configuration"]["Slack"] == {
        "channel_id": "C7",
        "channel": "#c",
        "slack_integration_id": SLACK_INTEGRATION,
    }


async def test_put_slack_unknown_integration_is_400_and_changes_nothing(relay: Any) -> None:
    sink = await create_sink(relay, SLACK_ARGS)
    path = f"/v1/event_sink/{sink['id']}"
    bad = {"Slack": {"slack_integration_id": str(uuid.uuid4())}}
    status, body, _ = await call(relay, "PUT", path, {"event_sink_args": bad})
    assert_error(
        status, body, 400, "invalid_argument", "event_sink_args.Slack.slack_integration_id"
    )
    _, got, _ = await call(relay, "GET", path)
    assert got == {"event_sink": sink}


async def test_put_pagerduty_key(relay: Any) -> None:
    sink = await create_sink(relay, PAGERDUTY_ARGS)
    new = {"PagerDuty": {"integration_key": "0123456789abcdef0123456789abcdef"}}
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{sink['id']}", {"id": sink["id"], "event_sink_args": new}
    )
    assert status == 200, body
    assert body["event_sink"]["configuration"] == {"PagerDuty": {"integration_key": "\u2026cdef"}}


async def test_put_can_change_the_sink_type(relay: Any) -> None:
    sink = await create_sink(
        relay, {"Webhook": {"url": "https://a.example/x", "secret": SECRET, "bearer_token": BEARER}}
    )
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{sink['id']}", {"event_sink_args": PAGERDUTY_ARGS}
    )
    assert status == 200, body
    assert body["event_sink"]["event_sink_type"] == "PagerDuty"
    assert body["event_sink"]["configuration"] == PAGERDUTY_SHOWN
    # A new type is validated on its own: nothing of the old args is merged in.
    status, body, _ = await call(
        relay,
        "PUT",
        f"/v1/event_sink/{sink['id']}",
        {"event_sink_args": {"Slack": {"channel_id": "C1"}}},
    )
    assert_error(
        status, body, 400, "invalid_argument", "event_sink_args.Slack.slack_integration_id"
    )


async def test_put_id_in_body_must_match_path(relay: Any) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS)
    path = f"/v1/event_sink/{sink['id']}"
    for wrong in (str(uuid.uuid4()), "not-a-uuid", 5):
        status, body, _ = await call(relay, "PUT", path, {"id": wrong, "name": "x"})
        assert_error(status, body, 400, "invalid_argument", "id")
    # The same id, written differently, is the same id.
    status, body, _ = await call(relay, "PUT", path, {"id": sink["id"].upper(), "name": "y"})
    assert status == 200, body
    assert body["event_sink"]["name"] == "y"


async def test_put_cannot_move_a_sink_to_another_tenant(relay: Any) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS)
    path = f"/v1/event_sink/{sink['id']}"
    status, body, _ = await call(relay, "PUT", path, {"tenant_id": TENANT_B})
    assert_error(status, body, 400, "invalid_argument", "tenant_id")
    status, body, _ = await call(relay, "PUT", path, {"tenant_id": TENANT, "name": "same"})
    assert status == 200, body
    assert body["event_sink"]["tenant_id"] == TENANT


async def test_delete(relay: Any) -> None:
    sink = await create_sink(relay, SLACK_ARGS)
    keep = await create_sink(relay, WEBHOOK_ARGS)
    path = f"/v1/event_sink/{sink['id']}"
    status, body, _ = await call(relay, "DELETE", path)
    assert status == 200
    assert body == {"id": sink["id"], "tenant_id": TENANT}
    status, body, _ = await call(relay, "GET", path)
    assert_error(status, body, 404, "not_found")
    status, body, _ = await call(relay, "DELETE", path)
    assert_error(status, body, 404, "not_found")
    status, body, _ = await call(relay, "PUT", path, {"name": "x"})
    assert_error(status, body, 404, "not_found")
    _, listed, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT})
    assert listed["data"]["event_sinks"] == [keep]


# --- extensions ----------------------------------------------------------------------------------


async def test_extensions_round_trip(relay: Any, db: asyncpg.Connection) -> None:
    sink = await create_sink(
        relay,
        WEBHOOK_ARGS,
        events=["CaseFileSavedEvent", "AssetCreatedEvent"],
        organization_ids=[1, "42"],
        active=False,
    )
    assert sink["events"] == ["CaseFileSavedEvent", "AssetCreatedEvent"]
    assert sink["organization_ids"] == ["1", "42"]
    assert sink["active"] is False
    path = f"/v1/event_sink/{sink['id']}"
    # Left out of a PUT: kept.
    _, body, _ = await call(relay, "PUT", path, {"name": "renamed"})
    assert body["event_sink"]["events"] == ["CaseFileSavedEvent", "AssetCreatedEvent"]
    assert body["event_sink"]["organization_ids"] == ["1", "42"]
    assert body["event_sink"]["active"] is False
    # null: back to "all".
    status, body, _ = await call(
        relay, "PUT", path, {"events": None, "organization_ids": None, "active": True}
    )
    assert status == 200, body
    assert body["event_sink"]["events"] is None
    assert body["event_sink"]["organization_ids"] is None
    assert body["event_sink"]["active"] is True
    row = await db.fetchrow("SELECT events, organization_ids, active FROM event_sinks")
    assert row is not None
    assert (row["events"], row["organization_ids"], row["active"]) == (None, None, True)


async def test_explicit_null_extensions_on_create_mean_all(relay: Any) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS, events=None, organization_ids=None)
    assert (sink["events"], sink["organization_ids"], sink["active"]) == (None, None, True)


# --- write-only secrets --------------------------------------------------------------------------


def webhook_full(url: str = "https://hooks.example/x") -> dict[str, Any]:
    return {
        "Webhook": {
            "url": url,
            "secret": SECRET,
            "bearer_token": BEARER,
            "headers": {"X-Env": "prod"},
        }
    }


def assert_masked(config: dict[str, Any], secret: str = SECRET, bearer: str = BEARER) -> None:
    webhook = config["Webhook"]
    assert webhook["secret"] == "whsec_\u2026" + secret[-4:]
    assert webhook["bearer_token"] != bearer
    assert webhook["bearer_token"].endswith(bearer[-4:])
    assert "\u2026" in webhook["bearer_token"]


async def test_secrets_are_masked_in_every_response(relay: Any, db: asyncpg.Connection) -> None:
    resp = await relay.post(
        "/v1/event_sink", json=new_sink_body(webhook_full()), headers=auth(ADMIN_KEY)
    )
    created_text = await resp.text()
    assert resp.status == 200, created_text
    sink = json.loads(created_text)["event_sink"]
    assert_masked(sink["configuration"])
    assert sink["configuration"]["Webhook"]["url"] == "https://hooks.example/x"
    assert sink["configuration"]["Webhook"]["headers"] == {"X-Env": "prod"}

    path = f"/v1/event_sink/{sink['id']}"
    texts = [created_text]
    for method, target, kwargs in (
        ("GET", path, {}),
        ("GET", "/v1/event_sink", {"params": {"tenant_id": TENANT}}),
        ("PUT", path, {"json": {"name": "renamed"}}),
    ):
        resp = await relay.request(method, target, headers=auth(ADMIN_KEY), **kwargs)
        assert resp.status == 200
        texts.append(await resp.text())
    for text in texts:
        # Neither the secret nor its base64 key, nor the bearer token, in any form.
        assert SECRET not in text and SECRET.removeprefix("whsec_") not in text
        assert BEARER not in text
    _, got, _ = await call(relay, "GET", path)
    assert_masked(got["event_sink"]["configuration"])
    # Stored in full, of course: the sender needs them.
    args = await db.fetchval("SELECT args FROM event_sinks WHERE id = $1", uuid.UUID(sink["id"]))
    assert args["secret"] == SECRET
    assert args["bearer_token"] == BEARER


async def test_short_bearer_token_is_not_revealed(relay: Any) -> None:
    sink = await create_sink(
        relay, {"Webhook": {"url": "https://h.example/", "bearer_token": "abc"}}
    )
    assert "abc" not in json.dumps(sink["configuration"])


async def test_put_merges_webhook_args(relay: Any, db: asyncpg.Connection) -> None:
    sink = await create_sink(relay, webhook_full())
    path = f"/v1/event_sink/{sink['id']}"
    sink_id = uuid.UUID(sink["id"])

    async def stored() -> dict[str, Any]:
        value: dict[str, Any] = await db.fetchval(
            "SELECT args FROM event_sinks WHERE id = $1", sink_id
        )
        return value

    # Only a new name: secret, bearer token and headers stay.
    status, body, _ = await call(relay, "PUT", path, {"name": "renamed"})
    assert status == 200, body
    assert_masked(body["event_sink"]["configuration"])
    assert await stored() == {**webhook_full()["Webhook"]}
    # A new url needs the credentials again (test_credentials.py has the cases).
    new_url = {"Webhook": {"url": "https://hooks.example/y"}}
    status, body, _ = await call(relay, "PUT", path, {"event_sink_args": new_url})
    assert status == 400, body

    # A client that round-trips what GET showed keeps the stored secrets.
    _, got, _ = await call(relay, "GET", path)
    round_trip = {"event_sink_args": got["event_sink"]["configuration"]}
    status, body, _ = await call(relay, "PUT", path, round_trip)
    assert status == 200, body
    assert (await stored())["secret"] == SECRET
    assert (await stored())["bearer_token"] == BEARER

    # A new secret replaces the old one.
    status, body, _ = await call(
        relay, "PUT", path, {"event_sink_args": {"Webhook": {"secret": OTHER_SECRET}}}
    )
    assert status == 200, body
    assert_masked(body["event_sink"]["configuration"], secret=OTHER_SECRET)
    assert (await stored())["secret"] == OTHER_SECRET

    # A headers object replaces the stored one as a whole.
    new_headers = {"Webhook": {"headers": {"X-Team": "blue"}}}
    status, body, _ = await call(relay, "PUT", path, {"event_sink_args": new_headers})
    assert status == 200, body
    assert body["event_sink"]["configuration"]["Webhook"]["headers"] == {"X-Team": "blue"}
    assert (await stored())["headers"] == {"X-Team": "blue"}

    # null removes an optional argument.
    removal = {"Webhook": {"secret": None, "bearer_token": None, "headers": None}}
    status, body, _ = await call(relay, "PUT", path, {"event_sink_args": removal})
    assert status == 200, body
    assert body["event_sink"]["configuration"] == {"Webhook": {"url": "https://hooks.example/x"}}
    assert await stored() == {"url": "https://hooks.example/x"}

    # The url is required and cannot be removed.
    status, body, _ = await call(
        relay, "PUT", path, {"event_sink_args": {"Webhook": {"url": None}}}
    )
    assert_error(status, body, 400, "invalid_argument", "event_sink_args.Webhook.url")


async def test_merged_secret_signs_the_next_delivery(relay: Any, sink_server: SinkServer) -> None:
    """After a PUT that round-trips the args a GET showed, with one more header, deliveries
    still carry the stored signing key and bearer token, and the extra headers."""
    sink = await create_sink(relay, webhook_full(sink_server.url("/signed")))
    shown = sink["configuration"]["Webhook"]
    status, body, _ = await call(
        relay,
        "PUT",
        f"/v1/event_sink/{sink['id']}",
        {"event_sink_args": {"Webhook": {**shown, "headers": {**shown["headers"], "X-B": "1"}}}},
    )
    assert status == 200, body
    resp = await post_event(relay, EXAMPLE)
    assert (await resp.json())["deliveries"] == 1
    (got,) = await sink_server.wait_for(1)
    assert got.path == "/signed"
    assert got.headers["Authorization"] == f"Bearer {BEARER}"
    assert got.headers["X-Env"] == "prod"
    Webhook(SECRET).verify(got.body, got.headers)  # raises if the signature is wrong


# --- validation ----------------------------------------------------------------------------------

BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-field", {"color": "red"}, "color"),
    ("id-not-allowed", {"id": str(uuid.uuid4())}, "id"),
    ("tenant-missing", {"tenant_id": None}, "tenant_id"),
    ("tenant-number", {"tenant_id": 5}, "tenant_id"),
    ("tenant-empty", {"tenant_id": ""}, "tenant_id"),
    ("name-missing", {"name": None}, "name"),
    ("name-empty", {"name": "  "}, "name"),
    ("name-number", {"name": 7}, "name"),
    ("name-too-long", {"name": "n" * 1025}, "name"),
    ("description-missing", {"description": None}, "description"),
    ("description-list", {"description": ["x"]}, "description"),
    ("args-missing", {"event_sink_args": None}, "event_sink_args"),
    ("args-string", {"event_sink_args": "Webhook"}, "event_sink_args"),
    ("args-empty", {"event_sink_args": {}}, "event_sink_args"),
    ("args-two-types", {"event_sink_args": {**WEBHOOK_ARGS, **PAGERDUTY_ARGS}}, "event_sink_args"),
    ("args-unknown-type", {"event_sink_args": {"Email": {"to": "a@b"}}}, "event_sink_args"),
    (
        "webhook-not-object",
        {"event_sink_args": {"Webhook": "https://x"}},
        "event_sink_args.Webhook",
    ),
    ("webhook-no-url", {"event_sink_args": {"Webhook": {}}}, "event_sink_args.Webhook.url"),
    ("webhook-url-number", {"event_sink_args": {"Webhook": {"url": 5}}}, "Webhook.url"),
    ("webhook-url-ftp", {"event_sink_args": {"Webhook": {"url": "ftp://x.example/"}}}, "url"),
    ("webhook-url-relative", {"event_sink_args": {"Webhook": {"url": "/hook"}}}, "Webhook.url"),
    ("webhook-url-no-host", {"event_sink_args": {"Webhook": {"url": "http://"}}}, "Webhook.url"),
    ("webhook-url-bad-port", {"event_sink_args": {"Webhook": {"url": "http://h:99999/"}}}, "url"),
    (
        "webhook-unknown-arg",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "method": "PUT"}}},
        "event_sink_args.Webhook.method",
    ),
    (
        "webhook-secret-prefix",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "secret": "abc"}}},
        "event_sink_args.Webhook.secret",
    ),
    (
        "webhook-secret-not-base64",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "secret": "whsec_!!!!"}}},
        "event_sink_args.Webhook.secret",
    ),
    (
        "webhook-secret-too-short",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "secret": "whsec_YWJj"}}},
        "event_sink_args.Webhook.secret",
    ),
    (
        "webhook-bearer-number",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "bearer_token": 1}}},
        "event_sink_args.Webhook.bearer_token",
    ),
    (
        "webhook-bearer-crlf",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "bearer_token": "a\r\nX: y"}}},
        "event_sink_args.Webhook.bearer_token",
    ),
    (
        "webhook-bearer-space",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "bearer_token": "a b"}}},
        "event_sink_args.Webhook.bearer_token",
    ),
    (
        "webhook-bearer-masked-form",
        {
            "event_sink_args": {
                "Webhook": {"url": "https://h.example", "bearer_token": "\u2026abcd"}
            }
        },
        "event_sink_args.Webhook.bearer_token",
    ),
    (
        "webhook-url-space",
        {"event_sink_args": {"Webhook": {"url": "https://exa mple.com/"}}},
        "event_sink_args.Webhook.url",
    ),
    (
        "webhook-url-newline",
        {"event_sink_args": {"Webhook": {"url": "https://h.example/\r\nx"}}},
        "event_sink_args.Webhook.url",
    ),
    (
        "webhook-headers-list",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "headers": ["X-A"]}}},
        "event_sink_args.Webhook.headers",
    ),
    (
        "webhook-header-reserved",
        {
            "event_sink_args": {
                "Webhook": {"url": "https://h.example", "headers": {"authorization": "x"}}
            }
        },
        "event_sink_args.Webhook.headers.authorization",
    ),
    (
        "webhook-header-signature",
        {
            "event_sink_args": {
                "Webhook": {"url": "https://h.example", "headers": {"Webhook-Signature": "v1,x"}}
            }
        },
        "event_sink_args.Webhook.headers.Webhook-Signature",
    ),
    (
        "webhook-header-bad-name",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "headers": {"X A": "v"}}}},
        "event_sink_args.Webhook.headers",
    ),
    (
        "webhook-header-newline",
        {
            "event_sink_args": {
                "Webhook": {"url": "https://h.example", "headers": {"X-A": "v\r\nX-B: w"}}
            }
        },
        "event_sink_args.Webhook.headers.X-A",
    ),
    (
        "webhook-header-number",
        {"event_sink_args": {"Webhook": {"url": "https://h.example", "headers": {"X-A": 1}}}},
        "event_sink_args.Webhook.headers.X-A",
    ),
    (
        "slack-no-channel",
        {"event_sink_args": {"Slack": {"slack_integration_id": SLACK_INTEGRATION}}},
        "event_sink_args.Slack.channel_id",
    ),
    (
        "slack-no-integration",
        {"event_sink_args": {"Slack": {"channel_id": "C1"}}},
        "event_sink_args.Slack.slack_integration_id",
    ),
    (
        "slack-unknown-integration",
        {"event_sink_args": {"Slack": {"channel_id": "C1", "slack_integration_id": "nope"}}},
        "event_sink_args.Slack.slack_integration_id",
    ),
    (
        "slack-channel-id-empty",
        {
            "event_sink_args": {
                "Slack": {"channel_id": "", "slack_integration_id": SLACK_INTEGRATION}
            }
        },
        "event_sink_args.Slack.channel_id",
    ),
    (
        "slack-channel-number",
        {"event_sink_args": {"Slack": {"channel": 5, "slack_integration_id": SLACK_INTEGRATION}}},
        "event_sink_args.Slack.channel",
    ),
    (
        "slack-unknown-arg",
        {"event_sink_args": {"Slack": {**SLACK_ARGS["Slack"], "token": "xoxb"}}},
        "event_sink_args.Slack.token",
    ),
    ("pagerduty-no-key", {"event_sink_args": {"PagerDuty": {}}}, "PagerDuty.integration_key"),
    (
        "pagerduty-empty-key",
        {"event_sink_args": {"PagerDuty": {"integration_key": ""}}},
        "event_sink_args.PagerDuty.integration_key",
    ),
    (
        "pagerduty-unknown-arg",
        {"event_sink_args": {"PagerDuty": {"integration_key": "k", "severity": "info"}}},
        "event_sink_args.PagerDuty.severity",
    ),
    ("events-string", {"events": "CaseFileSavedEvent"}, "events"),
    ("events-number-item", {"events": ["AssetCreatedEvent", 5]}, "events[1]"),
    ("events-empty-item", {"events": [""]}, "events[0]"),
    ("orgs-string", {"organization_ids": "1"}, "organization_ids"),
    ("orgs-bool-item", {"organization_ids": [True]}, "organization_ids[0]"),
    ("orgs-float-item", {"organization_ids": [1, 1.5]}, "organization_ids[1]"),
    ("orgs-empty-item", {"organization_ids": [""]}, "organization_ids[0]"),
    # PostgreSQL stores neither NUL nor an unpaired surrogate: bad input, not a 5xx.
    ("name-nul", {"name": "a\x00b"}, "name"),
    ("description-surrogate", {"description": "\ud800"}, "description"),
    ("tenant-nul", {"tenant_id": "t\x00"}, "tenant_id"),
    ("events-nul", {"events": ["Asset\x00"]}, "events[0]"),
    ("orgs-nul", {"organization_ids": [1, "\x00"]}, "organization_ids[1]"),
    (
        "webhook-url-nul",
        {"event_sink_args": {"Webhook": {"url": "https://h.example/\x00"}}},
        "event_sink_args.Webhook.url",
    ),
    (
        "webhook-header-surrogate",
        {
            "event_sink_args": {
                "Webhook": {"url": "https://h.example", "headers": {"X-A": "\udfff"}}
            }
        },
        "event_sink_args.Webhook.headers.X-A",
    ),
    (
        "slack-channel-nul",
        {"event_sink_args": {"Slack": {"channel_id": "C\x00", "slack_integration_id": "x"}}},
        "event_sink_args.Slack.channel_id",
    ),
    (
        "pagerduty-key-surrogate",
        {"event_sink_args": {"PagerDuty": {"integration_key": "k\ud800"}}},
        "event_sink_args.PagerDuty.integration_key",
    ),
    ("active-string", {"active": "yes"}, "active"),
    ("active-number", {"active": 1}, "active"),
]


async def test_create_rejects_bad_arguments(relay: Any, db: asyncpg.Connection) -> None:
    for case, change, field in BAD_CREATES:
        body = {k: v for k, v in {**new_sink_body(WEBHOOK_ARGS), **change}.items() if v is not None}
        status, resp, _ = await call(relay, "POST", "/v1/event_sink", body)
        try:
            assert_error(status, resp, 400, "invalid_argument", field)
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from exc
    assert await db.fetchval("SELECT count(*) FROM event_sinks") == 0


BAD_UPDATES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-field", {"colour": "red"}, "colour"),
    ("name-null", {"name": None}, "name"),
    ("name-empty", {"name": ""}, "name"),
    ("description-number", {"description": 1}, "description"),
    ("args-empty", {"event_sink_args": {}}, "event_sink_args"),
    ("args-null", {"event_sink_args": None}, "event_sink_args"),
    ("webhook-url", {"event_sink_args": {"Webhook": {"url": "mailto:a@b"}}}, "Webhook.url"),
    ("webhook-secret", {"event_sink_args": {"Webhook": {"secret": "s3cret"}}}, "Webhook.secret"),
    (
        "webhook-header",
        {"event_sink_args": {"Webhook": {"headers": {"Host": "evil"}}}},
        "Webhook.headers.Host",
    ),
    ("events", {"events": [None]}, "events[0]"),
    ("organization_ids", {"organization_ids": {}}, "organization_ids"),
    ("active-null", {"active": None}, "active"),
    ("name-nul", {"name": "\x00"}, "name"),
    (
        "bearer-surrogate",
        {"event_sink_args": {"Webhook": {"bearer_token": "\ud800"}}},
        "bearer_token",
    ),
]


async def test_update_rejects_bad_arguments(relay: Any) -> None:
    sink = await create_sink(relay, {"Webhook": {"url": "https://h.example/", "secret": SECRET}})
    path = f"/v1/event_sink/{sink['id']}"
    for case, change, field in BAD_UPDATES:
        status, body, _ = await call(relay, "PUT", path, change)
        try:
            assert_error(status, body, 400, "invalid_argument", field)
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from exc
    _, got, _ = await call(relay, "GET", path)
    assert got == {"event_sink": sink}


async def test_events_outside_the_catalog_are_400_listing_the_valid_names(
    relay: Any, db: asyncpg.Connection
) -> None:
    names = sorted(e["eventName"] for e in CATALOG)
    typo = {"events": ["CaseCreatedEvent", "CaseCreatedEvnt"]}
    status, body, _ = await call(
        relay, "POST", "/v1/event_sink", {**new_sink_body(WEBHOOK_ARGS), **typo}
    )
    message = assert_error(status, body, 400, "invalid_argument", "events[1]", "'CaseCreatedEvnt'")
    assert ", ".join(names) in message  # every valid name, so the fix is at hand
    assert await db.fetchval("SELECT count(*) FROM event_sinks") == 0
    sink = await create_sink(relay, WEBHOOK_ARGS, events=["CaseCreatedEvent"])
    path = f"/v1/event_sink/{sink['id']}"
    status, body, _ = await call(relay, "PUT", path, {"events": ["casecreatedevent"]})
    assert_error(status, body, 400, "invalid_argument", "events[0]")  # names are exact
    _, got, _ = await call(relay, "GET", path)
    assert got["event_sink"]["events"] == ["CaseCreatedEvent"]


async def test_invalid_json_is_400(relay: Any, db: asyncpg.Connection) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS)
    for path, method in (("/v1/event_sink", "POST"), (f"/v1/event_sink/{sink['id']}", "PUT")):
        for raw in (b"{not json", b'{"name": "x",}', b"\xff\xfe", b"", b'{"a": NaN}'):
            status, body, _ = await call(relay, method, path, raw=raw)
            assert_error(status, body, 400, "invalid_json")
        for raw in (b"[]", b'"text"', b"null"):
            status, body, _ = await call(relay, method, path, raw=raw)
            assert_error(status, body, 400, "invalid_argument")
    assert await db.fetchval("SELECT count(*) FROM event_sinks") == 1


async def test_non_json_content_type_is_415(relay: Any) -> None:
    resp = await relay.post(
        "/v1/event_sink",
        data=json.dumps(new_sink_body(WEBHOOK_ARGS)),
        headers={**auth(ADMIN_KEY), "Content-Type": "text/plain"},
    )
    assert_error(resp.status, await resp.json(), 415, "unsupported_media_type")


# --- authentication and tenant isolation --------------------------------------------------------

ENDPOINTS = [
    ("POST", "/v1/event_sink"),
    ("GET", "/v1/event_sink?tenant_id=" + TENANT),
    ("GET", "/v1/event_sink/{id}"),
    ("PUT", "/v1/event_sink/{id}"),
    ("DELETE", "/v1/event_sink/{id}"),
]


async def test_missing_or_wrong_bearer_is_401(relay: Any, db: asyncpg.Connection) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS)
    for method, path in ENDPOINTS:
        target = path.format(id=sink["id"])
        body = new_sink_body(WEBHOOK_ARGS) if method == "POST" else {"name": "hacked"}
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key"},
            {"Authorization": f"Basic {ADMIN_KEY}"},
            {"Authorization": "Bearer "},
            {"Authorization": ADMIN_KEY},
        ):
            resp = await relay.request(method, target, json=body, headers=headers)
            assert_error(resp.status, await resp.json(), 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"] == "Bearer", (method, path, headers)
    row = await db.fetchrow("SELECT count(*) AS n, min(name) AS name FROM event_sinks")
    assert row is not None
    assert (row["n"], row["name"]) == (1, "test sink")


async def test_other_tenants_key_cannot_list_or_create(relay: Any, db: asyncpg.Connection) -> None:
    status, body, _ = await call(
        relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT}, key=TENANT_B_KEY
    )
    assert_error(status, body, 403, "forbidden")
    status, body, _ = await call(
        relay, "POST", "/v1/event_sink", new_sink_body(WEBHOOK_ARGS), key=TENANT_B_KEY
    )
    assert_error(status, body, 403, "forbidden")
    assert await db.fetchval("SELECT count(*) FROM event_sinks") == 0
    # Its own tenant is fine.
    own = await create_sink(relay, WEBHOOK_ARGS, tenant_id=TENANT_B, key=TENANT_B_KEY)
    assert own["tenant_id"] == TENANT_B
    status, body, _ = await call(
        relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT_B}, key=TENANT_B_KEY
    )
    assert status == 200
    assert body["data"]["event_sinks"] == [own]


async def test_other_tenants_sink_is_404(relay: Any) -> None:
    sink = await create_sink(relay, WEBHOOK_ARGS)
    path = f"/v1/event_sink/{sink['id']}"
    for method, body in (("GET", None), ("PUT", {"name": "mine now"}), ("DELETE", None)):
        status, resp, _ = await call(relay, method, path, body, key=TENANT_B_KEY)
        assert_error(status, resp, 404, "not_found")
    # Nothing changed; the admin key still sees it as it was.
    status, got, _ = await call(relay, "GET", path)
    assert status == 200
    assert got == {"event_sink": sink}
    # And the admin key (all tenants) manages tenant B's sinks too.
    b_sink = await create_sink(relay, PAGERDUTY_ARGS, tenant_id=TENANT_B, key=TENANT_B_KEY)
    status, got, _ = await call(relay, "GET", f"/v1/event_sink/{b_sink['id']}")
    assert status == 200
    assert got["event_sink"]["tenant_id"] == TENANT_B


async def test_malformed_or_unknown_id_is_404(relay: Any) -> None:
    await create_sink(relay, WEBHOOK_ARGS)
    for sink_id in ("not-a-uuid", "123", str(uuid.uuid4()), "%20", "0" * 33):
        for method in ("GET", "PUT", "DELETE"):
            body = {"name": "x"} if method == "PUT" else None
            status, resp, _ = await call(relay, method, f"/v1/event_sink/{sink_id}", body)
            assert_error(status, resp, 404, "not_found")
    # A method the API does not have is still answered in the one error shape.
    status, resp, headers = await call(relay, "PATCH", f"/v1/event_sink/{uuid.uuid4()}", {})
    assert_error(status, resp, 405, "method_not_allowed")
    assert "PUT" in headers["Allow"]


# --- routing effects -----------------------------------------------------------------------------


def event(name: str = "AssetCreatedEvent", org: int | str = 1) -> dict[str, Any]:
    return {"eventName": name, "organizationId": org, "data": {"assetId": "a-1"}}


async def deliveries_for(relay: Any, body: dict[str, Any]) -> int:
    resp = await post_event(relay, body)
    assert resp.status == 202, await resp.text()
    count: int = (await resp.json())["deliveries"]
    return count


async def test_routing_by_active_events_and_organizations(
    relay: Any, sink_server: SinkServer
) -> None:
    await create_sink(relay, {"Webhook": {"url": sink_server.url("/all")}})
    await create_sink(relay, {"Webhook": {"url": sink_server.url("/off")}}, active=False)
    await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/cases")}}, events=["CaseFileSavedEvent"]
    )
    await create_sink(
        relay, {"Webhook": {"url": sink_server.url("/org7")}}, organization_ids=[7, "abc"]
    )
    # Tenant B's sink never sees tenant A's events.
    await create_sink(relay, {"Webhook": {"url": sink_server.url("/b")}}, tenant_id=TENANT_B)

    assert await deliveries_for(relay, event("AssetCreatedEvent", 1)) == 1
    assert await deliveries_for(relay, event("CaseFileSavedEvent", 1)) == 2
    assert await deliveries_for(relay, event("AssetCreatedEvent", 7)) == 2
    assert await deliveries_for(relay, event("AssetCreatedEvent", "7")) == 2
    assert await deliveries_for(relay, event("CaseFileSavedEvent", "abc")) == 3
    assert await deliveries_for(relay, event("UnknownFutureEvent", 2)) == 1

    received = await sink_server.wait_for(11)
    paths = sorted(r.path for r in received)
    assert paths == sorted(["/all"] * 6 + ["/cases"] * 2 + ["/org7"] * 3)


async def test_put_takes_effect_for_the_next_event(relay: Any, sink_server: SinkServer) -> None:
    sink = await create_sink(relay, {"Webhook": {"url": sink_server.url("/first")}})
    path = f"/v1/event_sink/{sink['id']}"
    assert await deliveries_for(relay, event()) == 1
    await sink_server.wait_for(1)

    new_url = {"event_sink_args": {"Webhook": {"url": sink_server.url("/second")}}}
    assert (await call(relay, "PUT", path, new_url))[0] == 200
    assert await deliveries_for(relay, event()) == 1
    await sink_server.wait_for(2)
    assert [r.path for r in sink_server.received] == ["/first", "/second"]

    assert (await call(relay, "PUT", path, {"active": False}))[0] == 200
    assert await deliveries_for(relay, event()) == 0
    assert (await call(relay, "PUT", path, {"active": True, "events": ["CaseClosedEvent"]}))[
        0
    ] == 200
    assert await deliveries_for(relay, event()) == 0
    assert await deliveries_for(relay, event("CaseClosedEvent")) == 1
    assert (await call(relay, "PUT", path, {"events": None, "organization_ids": [9]}))[0] == 200
    assert await deliveries_for(relay, event(org=1)) == 0
    assert await deliveries_for(relay, event(org=9)) == 1
    await sink_server.wait_for(4)

    assert (await call(relay, "DELETE", path))[0] == 200
    assert await deliveries_for(relay, event(org=9)) == 0
