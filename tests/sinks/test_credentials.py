"""Sink credentials stay secret: a receiver that echoes the request (in JSON, URL-encoded, or
the Basic header it got) leaks none of them into audit rows or logs; the API shows every
one masked; and an update cannot carry stored credentials to another host."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import pytest
from aiohttp import web

from tests.support import (
    ADMIN_KEY,
    audit_rows,
    auth,
    create_sink,
    post_event,
    wait_final,
)

EVENT = {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"id": "c-1"}}
# Characters a JSON encoder escapes ("), doubles (\) or may escape (/).
TOKEN = 'tok"en\\with/slash-0123456789'
API_KEY_HEADER = 'key/with"quote-0123456789'
PASSWORD = "p@ss:w/rd é"
SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def echo_server(aiohttp_server: Any, status: int = 500) -> Any:
    """Answers every request with what it got: headers as JSON, the same again URL-encoded,
    and the body. Failing (500) so that the answer lands in the audit row."""

    async def echo(request: web.Request) -> web.Response:
        headers = dict(request.headers)
        text = json.dumps({"headers": headers, "body": (await request.read()).decode()})
        text += "\n" + urlencode(headers) + "\n" + json.dumps(headers, ensure_ascii=False)
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return await aiohttp_server(app, host="127.0.0.1")


def leaked(text: str, secret: str) -> list[str]:
    forms = {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "url": quote(secret, safe=""),
        "b64": base64.b64encode(secret.encode()).decode(),
    }
    return [name for name, form in forms.items() if form in text]


async def test_an_echoing_receiver_leaks_no_credential(
    relay: Any, db: asyncpg.Connection, aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await echo_server(aiohttp_server)
    port = server.port
    user = "relay"
    # Credentials in the URL and a bearer token cannot go together: two sinks.
    await create_sink(
        relay,
        {
            "Webhook": {
                "url": f"http://127.0.0.1:{port}/a",
                "bearer_token": TOKEN.replace(" ", ""),
                "secret": SIGNING,
                "headers": {"X-Api-Key": API_KEY_HEADER, "X-Env": "prod"},
            }
        },
    )
    await create_sink(
        relay, {"Webhook": {"url": f"http://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/b"}}
    )
    assert (await post_event(relay, EVENT)).status == 202
    await wait_final(db, 2)
    rows = await audit_rows(relay)
    assert rows and all(r["response_body"] for r in rows)
    text = json.dumps(rows) + "\n".join(r["response_body"] for r in rows)
    logs = capsys.readouterr()
    for secret in (TOKEN, API_KEY_HEADER, PASSWORD, SIGNING, f"{user}:{PASSWORD}"):
        assert leaked(text, secret) == [], secret
        assert leaked(logs.out + logs.err, secret) == [], secret
    assert "prod" in text  # what is not a credential is kept


async def test_the_api_masks_every_credential(relay: Any) -> None:
    sink = await create_sink(
        relay,
        {
            "Webhook": {
                "url": "https://relay:hunter2-long-password@127.0.0.1:9/x",
                "headers": {"X-Api-Key": "k" * 20 + "1234", "Cookie": "c=1", "X-Env": "prod"},
            }
        },
    )
    shown = sink["configuration"]["Webhook"]
    assert shown["url"] == "https://***:***@127.0.0.1:9/x"
    assert shown["headers"] == {"X-Api-Key": "\u20261234", "Cookie": "\u2026", "X-Env": "prod"}
    pd = await create_sink(relay, {"PagerDuty": {"integration_key": "e93facc04764012d7bfb0025"}})
    assert pd["configuration"]["PagerDuty"]["integration_key"] == "\u20260025"
    resp = await relay.get(f"/v1/event_sink/{sink['id']}", headers=auth(ADMIN_KEY))
    assert "hunter2" not in await resp.text()


async def test_a_round_tripped_get_keeps_the_masked_credentials(
    relay: Any, db: asyncpg.Connection
) -> None:
    args = {
        "url": "https://relay:hunter2-long-password@127.0.0.1:9/x",
        "headers": {"X-Api-Key": "k" * 24, "X-Env": "prod"},
    }
    sink = await create_sink(relay, {"Webhook": args})
    shown = sink["configuration"]["Webhook"]
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}",
        json={
            "event_sink_args": {"Webhook": {**shown, "headers": {**shown["headers"], "X-B": "1"}}}
        },
        headers=auth(ADMIN_KEY),
    )
    assert resp.status == 200, await resp.text()
    stored = await db.fetchval("SELECT args FROM event_sinks")
    assert stored["url"] == args["url"]
    assert stored["headers"] == {**args["headers"], "X-B": "1"}


MOVES = [
    ("https://other.example:9/x", "bearer_token"),  # another host
    ("http://127.0.0.1:9/x", "bearer_token"),  # another scheme
    ("https://127.0.0.1:10/x", "bearer_token"),  # another port
    ("https://127.0.0.1:9/attacker", "bearer_token"),  # another path of a shared host
    ("https://127.0.0.1:9/x?to=me", "bearer_token"),  # another query
]


@pytest.mark.parametrize(("url", "field"), MOVES)
async def test_moving_the_url_needs_the_credentials_again(
    relay: Any, db: asyncpg.Connection, url: str, field: str
) -> None:
    sink = await create_sink(
        relay, {"Webhook": {"url": "https://127.0.0.1:9/x", "bearer_token": "t" * 20}}
    )
    path = f"/v1/event_sink/{sink['id']}"
    for args in ({"url": url}, {**sink["configuration"]["Webhook"], "url": url}):
        resp = await relay.put(
            path, json={"event_sink_args": {"Webhook": args}}, headers=auth(ADMIN_KEY)
        )
        assert resp.status == 400, await resp.text()
        message = (await resp.json())["error"]["message"]
        assert f"event_sink_args.Webhook.{field}" in message
        assert "given again" in message
    assert (await db.fetchval("SELECT args FROM event_sinks"))["url"] == "https://127.0.0.1:9/x"
    # Stated again (or dropped with null), the move is accepted.
    for token in ("n" * 20, None):
        resp = await relay.put(
            path,
            json={"event_sink_args": {"Webhook": {"url": url, "bearer_token": token}}},
            headers=auth(ADMIN_KEY),
        )
        assert resp.status == 200, await resp.text()
        await relay.put(
            path,
            json={"event_sink_args": {"Webhook": {"url": "https://127.0.0.1:9/x"}}},
            headers=auth(ADMIN_KEY),
        )


async def test_moving_the_url_needs_secret_headers_and_the_signing_secret_again(
    relay: Any,
) -> None:
    sink = await create_sink(
        relay,
        {
            "Webhook": {
                "url": "https://127.0.0.1:9/x",
                "secret": SIGNING,
                "headers": {"X-Api-Key": "k" * 24, "X-Env": "prod"},
            }
        },
    )
    path = f"/v1/event_sink/{sink['id']}"

    async def put(args: dict[str, Any]) -> tuple[int, str]:
        resp = await relay.put(
            path, json={"event_sink_args": {"Webhook": args}}, headers=auth(ADMIN_KEY)
        )
        return resp.status, await resp.text()

    new = "https://127.0.0.2:9/x"
    status, text = await put({"url": new, "secret": None})
    assert status == 400 and "Webhook.headers.X-Api-Key" in text, text
    status, text = await put({"url": new, "headers": {"X-Env": "prod"}})
    assert status == 400 and "Webhook.secret" in text, text
    status, text = await put({"url": new, "secret": None, "headers": {"X-Api-Key": "n" * 24}})
    assert status == 200, text


BAD_WEBHOOK_ARGS = [
    ({"url": "https://u:p@127.0.0.1/x", "bearer_token": "t"}, "bearer_token"),
    ({"url": "https://127.0.0.1/", "headers": {"X-A": "a\x0bb"}}, "headers.X-A"),
    ({"url": "https://127.0.0.1/", "headers": {"X-A": "a\x7fb"}}, "headers.X-A"),
    ({"url": "https://127.0.0.1/", "headers": {"X-A": "a\x85b"}}, "headers.X-A"),
    ({"url": "https://127.0.0.1/", "headers": {"X-A": "caf\u00e9"}}, "headers.X-A"),
    ({"url": "https://127.0.0.1/", "headers": {"TE": "trailers"}}, "headers.TE"),
    ({"url": "https://127.0.0.1/", "headers": {"Upgrade": "h2c"}}, "headers.Upgrade"),
    ({"url": "https://127.0.0.1/", "headers": {"Expect": "100-continue"}}, "headers.Expect"),
    ({"url": "https://127.0.0.1/", "headers": {"Proxy-Authorization": "x"}},
     "headers.Proxy-Authorization"),
    ({"url": "https://127.0.0.1/", "headers": {"Connection": "close"}}, "headers.Connection"),
    ({"url": "https://127.0.0.1/", "headers": {"Keep-Alive": "1"}}, "headers.Keep-Alive"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "field"), BAD_WEBHOOK_ARGS)
async def test_bad_webhook_args_are_refused(relay: Any, args: dict[str, Any], field: str) -> None:
    body = {
        "tenant_id": "00000000-0000-0000-0000-000000000000",
        "name": "n",
        "description": "d",
        "event_sink_args": {"Webhook": args},
    }
    resp = await relay.post("/v1/event_sink", json=body, headers=auth(ADMIN_KEY))
    assert resp.status == 400, await resp.text()
    assert f"event_sink_args.Webhook.{field} " in (await resp.json())["error"]["message"]


async def test_a_request_the_client_cannot_build_is_dead_at_once(
    relay: Any, db: asyncpg.Connection, aiohttp_server: Any
) -> None:
    # Stored before the combination was refused: aiohttp raises ValueError on every try.
    server = await echo_server(aiohttp_server, status=200)
    await db.execute(
        "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
        " VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000000', 'n', 'd',"
        " 'Webhook', $1)",
        {"url": f"http://u:p@127.0.0.1:{server.port}/x", "bearer_token": "t" * 20},
    )
    assert (await post_event(relay, EVENT)).status == 202
    await wait_final(db)
    row = await db.fetchrow("SELECT status, attempts, last_error FROM deliveries")
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "dead",
        1,
        "internal_error:ValueError",
    )


async def test_a_user_name_alone_is_a_credential(
    relay: Any, db: asyncpg.Connection, aiohttp_server: Any
) -> None:
    # aiohttp sends "Basic base64(user:)" for a URL with a user and no password: some
    # services put their token there.
    server = await echo_server(aiohttp_server)
    token = "sk_live_SECRETTOKEN123"
    sink = await create_sink(
        relay, {"Webhook": {"url": f"http://{token}@127.0.0.1:{server.port}/h"}}
    )
    assert sink["configuration"]["Webhook"]["url"] == f"http://***@127.0.0.1:{server.port}/h"
    assert (await post_event(relay, EVENT)).status == 202
    await wait_final(db)
    text = json.dumps(await audit_rows(relay))
    assert leaked(text, token) == [] and leaked(text, f"{token}:") == []


async def test_secret_looking_query_values_are_masked_and_redacted(
    relay: Any, db: asyncpg.Connection, aiohttp_server: Any
) -> None:
    # Google Chat's incoming webhooks carry ?key=...&token=... in the URL.
    server = await echo_server(aiohttp_server)
    key, token = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", "Bw3pA2bs-Rp6JA0y0aoC7Zh4b2Q"
    url = f"http://127.0.0.1:{server.port}/v1/spaces/A/messages?key={key}&token={token}&x=1"
    sink = await create_sink(relay, {"Webhook": {"url": url}})
    shown = sink["configuration"]["Webhook"]["url"]
    assert shown.endswith("/v1/spaces/A/messages?key=***&token=***&x=1"), shown
    await post_event(relay, EVENT)
    await wait_final(db)
    text = json.dumps(await audit_rows(relay))
    assert leaked(text, key) == [] and leaked(text, token) == []
    # The masked URL sent back unchanged keeps the real one.
    resp = await relay.put(
        f"/v1/event_sink/{sink['id']}",
        json={"event_sink_args": {"Webhook": {"url": shown}}},
        headers=auth(ADMIN_KEY),
    )
    assert resp.status == 200, await resp.text()
    assert (await db.fetchval("SELECT args FROM event_sinks"))["url"] == url


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"Webhook": {"url": "https://u:***@127.0.0.1/x"}}, "event_sink_args.Webhook.url"),
        ({"Webhook": {"url": "https://***@127.0.0.1/x"}}, "event_sink_args.Webhook.url"),
        (
            {"PagerDuty": {"integration_key": "\u2026d1a6"}},
            "event_sink_args.PagerDuty.integration_key",
        ),
    ],
)
async def test_a_masked_value_is_never_stored_as_the_real_one(
    relay: Any, args: dict[str, Any], field: str
) -> None:
    body = {"tenant_id": "00000000-0000-0000-0000-000000000000", "name": "n",
            "description": "d", "event_sink_args": args}  # fmt: skip
    resp = await relay.post("/v1/event_sink", json=body, headers=auth(ADMIN_KEY))
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["message"].startswith(field + " ")


async def test_a_nul_in_a_reply_fails_nothing(
    relay: Any, db: asyncpg.Connection, aiohttp_server: Any, sink_server: Any
) -> None:
    # PostgreSQL text takes no NUL: one such reply used to fail the whole batch of
    # completions it was written with, other sinks' included, and nothing was recorded.
    async def nul(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"nul\x00here")

    app = web.Application()
    app.router.add_post("/{tail:.*}", nul)
    server = await aiohttp_server(app, host="127.0.0.1")
    await create_sink(relay, {"Webhook": {"url": f"http://127.0.0.1:{server.port}/h"}})
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    for _ in range(3):
        assert (await post_event(relay, EVENT)).status == 202
    await wait_final(db, 6)
    statuses = await db.fetch("SELECT status, attempts FROM deliveries")
    assert [tuple(r) for r in statuses] == [("delivered", 1)] * 6
    bodies = await db.fetch("SELECT response_body FROM delivery_attempts")
    assert len(bodies) == 6
    assert "nul\ufffdhere" in {r["response_body"] for r in bodies}
