"""Fresh planner statistics for a young database: ANALYZE the busiest tables as soon as they
outgrow their statistics, instead of waiting for autovacuum.

Every statement of the relay is a prepared statement, and PostgreSQL keeps a *generic* plan of
it, made from the statistics of the moment. Made on a new, near-empty database, that plan scans
whole tables; it is replaced only when the tables are analyzed again, which autovacuum does a
minute or more after a new database's first events. Meanwhile every claim and every completion
reads all of ``deliveries`` (a storm on a fresh install, or a drained backlog, ran several times
slower). So while a table is young (statistics from fewer than ``YOUNG_ROWS`` rows) and has
more than doubled since its statistics, this task analyzes it; the new statistics make
PostgreSQL plan the statements again. Once the tables are grown, autovacuum's own thresholds
keep the statistics in proportion and this task only looks (one catalog query per interval).
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from air_relay.db import repository as repo
from air_relay.delivery.background import BackgroundLoop, log_failed_run

log = structlog.get_logger(__name__)

INTERVAL_SECONDS = 1.0
# Past this many rows at the last ANALYZE, autovacuum's thresholds are left to it.
YOUNG_ROWS = 100_000
# Below this many live rows any plan is cheap.
MIN_ROWS = 1_000
LOCK_TIMEOUT_SECONDS = 1.0
# After a failed run (the database away), the next waits twice as long, up to this.
MAX_RETRY_SECONDS = 60.0


class PlannerStatsTask(BackgroundLoop):
    def __init__(self, pool: asyncpg.Pool, *, interval: float = INTERVAL_SECONDS) -> None:
        super().__init__("air-relay-planner-stats")
        self._pool = pool
        self._interval = interval

    async def _loop(self) -> None:
        wait = self._interval
        while True:
            await asyncio.sleep(wait)
            try:
                await self.run_once()
                wait = self._interval
            except repo.MayNotAnalyze:
                # Another role owns the tables: ANALYZE would only skip them. Autovacuum alone.
                log.warning("planner_stats_skipped", reason="the database user may not ANALYZE")
                return
            except Exception as exc:
                wait = min(wait * 2, MAX_RETRY_SECONDS)
                log_failed_run("planner_stats_failed", exc, wait)

    async def run_once(self) -> list[str]:
        """Analyze the tables that need it; returns their names."""
        names = await repo.tables_to_analyze(self._pool, young_rows=YOUNG_ROWS, min_rows=MIN_ROWS)
        for name in names:
            await repo.analyze_table(self._pool, name, lock_timeout_seconds=LOCK_TIMEOUT_SECONDS)
        if names:
            log.info("planner_stats_refreshed", tables=names)
        return names
