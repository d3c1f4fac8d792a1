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

from air_relay.db.pool import DB_UNAVAILABLE, connect

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "air_relay_deliveries"


async def listen(dsn: str, on_notify: Callable[[], None]) -> None:
    """Call ``on_notify`` for every notification, until cancelled.

    Reconnects with backoff when the connection is lost, and calls ``on_notify`` after every
    (re)connection too: anything committed while nobody listened is due now.
    """
    delay = 0.5

    def notified(*_args: Any) -> None:
        on_notify()

    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(dsn)
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _c: closed.set())
            await conn.add_listener(NOTIFY_CHANNEL, notified)
            delay = 0.5
            on_notify()
            await closed.wait()
            log.warning("listen_connection_lost")
        except DB_UNAVAILABLE as exc:
            log.warning("listen_failed", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        except Exception:
            # Not an outage (a misconfigured pooler, a permission): say so loudly, keep trying.
            log.exception("listen_failed", retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
