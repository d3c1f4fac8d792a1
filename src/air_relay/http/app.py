"""The application factory: routes, middleware, and the lifecycles of the pool, the client
session and the dispatcher (``cleanup_ctx``, torn down in reverse on shutdown)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from air_relay.config import Config
from air_relay.db.batcher import IngestBatcher
from air_relay.db.migrate import apply_migrations
from air_relay.db.pool import connect, create_pool, wait_for_database
from air_relay.delivery.dispatcher import Dispatcher
from air_relay.delivery.retention import RetentionTask
from air_relay.http import audit_api, delivery_api, ops, sinks_api
from air_relay.http.errors import error_middleware
from air_relay.http.ingest import handle_ingest
from air_relay.http.state import (
    CLIENT_SESSION,
    CONFIG,
    DISPATCHER,
    DSN,
    INGEST_BATCHER,
    METRICS,
    POOL,
    WEBHOOK_SESSION,
)
from air_relay.metrics import Metrics
from air_relay.sinks.base import Sender
from air_relay.sinks.egress_guard import GuardedResolver
from air_relay.sinks.pagerduty import PagerDutySender
from air_relay.sinks.slack import SlackSender
from air_relay.sinks.webhook import WebhookSender


async def _database(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    await wait_for_database(app[DSN])
    conn = await connect(app[DSN])
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    app[POOL] = await create_pool(app[DSN], cfg.database.pool_min_size, cfg.database.pool_max_size)
    app[INGEST_BATCHER] = IngestBatcher(
        app[POOL], acquire_timeout=cfg.database.acquire_timeout_seconds
    )
    yield
    await app[POOL].close()


async def _client_sessions(app: web.Application) -> AsyncIterator[None]:
    """Keep-alive client sessions: one for the APIs the operator configured (Slack,
    PagerDuty), one for Webhook URLs, which are sink input and go through the SSRF guard."""
    cfg = app[CONFIG]
    limit = cfg.delivery.concurrency
    app[CLIENT_SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=60)
    )
    # Checked at connect time, for the address actually connected to.
    resolver = None if cfg.delivery.allow_private_destinations else GuardedResolver()
    app[WEBHOOK_SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=60, resolver=resolver)
    )
    yield
    await app[WEBHOOK_SESSION].close()
    await app[CLIENT_SESSION].close()


def build_senders(app: web.Application) -> dict[str, Sender]:
    """One sender per sink type."""
    cfg = app[CONFIG]
    session = app[CLIENT_SESSION]
    timeout = cfg.delivery.timeout_seconds
    senders: list[Sender] = [
        WebhookSender(
            app[WEBHOOK_SESSION],
            timeout,
            allow_private_destinations=cfg.delivery.allow_private_destinations,
        ),
        SlackSender(session, cfg.slack, timeout),
        PagerDutySender(session, cfg.pagerduty, timeout),
    ]
    return {s.sink_type: s for s in senders}


async def _dispatcher(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    dispatcher = Dispatcher(app[POOL], app[DSN], cfg.delivery, build_senders(app), app[METRICS])
    app[DISPATCHER] = dispatcher
    dispatcher.start()
    yield
    await dispatcher.stop(grace_seconds=cfg.delivery.timeout_seconds)


async def _retention(app: web.Application) -> AsyncIterator[None]:
    task = RetentionTask(app[POOL], app[CONFIG].retention)
    task.start()
    yield
    await task.stop()


def make_app(cfg: Config, dsn: str, *, run_dispatcher: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware],
        # A little headroom so an oversized body is answered by our own 413 check.
        client_max_size=cfg.server.max_body_bytes + 1,
    )
    app[CONFIG] = cfg
    app[DSN] = dsn
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_client_sessions)
    if run_dispatcher:
        app.cleanup_ctx.append(_dispatcher)
        app.cleanup_ctx.append(_retention)
    app.router.add_post(cfg.ingest.path, handle_ingest)
    sinks_api.add_routes(app)
    app.router.add_get("/v1/audit_log", audit_api.audit_log)
    delivery_api.add_routes(app)
    ops.add_routes(app)
    return app
