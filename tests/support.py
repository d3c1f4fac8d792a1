"""Helpers the tests share: credentials and tenants, a test config, real recording sink
servers on 127.0.0.1, database scratch copies, and calls to the relay's API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from air_relay.config import Config, parse_config
from air_relay.http.listener import GuardedSite
from air_relay.http.state import METRICS

TENANT = "00000000-0000-0000-0000-000000000000"
TENANT_B = "11111111-1111-1111-1111-111111111111"
INGEST_TOKEN = "ingest-token-tenant-a"
INGEST_TOKEN_B = "ingest-token-tenant-b"
ADMIN_KEY = "admin-api-key"
TENANT_B_KEY = "tenant-b-api-key"
SLACK_INTEGRATION = "00000000-0000-0000-0000-000000000001"
TEMPLATE_DB = "air_relay_test_template"


CATALOG: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "src/air_relay/data/air-event-catalog.json").read_text()
)


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def create_database(admin_dsn: str, name: str) -> str:
    """A new empty database ``name`` (dropped first if left over); its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str, template: str | None = None) -> AsyncIterator[str]:
    """A new database (empty, or cloned from ``template``), dropped afterwards; yields its DSN."""
    name = f"air_relay_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_data(**overrides: Any) -> dict[str, Any]:
    """A test config: fast retries, two tenants, an admin key and a tenant-B-only key."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080, "max_body_bytes": 65536},
        "ingest": {
            "tokens": [
                {"token": INGEST_TOKEN, "tenant_id": TENANT},
                {"token": INGEST_TOKEN_B, "tenant_id": TENANT_B},
            ]
        },
        "api": {
            "keys": [
                {"key": ADMIN_KEY, "tenant_ids": ["*"]},
                {"key": TENANT_B_KEY, "tenant_ids": [TENANT_B]},
            ]
        },
        "delivery": {
            # The sink servers of the tests live on 127.0.0.1; the SSRF tests turn this off.
            "allow_private_destinations": True,
            "concurrency": 8,
            "timeout_seconds": 2,
            "poll_interval_seconds": 0.05,
            "retry": {
                "attempts_per_claim": 3,
                "backoff_initial_seconds": 0.01,
                "backoff_max_seconds": 0.05,
                "schedule_seconds": [0.05, 0.05],
                "retry_after_max_seconds": 5,
            },
        },
        "slack": {
            "integrations": {SLACK_INTEGRATION: {"bot_token": "xoxb-test-token"}},
            "min_interval_seconds": 0.0,
        },
        "logging": {"format": "json", "level": "info"},
    }
    return deep_merge(base, overrides)


def make_config(**overrides: Any) -> Config:
    return parse_config(yaml.safe_dump(config_data(**overrides)))


RelayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class SinkServer:
    """A real HTTP server on 127.0.0.1 that records requests and answers from a script."""

    server: TestServer
    received: list[Received]
    script: list[Reply]
    default: Reply

    def url(self, path: str = "/hook") -> str:
        return str(self.server.make_url(path))

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        return await wait_for_requests(self.received, count, timeout)


async def wait_for_requests(
    received: list[Received], count: int, timeout: float = 10.0
) -> list[Received]:
    """``received`` once it holds ``count`` requests (a test server appends to it)."""
    deadline = time.monotonic() + timeout
    while len(received) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} requests, got {len(received)}")
        await asyncio.sleep(0.01)
    return received


async def make_sink_server(aiohttp_server: Any) -> SinkServer:
    """A recording sink server; the fixture gives one, a test needing two calls this."""
    received: list[Received] = []
    script: list[Reply] = []
    state = SinkServer(server=None, received=received, script=script, default=Reply())  # type: ignore[arg-type]

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        reply = script.pop(0) if script else state.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    state.server = await aiohttp_server(app, host="127.0.0.1")
    return state


async def dead_pagerduty_and_slack(
    make_relay: Any, aiohttp_server: Any, slack_reply: Reply
) -> tuple[SinkServer, SinkServer, Any]:
    """A relay whose PagerDuty endpoint answers every page 404 (a dead routing key: a final
    failure) and whose Slack API answers ``slack_reply``: the two servers and the relay, for
    the fallback tests."""
    pagerduty = await make_sink_server(aiohttp_server)
    pagerduty.default = Reply(status=404, body='{"status": "not found"}')
    slack = await make_sink_server(aiohttp_server)
    slack.default = slack_reply
    relay = await make_relay(
        pagerduty={"events_url": pagerduty.url("/v2/enqueue")},
        slack={"api_base_url": slack.url("/api")},
    )
    return pagerduty, slack, relay


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_sink(
    client: TestClient[web.Request, web.Application],
    args: dict[str, Any],
    *,
    tenant_id: str = TENANT,
    key: str = ADMIN_KEY,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "tenant_id": tenant_id,
        "name": "test sink",
        "description": "a sink for tests",
        "event_sink_args": args,
        **extra,
    }
    resp = await client.post("/v1/event_sink", json=body, headers=auth(key))
    assert resp.status == 200, await resp.text()
    sink: dict[str, Any] = (await resp.json())["event_sink"]
    return sink


async def create_webhook_sink_over_http(
    http: aiohttp.ClientSession, base: str, url: str, name: str, description: str = ""
) -> None:
    """A Webhook sink to ``url`` for the first tenant, created through a running relay's API at
    ``base`` (a serve process, not an in-process app); ``http`` carries the API key."""
    resp = await http.post(
        f"{base}/v1/event_sink",
        json={
            "tenant_id": TENANT,
            "name": name,
            "description": description,
            "event_sink_args": {"Webhook": {"url": url}},
        },
    )
    assert resp.status == 200, await resp.text()


async def api_get(
    client: TestClient[web.Request, web.Application],
    path: str,
    key: str = ADMIN_KEY,
    **params: str | int,
) -> tuple[int, dict[str, Any]]:
    """GET a management-API listing (``tenant_id`` defaults to TENANT): status and body."""
    query = {k: str(v) for k, v in params.items()}
    query.setdefault("tenant_id", TENANT)
    resp = await client.get(path, params=query, headers=auth(key))
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def post_event(
    client: TestClient[web.Request, web.Application],
    event: dict[str, Any] | bytes,
    token: str = INGEST_TOKEN,
) -> Any:
    data = event if isinstance(event, bytes) else json.dumps(event).encode()
    return await client.post(
        "/v1/air/events",
        data=data,
        headers={**auth(token), "Content-Type": "application/json"},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_final(db: asyncpg.Connection, count: int = 1, timeout: float = 15) -> None:
    """Wait until ``count`` deliveries have left ``pending`` (delivered or dead)."""

    async def done() -> bool:
        n = await db.fetchval("SELECT count(*) FROM deliveries WHERE status <> 'pending'")
        return bool(n >= count)

    await wait_until(done, timeout=timeout)


async def audit_rows(
    client: TestClient[web.Request, web.Application], **params: str
) -> list[dict[str, Any]]:
    """The tenant's audit log entries (TENANT unless given), newest first, up to 1000."""
    status, body = await api_get(client, "/v1/audit_log", **{"limit": "1000", **params})
    assert status == 200, body
    rows: list[dict[str, Any]] = body["data"]["audit_logs"]
    return rows


