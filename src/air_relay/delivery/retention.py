"""Retention: finished deliveries (delivered or dead) and then their events are purged
``retention.days`` after they finished, and the audit log (the attempts) by whole sealed
batches ``retention.days`` after they were sealed, in small batches, by a background task.

Pending deliveries, and the events they need, are never purged; nor is an audit row that is
not sealed yet, nor part of a sealed batch (``delivery/sealing.py``), nor the newest seal.
Each batch is one short statement that skips rows someone else holds (SKIP LOCKED), with a
pause between batches, so the purge never blocks delivery and delivery traffic interleaves
with it (a sealed batch is one statement too, and waits for a second instance's). A database
error ends that run only: it is logged and the next interval tries again. Each run also
drops the sink-health counters older than the hour they serve, and the health of deleted sinks
(``db/health.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from air_relay.config import RetentionConfig
from air_relay.db import digests
from air_relay.db import repository as repo
from air_relay.db.health import prune_sink_health
from air_relay.delivery.background import BackgroundLoop, log_failed_run

log = structlog.get_logger(__name__)

# The first run waits this long (or one interval, if shorter), so start-up is not slowed.
FIRST_RUN_DELAY_SECONDS = 10.0
# The pause between two batches of one run, in which delivery traffic gets the database.
BATCH_PAUSE_SECONDS = 0.05

Purge = Callable[[asyncpg.Pool, datetime, int], Awaitable[int]]


@dataclass(frozen=True)
class PurgeCounts:
    deliveries: int
    events: int
    batches: int  # statements run, so an operator sees the purge was split as configured
    audit_seals: int = 0  # sealed batches of the audit log purged
    audit_rows: int = 0  # the audit rows they covered
    digest_windows: int = 0  # storm digest windows that held nothing or whose digest is gone


class RetentionTask(BackgroundLoop):
    def __init__(
        self,
        pool: asyncpg.Pool,
        cfg: RetentionConfig,
        *,
        batch_pause: float = BATCH_PAUSE_SECONDS,
    ) -> None:
        super().__init__("air-relay-retention")
        self._pool = pool
        self._cfg = cfg
        self._batch_pause = batch_pause

    async def _loop(self) -> None:
        await asyncio.sleep(min(FIRST_RUN_DELAY_SECONDS, self._cfg.interval_seconds))
        while True:
            await self.run_logged()
            await asyncio.sleep(self._cfg.interval_seconds)

    async def run_logged(self) -> PurgeCounts | None:
        """One run, logged; None when the database failed (the next interval tries again)."""
        started = time.monotonic()
        try:
            counts = await self.run_once()
        except Exception as exc:
            log_failed_run("retention_failed", exc, self._cfg.interval_seconds)
            return None
        log.info(
            "retention_purged",
            deliveries=counts.deliveries,
            events=counts.events,
            batches=counts.batches,
            audit_seals=counts.audit_seals,
            audit_rows=counts.audit_rows,
            digest_windows=counts.digest_windows,
            duration_ms=round((time.monotonic() - started) * 1000),
            retention_days=self._cfg.days,
        )
        return counts

    async def run_once(self) -> PurgeCounts:
        cutoff = await repo.retention_cutoff(self._pool, self._cfg.days)
        # Deliveries first: an event goes only once none of its deliveries is left.
        deliveries, delivery_batches = await self._purge(repo.purge_deliveries, cutoff)
        events, event_batches = await self._purge(repo.purge_events, cutoff)
        seals, rows, seal_batches = await self._purge_seals(cutoff)
        windows, window_batches = await self._purge(digests.purge_windows, cutoff)
        # The health counters keep an hour (not retention.days): one small statement.
        await prune_sink_health(self._pool)
        batches = delivery_batches + event_batches + seal_batches + window_batches
        return PurgeCounts(deliveries, events, batches, seals, rows, windows)

    async def _purge_seals(self, cutoff: datetime) -> tuple[int, int, int]:
        """Sealed batches of the audit log, oldest first, one per statement (a batch goes
        whole); returns (seals, rows, statements)."""
        seals = rows = batches = 0
        while True:
            purged, purged_rows = await repo.purge_audit_seal(self._pool, cutoff)
            batches += 1
            if not purged:
                return seals, rows, batches
            seals += purged
            rows += purged_rows
            await asyncio.sleep(self._batch_pause)

    async def _purge(self, purge: Purge, cutoff: datetime) -> tuple[int, int]:
        """Batches until one comes back short; returns (rows deleted, batches run)."""
        total = batches = 0
        while True:
            deleted = await purge(self._pool, cutoff, self._cfg.batch_size)
            total += deleted
            batches += 1
            # A short batch means nothing purgeable and unlocked was left.
            if deleted < self._cfg.batch_size:
                return total, batches
            await asyncio.sleep(self._batch_pause)
