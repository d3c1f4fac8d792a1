"""LISTEN/NOTIFY: the hint that new deliveries are due.

Statements that make deliveries due (ingest, retry, replay) notify ``NOTIFY_CHANNEL`` in the
same transaction; dispatchers keep one connection listening on it. A notification is only a
hint: a lost one is found by the dispatcher's poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from air_relay.db.pool import DB_UNAVAILABLE, connect, error_hint

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "air_relay_deliveries"


LISTEN_HINT = (
    "LISTEN went through a transaction-mode pooler, which gives the session to other "
    "clients between statements, so notifications are lost: the dispatcher polls only "
    "(delivery.poll_interval_seconds). Set database.listen_dsn to a direct DSN, or leave it "
    "unset with database.prepared_statements: false to poll without trying"
)


async def through_transaction_pooler(conn: asyncpg.Connection, dsn: str) -> bool:
    """Whether ``conn`` reaches the server through a pooler that shares server connections
    between clients (PgBouncer in transaction or statement mode).

    Direct, the backend's pid is the one the server announced at connection time; a pooler
    announces its own, so a mismatch means a pooler. Whether it shares server connections
    shows with a second client: a transaction-mode pooler hands it the server connection the
    first one just used (it reuses the most recent), a session-mode one never does.
    """
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    if pid == conn.get_server_pid():
        return False
    other = await connect(dsn, prepared_statements=False)
    try:
        return bool(await other.fetchval("SELECT pg_backend_pid()") == pid)
    finally:
        await other.close()


async def listen(dsn: str, on_notify: Callable[[], None]) -> None:
    """Call ``on_notify`` for every notification, until cancelled.

    Reconnects with backoff when the connection is lost, and calls ``on_notify`` after every
    (re)connection too: anything committed while nobody listened is due now. Returns, with an
    error-level log line, when the connection turns out to go through a transaction-mode
    pooler, where LISTEN cannot work (the dispatcher's poll carries on).
    """
    delay = 0.5

    def notified(*_args: Any) -> None:
        on_notify()

    while True:
        conn: asyncpg.Connection | None = None
        try:
            # No prepared statements: this connection runs next to none, and a listen DSN
            # that goes through a pooler by mistake is reported below, not as their errors.
            conn = await connect(dsn, prepared_statements=False)
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _c: closed.set())
            await conn.add_listener(NOTIFY_CHANNEL, notified)
            if await through_transaction_pooler(conn, dsn):
                log.error("listen_through_pooler", hint=LISTEN_HINT)
                on_notify()
                return
            delay = 0.5
            on_notify()
            await closed.wait()
            log.warning("listen_connection_lost")
        except DB_UNAVAILABLE as exc:
            log.warning("listen_failed", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        except Exception as exc:
            # Not an outage (a misconfigured pooler, a permission): say so loudly, keep trying.
            log.exception("listen_failed", retry_in=delay, **error_hint(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