async def insert_event_row(db: asyncpg.Connection | asyncpg.Pool, event_id: uuid.UUID) -> None:
    """A bare stored event ``event_id`` (tenant ``t``, organization 1, an empty body): the row a
    test's hand-written deliveries point at; its content matters to none of them."""
    await db.execute(
        "INSERT INTO events (id, tenant_id, event_name, organization_id, body)"
        " VALUES ($1, 't', 'E', '1', '{}')",
        event_id,
    )


async def delivery_state(db: asyncpg.Connection) -> asyncpg.Record:
    """The row of the test's one delivery."""
    row = await db.fetchrow("SELECT * FROM deliveries")
    assert row is not None
    return row


def request_head(length: int, *, path: str = "/v1/air/events") -> bytes:
    """The head of a raw HTTP/1.1 ingest POST (kept alive) whose body has ``length`` bytes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {INGEST_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader, timeout: float = 15.0) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response read off a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return status, body


@dataclass
class GuardedRelay:
    """The relay app served as ``serve`` serves it (GuardedSite: connection cap, slow-client
    clocks, TLS when given), on 127.0.0.1 at ``port``."""

    site: GuardedSite
    app: web.Application
    port: int
    ssl_context: ssl.SSLContext | None = None  # a client context trusting the server, for TLS

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ssl_context)

    def counter(self, name: str, **labels: str) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels or None)
        return value or 0.0


GuardedStarter = Callable[..., Awaitable[GuardedRelay]]


async def claim_plan(db: asyncpg.Connection) -> str:
    """The claim query's plan with sequential scans priced out: what the planner can answer
    from the indexes alone."""
    from air_relay.db.queries import QUERIES

    await db.execute("SET enable_seqscan = off")
    sinks, running, held = [uuid.uuid4()], [1], [uuid.uuid4()]
    plan = await db.fetch(
        "EXPLAIN " + QUERIES["claim_deliveries"],
        ["Webhook"],
        10,
        30.0,
        "w",
        sinks,
        8,
        running,
        held,
        True,
        [uuid.uuid4()],
        10,
    )
    return "\n".join(r[0] for r in plan)
