"""Shared fixtures: a real PostgreSQL (embedded, or $AIR_RELAY_TEST_DSN), a migrated template
database cloned per test, a real PgBouncer in front of it, the relay app under aiohttp's test
client, and a recording sink server on 127.0.0.1. The helpers behind them are in
tests/support.py (tests/pgbouncer.py for PgBouncer)."""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from air_relay.db.embedded import EmbeddedPostgres
from air_relay.db.migrate import apply_migrations
from air_relay.db.pool import connect
from air_relay.http.listener import GuardedSite, listen_sockets
from air_relay.http.state import METRICS
from air_relay.http.tls import ServerTLS
from air_relay.logs import configure_logging
from air_relay.runtime import build_app
from tests.pgbouncer import PgBouncer, pgbouncer_binary, running_pgbouncer
from tests.support import (
    TEMPLATE_DB,
    GuardedRelay,
    GuardedStarter,
    RelayFactory,
    SinkServer,
    create_database,
    make_config,
    make_sink_server,
    scratch_database,
    with_database,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the long variants (marked slow); CI runs the short ones only",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """The server's admin DSN: $AIR_RELAY_TEST_DSN, or one embedded server per session."""
    configure_logging("console", "info")
    external = os.environ.get("AIR_RELAY_TEST_DSN")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="air-relay-test-") as tmp:
        embedded = EmbeddedPostgres(tmp, delete_on_stop=True)
        dsn = embedded.start()
        try:
            yield dsn
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
def pgbouncer(server_dsn: str) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the test server (every database)."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does)")
    with running_pgbouncer(binary, server_dsn, pool_mode="transaction") as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def template_dsn(server_dsn: str) -> str:
    """A freshly migrated database that each test clones (CREATE DATABASE ... TEMPLATE)."""

    async def build() -> None:
        conn = await connect(await create_database(server_dsn, TEMPLATE_DB))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return with_database(server_dsn, TEMPLATE_DB)


@pytest.fixture
async def db_dsn(server_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(server_dsn, TEMPLATE_DB) as dsn:
        yield dsn


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for assertions on rows."""
    conn = await connect(db_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def make_relay(db_dsn: str, aiohttp_client: Any, tmp_path: Path) -> RelayFactory:
    # db_dsn first: fixtures tear down in reverse, so the app stops before its database goes.
    """Start the relay app (HTTP + dispatcher) on the test database; kwargs override config
    (state_dir, where the spool lives, defaults to the test's own directory)."""

    async def start(
        *, run_dispatcher: bool = True, **overrides: Any
    ) -> TestClient[web.Request, web.Application]:
        overrides.setdefault("state_dir", str(tmp_path / "state"))
        app = build_app(make_config(**overrides), db_dsn, run_dispatcher=run_dispatcher)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    return start


@pytest.fixture
async def relay(make_relay: RelayFactory) -> TestClient[web.Request, web.Application]:
    return await make_relay()


@pytest.fixture
async def start_guarded(db_dsn: str, tmp_path: Path) -> AsyncIterator[GuardedStarter]:
    """Start the relay app (no dispatcher) behind GuardedSite, as serve runs it; keyword
    arguments are ``server.`` settings, ``tls`` a ServerTLS and ``client_ssl`` the client's
    context for it."""
    runners: list[web.AppRunner] = []

    async def start(
        *, tls: ServerTLS | None = None, client_ssl: ssl.SSLContext | None = None, **server: Any
    ) -> GuardedRelay:
        cfg = make_config(server=server, state_dir=str(tmp_path / "state"))
        app = build_app(cfg, db_dsn, run_dispatcher=False)
        runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=cfg.server.keepalive_timeout_seconds
        )
        await runner.setup()
        runners.append(runner)
        sockets = listen_sockets("127.0.0.1", 0)
        site = GuardedSite(
            runner,
            sockets,
            cfg.server,
            ssl_context=tls.context if tls else None,
            metrics=app[METRICS],
        )
        await site.start()
        return GuardedRelay(site, app, sockets[0].getsockname()[1], client_ssl)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sink_server(aiohttp_server: Any) -> SinkServer:
    return await make_sink_server(aiohttp_server)
