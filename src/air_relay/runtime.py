"""The running daemon, wired in one place: the embedded database (when no DSN), the pool and
migrations, the client sessions and senders, the dispatcher, retention, the HTTP site,
signals and systemd readiness.

``build_app`` gives the HTTP app with every resource attached as an aiohttp cleanup context
(created in order at start-up, torn down in reverse), so tests run the same wiring with
``aiohttp_client``; ``serve`` runs it as ``air-relay serve`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web

from air_relay import __version__, systemd
from air_relay.config import Config
from air_relay.db.batcher import IngestBatcher
from air_relay.db.embedded import EmbeddedPostgres
from air_relay.db.migrate import apply_migrations
from air_relay.db.pool import DatabaseRefused, connect, create_pool, wait_for_database
from air_relay.delivery.dispatcher import Dispatcher
from air_relay.delivery.retention import RetentionTask
from air_relay.delivery.sealing import SealerTask
from air_relay.http.app import make_app
from air_relay.http.state import DISPATCHER, INGEST_BATCHER, LOOKUPS, METRICS, POOL, TEMPLATES
from air_relay.metrics import Metrics
from air_relay.sinks.egress_guard import GuardedResolver, Lookups, guarded_socket
from air_relay.sinks.registry import Clients, build_senders
from air_relay.sinks.template_workers import TemplateWorkers

log = structlog.get_logger(__name__)

CLIENTS = web.AppKey("clients", Clients)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux, macOS): the same asyncio API, with
    the transport, timer and selector work in C (measured in docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def resolve_dsn(cfg: Config) -> tuple[str, EmbeddedPostgres | None]:
    """The configured DSN, or that of the embedded server, started here."""
    if cfg.database.dsn:
        return cfg.database.dsn, None
    embedded = EmbeddedPostgres(cfg.state_dir)
    dsn = await asyncio.to_thread(embedded.start)
    return dsn, embedded


def build_app(cfg: Config, dsn: str, *, run_dispatcher: bool = True) -> web.Application:
    """The HTTP app with the database, client sessions and (unless ``run_dispatcher`` is
    false) the dispatcher, retention and the audit sealer attached to its lifecycle."""
    app = make_app(cfg)
    app[METRICS] = Metrics()

    async def database(app: web.Application) -> AsyncIterator[None]:
        await wait_for_database(dsn)
        conn = await connect(dsn)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        pool = await create_pool(dsn, cfg.database.pool_min_size, cfg.database.pool_max_size)
        app[POOL] = pool
        app[INGEST_BATCHER] = IngestBatcher(
            pool, acquire_timeout=cfg.database.acquire_timeout_seconds
        )
        yield
        await pool.close()

    async def client_sessions(app: web.Application) -> AsyncIterator[None]:
        limit = cfg.delivery.concurrency
        lookups = Lookups()
        app[LOOKUPS] = lookups
        # Processes for custom templates, started on first use (none without templates).
        templates = TemplateWorkers()
        app[TEMPLATES] = templates
        guarded = not cfg.delivery.allow_private_destinations
        # Checked at connect time, for the address actually connected to.
        webhook_connector = aiohttp.TCPConnector(
            limit=limit,
            ttl_dns_cache=60,
            resolver=GuardedResolver(lookups) if guarded else None,
            socket_factory=guarded_socket if guarded else None,
        )
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=60)
                ) as operator,
                aiohttp.ClientSession(connector=webhook_connector) as webhook,
            ):
                app[CLIENTS] = Clients(operator=operator, webhook=webhook, templates=templates)
                yield
        finally:
            lookups.close()
            await templates.close()

    async def dispatcher(app: web.Application) -> AsyncIterator[None]:
        senders = build_senders(cfg, app[CLIENTS])
        running = Dispatcher(app[POOL], dsn, cfg.delivery, senders, app[METRICS])
        app[DISPATCHER] = running
        running.start()
        yield
        await running.stop(grace_seconds=cfg.delivery.timeout_seconds)

    async def retention(app: web.Application) -> AsyncIterator[None]:
        task = RetentionTask(app[POOL], cfg.retention)
        task.start()
        yield
        await task.stop()

    async def sealer(app: web.Application) -> AsyncIterator[None]:
        task = SealerTask(app[POOL], cfg.audit)
        task.start()
        yield
        await task.stop()

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(client_sessions)
    if run_dispatcher:
        app.cleanup_ctx.append(dispatcher)
        app.cleanup_ctx.append(retention)
        app.cleanup_ctx.append(sealer)
    return app


async def _wait_event(event: asyncio.Event) -> None:
    await event.wait()


async def _until_stopped(stop: asyncio.Event, work: asyncio.Future[None]) -> bool:
    """Run ``work`` unless a stop signal comes first; True when the work finished."""
    waiter: asyncio.Future[None] = asyncio.ensure_future(_wait_event(stop))
    done, _ = await asyncio.wait([work, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if work in done:
        work.result()
        return True
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return False


async def serve(cfg: Config) -> int:
    """``air-relay serve``: run until SIGTERM or SIGINT, then drain; the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    dsn, embedded = await resolve_dsn(cfg)
    runner = web.AppRunner(build_app(cfg, dsn), access_log=None, shutdown_timeout=5)
    watchdog: asyncio.Task[None] | None = None
    try:
        # Start-up waits for the database (logging while it does) but still obeys SIGTERM.
        try:
            if not await _until_stopped(stop, asyncio.ensure_future(runner.setup())):
                return 0
        except DatabaseRefused as exc:
            log.error("database_refused", error=str(exc))
            return 1
        site = web.TCPSite(runner, cfg.server.host, cfg.server.port)
        try:
            await site.start()
        except OSError as exc:
            log.error("listen_failed", host=cfg.server.host, port=cfg.server.port, error=str(exc))
            return 1
        log.info(
            "server_ready",
            address=f"http://{cfg.server.host}:{cfg.server.port}",
            ingest_path=cfg.ingest.path,
            version=__version__,
            embedded_database=embedded is not None,
        )
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval:
            watchdog = asyncio.create_task(systemd.watchdog_loop(interval))
        await stop.wait()
        log.info("shutdown_started")
        systemd.notify("STOPPING=1")
        return 0
    finally:
        if watchdog is not None:
            watchdog.cancel()
        # Stops listening first, then the dispatcher drains, then the pool closes.
        await runner.cleanup()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        log.info("shutdown_complete")
