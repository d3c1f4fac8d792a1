"""``air-relay serve``: the embedded database (when no DSN), the HTTP server, the dispatcher,
systemd readiness, and a SIGTERM that drains instead of dropping work."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiohttp import web

from air_relay import __version__, systemd
from air_relay.config import Config
from air_relay.db.embedded import EmbeddedPostgres
from air_relay.db.pool import DatabaseRefused
from air_relay.http.app import make_app

log = structlog.get_logger(__name__)


async def resolve_dsn(cfg: Config) -> tuple[str, EmbeddedPostgres | None]:
    if cfg.database.dsn:
        return cfg.database.dsn, None
    embedded = EmbeddedPostgres(cfg.state_dir)
    dsn = await asyncio.to_thread(embedded.start)
    return dsn, embedded


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
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    dsn, embedded = await resolve_dsn(cfg)
    runner = web.AppRunner(make_app(cfg, dsn), access_log=None, shutdown_timeout=5)
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
