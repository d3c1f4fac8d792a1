"""The read side of sink health: each sink's state as its attempts left it, its queue, and
the last hour's counters, for the health API, the status page, ``air-relay status`` and the
per-sink gauges of ``/metrics``.

The state is written by the statement that records completions (``complete_deliveries`` in
``queries.sql``) into ``sink_health`` and ``sink_health_minutes``; the queue is counted from
partial indexes per sink. Reading it costs the same with millions of audit rows as with none.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from air_relay.db.queries import QUERIES
from air_relay.model import FAILING, HEALTHY, IDLE, INACTIVE, SINK_STATES, SinkHealth, iso_time


def _state(active: bool, stored: str | None) -> str:
    if not active:
        return INACTIVE
    return stored or IDLE


def _row(r: asyncpg.Record) -> SinkHealth:
    state = _state(r["active"], r["stored_state"])
    return SinkHealth(
        event_sink_id=r["event_sink_id"],
        tenant_id=r["tenant_id"],
        name=r["name"],
        type=r["type"],
        active=r["active"],
        state=state,
        # "since" dates the current state; an idle or switched-off sink has none to date.
        since=r["since"] if state in (HEALTHY, FAILING) else None,
        last_success_at=r["last_success_at"],
        last_failure_at=r["last_failure_at"],
        last_error=r["last_error"],
        last_status_code=r["last_status_code"],
        consecutive_failures=r["consecutive_failures"] if state == FAILING else 0,
        pending=r["pending"],
        dead=r["dead"],
        oldest_pending_at=r["oldest_pending_at"],
        delivered_last_hour=r["delivered_last_hour"],
        failed_attempts_last_hour=r["failed_attempts_last_hour"],
    )


async def sinks_health(
    conn: asyncpg.Pool | asyncpg.Connection,
    tenant_ids: Sequence[str | uuid.UUID] | None,
    sink_id: uuid.UUID | None = None,
) -> list[SinkHealth]:
    """The health of every sink of ``tenant_ids`` (None: of every tenant, as ``held_tenants``
    gives for a key that holds them all), or of the one sink ``sink_id`` among them; ordered
    by tenant, then as the sink list orders sinks (oldest first). One statement.

    Tenant ids are text, as the API and the ``tenant_id`` columns have them (a UUID given
    here is compared as its text).
    """
    tenants = None if tenant_ids is None else [str(t) for t in tenant_ids]
    rows = await conn.fetch(QUERIES["sinks_health"], tenants, sink_id)
    return [_row(r) for r in rows]


def tenant_totals(rows: Sequence[SinkHealth]) -> dict[str, object]:
    """Totals over ``rows`` (one tenant's sinks, for ``GET /v1/status``): sinks per state, the
    queue, the oldest pending delivery and the last hour's counters. JSON-ready."""
    oldest = min((r.oldest_pending_at for r in rows if r.oldest_pending_at), default=None)
    totals: dict[str, object] = {"sinks": len(rows)}
    totals.update({state: sum(1 for r in rows if r.state == state) for state in SINK_STATES})
    totals.update(
        {
            "pending": sum(r.pending for r in rows),
            "dead": sum(r.dead for r in rows),
            "oldest_pending_at": iso_time(oldest),
            "delivered_last_hour": sum(r.delivered_last_hour for r in rows),
            "failed_attempts_last_hour": sum(r.failed_attempts_last_hour for r in rows),
        }
    )
    return totals


def needs_attention(rows: Sequence[SinkHealth]) -> list[SinkHealth]:
    """The active sinks that are neither healthy nor idle (``air-relay status`` exits 1)."""
    return [r for r in rows if r.state not in (HEALTHY, IDLE, INACTIVE)]


async def prune_sink_health(pool: asyncpg.Pool) -> tuple[int, int]:
    """Drop counters older than the read side needs, and the health of deleted sinks;
    returns (minute rows, sink rows) deleted. Run by retention."""
    row = await pool.fetchrow(QUERIES["prune_sink_health"])
    assert row is not None
    return int(row["minutes"]), int(row["sinks"])
