"""What the periodic housekeeping tasks (retention, sealing) share: a task started and
stopped with the app, and how a failed run is logged so that the next one simply follows."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from air_relay.db.pool import DB_UNAVAILABLE, error_hint

log = structlog.get_logger(__name__)


class BackgroundLoop:
    """Runs ``_loop`` in a task from ``start`` until ``stop``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _loop(self) -> None:
        raise NotImplementedError


def log_failed_run(event: str, exc: Exception, retry_in: float) -> None:
    """Log a run that failed, from inside its ``except`` block: a warning when the database
    is away; the traceback at error level otherwise (a bug must not end the task, and must
    not pass unseen)."""
    if isinstance(exc, DB_UNAVAILABLE):
        log.warning(event, error=type(exc).__name__, detail=str(exc)[:200], retry_in=retry_in)
    else:
        log.exception(event, retry_in=retry_in, **error_hint(exc))
