"""Operations endpoints: ``/healthz`` (alive), ``/readyz`` (database migrated, or the spool
taking events while it is not), ``/metrics``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from air_relay.db import repository as repo
from air_relay.db.health import sinks_health
from air_relay.db.migrate import current_version, latest_version
from air_relay.db.pool import DB_UNAVAILABLE
from air_relay.http.errors import RETRY_AFTER_SECONDS, error_response
from air_relay.http.state import METRICS, POOL, SPOOL


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _not_ready(message: str) -> web.Response:
    return error_response(503, "unavailable", message, {"Retry-After": RETRY_AFTER_SECONDS})


async def readyz(request: web.Request) -> web.Response:
    spool = request.app.get(SPOOL)
    # While events are spooled the relay still accepts them: ready, and saying so.
    spooling = {} if spool is None else {"spooling": spool.spooling, "spooled": spool.events}
    try:
        async with request.app[POOL].acquire(timeout=2) as conn:
            version = await asyncio.wait_for(current_version(conn), timeout=2)
    except DB_UNAVAILABLE:
        if spool is not None and spool.size < spool.max_bytes:
            return web.json_response({"status": "ready", "database": "unavailable", **spooling})
        return _not_ready("The database is not reachable.")
    if version < latest_version():
        return _not_ready("The database schema is not migrated yet.")
    return web.json_response({"status": "ready", "schema_version": version, **spooling})


# What leaves the database-backed gauges at their last values (a scrape still answers).
_SCRAPE_FAILURES: tuple[type[BaseException], ...] = (*DB_UNAVAILABLE, asyncpg.PostgresError)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    pool = request.app[POOL]
    try:
        pending, oldest = await asyncio.wait_for(repo.pending_stats(pool), timeout=2)
        m.deliveries_pending.set(pending)
        m.oldest_pending_age.set(oldest)
        # One statement over the kept health state and per-sink indexes (db/health.py).
        sinks = await asyncio.wait_for(sinks_health(pool, None), timeout=2)
        m.set_sink_health(sinks, datetime.now(UTC))
    except _SCRAPE_FAILURES:
        pass  # keep the last values; the counters are still worth scraping
    resp = web.Response(body=m.render())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
