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
import gc
import resource
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from air_relay import __version__, systemd
from air_relay.config import Config, ConfigError, credential_warnings
from air_relay.db.batcher import IngestBatcher
from air_relay.db.embedded import EmbeddedPostgres
from air_relay.db.migrate import apply_migrations
from air_relay.db.pool import (
    POOLER_HINT,
    DatabaseRefused,
    connect,
    create_pool,
    pooler_misconfigured,
    wait_for_database,
)
from air_relay.db.spool import Spool, SpoolDrainer
from air_relay.delivery.background import BackgroundLoop
from air_relay.delivery.dispatcher import Dispatcher
from air_relay.delivery.planner_stats import PlannerStatsTask
from air_relay.delivery.retention import RetentionTask
from air_relay.delivery.sealing import SealerTask
from air_relay.http.app import make_app
from air_relay.http.listener import GuardedSite, listen_sockets
from air_relay.http.state import (
    DISPATCHER,
    INGEST_BATCHER,
    LOOKUPS,
    METRICS,
    POOL,
    SPOOL,
    TEMPLATES,
)
from air_relay.http.tls import ServerTLS
from air_relay.metrics import Metrics
from air_relay.sinks.egress_guard import GuardedResolver, Lookups, guarded_socket
from air_relay.sinks.registry import SINK_TYPES, Clients, build_senders
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


def listen_dsn(cfg: Config, dsn: str) -> str | None:
    """Where the dispatcher LISTENs: ``database.listen_dsn``; else the main DSN, unless that
    goes through a transaction-mode pooler (``prepared_statements`` false), where LISTEN
    has no session to live in: None, and the dispatcher polls."""
    if cfg.database.listen_dsn:
        return cfg.database.listen_dsn
    return dsn if cfg.database.prepared_statements else None


