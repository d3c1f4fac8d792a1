"""The Webhook sender: the exact bytes AIR sent, Standard Webhooks signatures, bearer token and
extra headers, no redirects, no proxy from the environment, and no credential in audit rows or
logs even when echoed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from tests.support import (
    CATALOG,
    Reply,
    SinkServer,
    audit_rows,
    create_sink,
    delivery_state,
    make_sink_server,
    post_event,
    wait_final,
)

EVENT = CATALOG[3]["example"]  # TaskProcessingFailedEvent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_all_28_catalog_events_arrive_unchanged(relay: Any, sink_server: SinkServer) -> None:
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    sent: dict[str, bytes] = {}
    for entry in CATALOG:
        raw = json.dumps(entry["example"], indent=1).encode()  # odd formatting on purpose
        resp = await post_event(relay, raw)
        assert resp.status == 202
        assert (await resp.json())["deliveries"] == 1
        sent[entry["eventName"]] = raw
    received = await sink_server.wait_for(len(CATALOG))
    got = {json.loads(r.body)["eventName"]: r.body for r in received}
    assert got == sent  # byte for byte
    for r in received:
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["User-Agent"].startswith("air-relay/")
        assert r.headers["webhook-id"].startswith("msg_")
        assert abs(int(r.headers["webhook-timestamp"]) - time.time()) < 60
        assert "webhook-signature" not in r.headers
        assert "Authorization" not in r.headers
    assert len({r.headers["webhook-id"] for r in received}) == len(CATALOG)


async def test_signed_delivery_verifies_with_standardwebhooks(
    relay: Any, sink_server: SinkServer
) -> None:
    sink_server.script.append(Reply(status=502))
    await create_sink(relay, {"Webhook": {"url": sink_server.url(), "secret": SECRET}})
    await post_event(relay, EVENT)
    first, second = await sink_server.wait_for(2)
    verifier = Webhook(SECRET)
    for got in (first, second):
        assert verifier.verify(got.body, got.headers) == EVENT
        assert got.headers["webhook-signature"].startswith("v1,")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    tampered = dict(second.headers, **{"webhook-id": "msg_other"})
    try:
        verifier.verify(second.body, tampered)
    except Exception as exc:
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a changed webhook-id must not verify")


async def test_bearer_token_and_extra_headers_are_sent(relay: Any, sink_server: SinkServer) -> None:
    args = {
        "url": sink_server.url(),
        "bearer_token": "sink-bearer-secret",
        "headers": {"X-Team": "dfir"},
    }
    await create_sink(relay, {"Webhook": args})
    await post_event(relay, EVENT)
    (got,) = await sink_server.wait_for(1)
    assert got.headers["Authorization"] == "Bearer sink-bearer-secret"
    assert got.headers["X-Team"] == "dfir"


async def test_redirect_is_not_followed(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    sink_server.default = Reply(status=302, headers={"Location": sink_server.url("/elsewhere")})
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, EVENT)
    await wait_final(db)
    await asyncio.sleep(0.2)
    assert [r.path for r in sink_server.received] == ["/hook"]
    state = await delivery_state(db)
    assert (state["status"], state["last_error"]) == ("dead", "http_302")


async def test_proxies_from_the_environment_are_ignored(
    make_relay: Any,
    sink_server: SinkServer,
    aiohttp_server: Any,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy variable in the daemon's environment must not route sink traffic (or its
    # credentials) through another host: the sessions do not trust the environment.
    proxy = await make_sink_server(aiohttp_server)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url("/"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    relay = await make_relay()
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, EVENT)
    await sink_server.wait_for(1)
    await wait_final(db)
    assert proxy.received == []


async def test_a_sink_echoing_the_request_does_not_put_secrets_in_audit_or_logs(
    relay: Any, aiohttp_server: Any, db: asyncpg.Connection
) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=500, text=json.dumps(dict(request.headers)))

    app = web.Application()
    app.router.add_post("/echo", echo)
    server = await aiohttp_server(app, host="127.0.0.1")
    token = "echoed-bearer-token-1234"
    args = {"url": str(server.make_url("/echo")), "bearer_token": token, "secret": SECRET}
    with capture_logs() as logs:
        await create_sink(relay, {"Webhook": args})
        await post_event(relay, EVENT)
        await wait_final(db)
    rows = await audit_rows(relay)
    assert rows and all("Bearer ***" in r["response_body"] for r in rows)
    text = json.dumps(logs, default=str) + json.dumps(rows)
    assert token not in text
    assert SECRET.removeprefix("whsec_") not in text


async def test_a_secret_across_the_2_kib_cut_leaves_no_piece_in_the_audit_row(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    token = "straddling-bearer-token-0123456789"
    # The token starts 10 bytes before the 2 KiB the audit row keeps.
    sink_server.default = Reply(status=500, body="x" * 2038 + token + "y" * 100)
    await create_sink(relay, {"Webhook": {"url": sink_server.url(), "bearer_token": token}})
    await post_event(relay, EVENT)
    await wait_final(db)
    rows = await audit_rows(relay)
    assert rows and all(r["response_body"] == "x" * 2038 + "***" + "y" * 7 for r in rows)
    assert all(token[:10] not in r["response_body"] for r in rows)