def background(
    make: Callable[[web.Application], BackgroundLoop],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running the housekeeping task ``make`` builds while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        task = make(app)
        task.start()
        yield
        await task.stop()

    return run


def build_app(
    cfg: Config,
    dsn: str,
    *,
    run_dispatcher: bool = True,
    lookups: Callable[[], Lookups] = Lookups,
) -> web.Application:
    """The HTTP app with the database, client sessions and (unless ``run_dispatcher`` is
    false) the dispatcher, retention and the audit sealer attached to its lifecycle.

    ``lookups`` makes the name lookups of sink hosts (the tests' seam: a name that does not
    exist without asking any DNS server)."""
    app = make_app(cfg)
    app[METRICS] = Metrics(tuple(SINK_TYPES))

    prepared = cfg.database.prepared_statements

    async def database(app: web.Application) -> AsyncIterator[None]:
        await wait_for_database(dsn)
        conn = await connect(dsn, prepared_statements=prepared)
        try:
            await apply_migrations(conn)
        except Exception as exc:
            if pooler_misconfigured(exc):
                # serve exits 1 with the hint, rather than a traceback.
                raise DatabaseRefused(f"{type(exc).__name__}: {POOLER_HINT}") from exc
            raise
        finally:
            await conn.close()
        pool = await create_pool(
            dsn,
            cfg.database.pool_min_size,
            cfg.database.pool_max_size,
            prepared_statements=prepared,
        )
        app[POOL] = pool
        app[INGEST_BATCHER] = IngestBatcher(
            pool, acquire_timeout=cfg.database.acquire_timeout_seconds
        )
        yield
        await pool.close()

    async def spool(app: web.Application) -> AsyncIterator[None]:
        # A spool left by a previous run is found here and drained from the start.
        the_spool = Spool(Path(cfg.state_dir).expanduser() / "spool", max_bytes=cfg.spool.max_bytes)
        await asyncio.to_thread(the_spool.open)
        metrics = app[METRICS]
        metrics.spool_events.set_function(lambda: the_spool.events)
        metrics.spool_bytes.set_function(lambda: the_spool.size)
        app[SPOOL] = the_spool
        drainer = SpoolDrainer(
            the_spool, app[POOL], acquire_timeout=cfg.database.acquire_timeout_seconds
        )
        drainer.start()
        yield
        await drainer.stop()
        the_spool.close()

    async def client_sessions(app: web.Application) -> AsyncIterator[None]:
        limit = cfg.delivery.concurrency
        # API checks and sends resolve on separate threads: neither can starve the other.
        api_lookups, send_lookups = lookups(), lookups()
        app[LOOKUPS] = api_lookups
        # Processes for custom templates, started on first use (none without templates).
        templates = TemplateWorkers()
        app[TEMPLATES] = templates
        guarded = not cfg.delivery.allow_private_destinations
        # Checked at connect time, for the address actually connected to.
        webhook_connector = aiohttp.TCPConnector(
            limit=limit,
            ttl_dns_cache=60,
            resolver=GuardedResolver(send_lookups) if guarded else None,
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
            api_lookups.close()
            send_lookups.close()
            await templates.close()

    async def dispatcher(app: web.Application) -> AsyncIterator[None]:
        senders = build_senders(cfg, app[CLIENTS])
        running = Dispatcher(app[POOL], listen_dsn(cfg, dsn), cfg.delivery, senders, app[METRICS])
        app[DISPATCHER] = running
        running.start()
        yield
        await running.stop(grace_seconds=cfg.delivery.timeout_seconds)

    app.cleanup_ctx.append(database)
    if cfg.spool.enabled and cfg.state_dir:
        app.cleanup_ctx.append(spool)
    app.cleanup_ctx.append(client_sessions)
    if run_dispatcher:
        app.cleanup_ctx.append(dispatcher)
        app.cleanup_ctx.append(background(lambda app: RetentionTask(app[POOL], cfg.retention)))
        app.cleanup_ctx.append(background(lambda app: SealerTask(app[POOL], cfg.audit)))
        app.cleanup_ctx.append(background(lambda app: PlannerStatsTask(app[POOL])))
    return app


def open_files_needed(cfg: Config) -> int:
    """Open files ``serve`` may need at once: ``max_connections`` client connections, the pool,
    two per sink connection (socket and DNS), and a margin for the rest (log, listening
    sockets, the LISTEN connection, certificate and config files)."""
    return (
        cfg.server.max_connections + cfg.database.pool_max_size + 2 * cfg.delivery.concurrency + 100
    )


def ensure_file_limit(cfg: Config) -> None:
    """Raise the soft limit on open files (up to the hard one) to what ``open_files_needed``
    says; warn if it stays short.

    Many systems start processes with a soft limit of 1024 and a far higher hard limit, which
    a process may raise itself to; under systemd, LimitNOFILE= sets both.
    """
    needed = open_files_needed(cfg)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass  # refused (a sandbox may forbid it): the warning below says what to do
    if soft < needed:
        log.warning(
            "file_limit_low",
            open_files_limit=soft,
            needed=needed,
            max_connections=cfg.server.max_connections,
        )


def activated_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (socket activation), ready for GuardedSite; [] when
    serve binds its own. ValueError for a passed descriptor that is not a listening TCP
    socket (a mistake in the .socket unit)."""
    sockets = systemd.listen_sockets()
    for sock in sockets:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not listening:
            raise ValueError(
                f"socket activation passed fd {sock.fileno()}, which is not a listening TCP "
                "socket (ListenStream= in the .socket unit)"
            )
        sock.setblocking(False)
    return sockets


def server_tls(cfg: Config) -> ServerTLS | None:
    """The server's TLS context when ``server.tls`` is set (ConfigError if its files do not
    load), else None for plain HTTP."""
    if not cfg.server.tls.cert_file:
        return None
    return ServerTLS(cfg.server.tls)


def _reload(tls: ServerTLS | None) -> None:
    """SIGHUP: load the certificate and key again (the only thing reloaded so far)."""
    if tls is None:
        log.info("reload_skipped", reason="no server.tls to reload")
        return
    tls.reload()


async def supervise_embedded(
    embedded: EmbeddedPostgres | None, *, interval: float = 1.0, max_delay: float = 30.0
) -> None:
    """Restart the embedded PostgreSQL when its process dies (with backoff while it does not
    come back); meanwhile ingest spools and the workers back off as in any outage. Nothing
    to do with an external database."""
    if embedded is None:
        return
    delay = interval
    while True:
        await asyncio.sleep(delay)
        if await asyncio.to_thread(embedded.running):
            delay = interval
            continue
        log.warning("embedded_database_died", pgdata=str(embedded.pgdata))
        try:
            await asyncio.to_thread(embedded.restart)
            delay = interval
        except Exception as exc:
            delay = min(max(delay, interval) * 2, max_delay)
            log.warning("embedded_database_restart_failed", error=str(exc)[:300], retry_in=delay)


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


def freeze_heap() -> None:
    """Leave what start-up made (modules, the app, the event catalog, templates: alive for
    as long as the process) out of the garbage collector's full passes. Each full pass walked
    all of it, tens of milliseconds on the event loop that every request and delivery
    waited out; now it walks only what was made since."""
    gc.collect()
    gc.freeze()


async def serve(cfg: Config) -> int:
    """``air-relay serve``: run until SIGTERM or SIGINT, then drain; the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        tls = server_tls(cfg)
    except ConfigError as exc:
        log.error("invalid_configuration", error=str(exc))
        return 2
    # Set before the slow start-up, whose SIGHUP would otherwise end the process.
    loop.add_signal_handler(signal.SIGHUP, _reload, tls)
    try:
        activated = activated_sockets()
    except ValueError as exc:
        log.error("listen_failed", error=str(exc))
        return 1

    for warning in credential_warnings(cfg):
        log.warning("weak_credential", warning=warning)
    ensure_file_limit(cfg)
    dsn, embedded = await resolve_dsn(cfg)
    app = build_app(cfg, dsn)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=5,
        keepalive_timeout=cfg.server.keepalive_timeout_seconds,
    )
    watchdog: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    try:
        # Start-up waits for the database (logging while it does) but still obeys SIGTERM.
        try:
            if not await _until_stopped(stop, asyncio.ensure_future(runner.setup())):
                return 0
        except DatabaseRefused as exc:
            log.error("database_refused", error=str(exc))
            return 1
        if activated:
            sockets = activated
        else:
            try:
                sockets = listen_sockets(cfg.server.host, cfg.server.port)
            except OSError as exc:
                log.error(
                    "listen_failed", host=cfg.server.host, port=cfg.server.port, error=str(exc)
                )
                return 1
        site = GuardedSite(
            runner,
            sockets,
            cfg.server,
            ssl_context=tls.context if tls else None,
            metrics=app[METRICS],
        )
        await site.start()
        freeze_heap()
        log.info(
            "server_ready",
            address=(
                site.name
                if activated
                else f"{'https' if tls else 'http'}://{cfg.server.host}:{cfg.server.port}"
            ),
            socket_activated=bool(activated),
            ingest_path=cfg.ingest.path,
            version=__version__,
            embedded_database=embedded is not None,
            **({"tls_fingerprint_sha256": tls.fingerprint} if tls else {}),
        )
        systemd.notify("READY=1")
        supervisor = asyncio.create_task(supervise_embedded(embedded))
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
        if supervisor is not None:
            supervisor.cancel()
        # Stops listening first, then the dispatcher drains, then the pool closes.
        await runner.cleanup()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        log.info("shutdown_complete")
