"""Typed calls for the storm digest statements of ``queries.sql`` (the ``digest_*`` blocks):
routing a claimed delivery into a window, sealing a window when its digest is claimed, and
writing a digest's completion together with its members'.

Routing and sealing take the pair's advisory lock (``digest_lock``) for their transaction, so
a delivery never joins a window that is being sealed: a window's members are fixed once its
digest is first claimed, and no member goes out in two digests.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from air_relay.db.queries import QUERIES
from air_relay.db.repository import complete_deliveries, storable
from air_relay.model import DEAD, ClaimedDelivery, Completion, Digest, DigestMember


class Route(Enum):
    """What routing decided for a claimed delivery of a digest sink."""

    SEND = "send"  # the first of its pair in a while (or its window's opener): sent now
    HELD = "held"  # joined an open window: goes out in its digest
    LOST = "lost"  # the claim was no longer ours: nothing to do


async def _lock(conn: PoolConnectionProxy[asyncpg.Record], d: ClaimedDelivery) -> None:
    await conn.execute(
        QUERIES["digest_lock"], str(d.event_sink_id), d.event_name, str(d.organization_id)
    )


async def route(
    pool: asyncpg.Pool, d: ClaimedDelivery, window_seconds: int, max_listed: int
) -> Route:
    """Route a claimed delivery of a digest sink: into the open window of its pair (held,
    or as the window's carrier), or out at once, opening a window."""
    org = str(d.organization_id)
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, d)
        window = await conn.fetchrow(
            QUERIES["digest_open_window"],
            d.event_sink_id,
            d.event_name,
            org,
            d.received_at,
            float(window_seconds),
            d.id,
        )
        assert window is not None
        if window["opened"]:
            return Route.SEND
        if window["id"] is None:
            await conn.execute(
                QUERIES["digest_open"],
                d.event_sink_id,
                d.tenant_id,
                d.event_name,
                org,
                d.organization_id,
                window_seconds,
                max_listed,
                d.received_at,
                d.id,
            )
            return Route.SEND
        row = await conn.fetchrow(
            QUERIES["digest_hold"],
            d.id,
            d.claim_token,
            window["id"],
            window["closes_at"],
            window["carrier_id"] is None,
        )
    assert row is not None
    return Route.HELD if row["held"] else Route.LOST


async def seal(pool: asyncpg.Pool, d: ClaimedDelivery) -> Digest | None:
    """The digest that claimed delivery ``d`` carries, its window sealed (its members fixed);
    None when ``d`` is not its window's carrier (then it is sent on its own)."""
    assert d.digest_id is not None
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, d)
        w = await conn.fetchrow(QUERIES["digest_seal"], d.digest_id, d.id)
        if w is None:
            return None
        rows = await conn.fetch(QUERIES["digest_members"], d.digest_id, w["max_listed"])
    return Digest(
        id=w["id"],
        event_name=w["event_name"],
        organization_id=w["organization_id"],
        count=w["member_count"],
        window_seconds=w["window_seconds"],
        window_start=w["opened_at"],
        window_end=w["closes_at"],
        listed=[DigestMember(r["event_id"], r["body"], r["received_at"]) for r in rows],
    )


async def complete(pool: asyncpg.Pool, completion: Completion) -> tuple[bool, int]:
    """A digest carrier's completion and, in the same transaction, its held members': they
    end as it ends (delivered or dead, with its attempts), or stay held while it retries;
    dead, each fails over to the sink's fallback as the carrier did. Returns (whether the
    carrier's state was kept, members finished)."""
    d = completion.delivery
    assert d.digest_id is not None
    async with pool.acquire() as conn, conn.transaction():
        kept = await complete_deliveries(cast(asyncpg.Connection, conn), [completion])
        if (d.id, d.claim_token) not in kept:
            return False, 0
        finished = await conn.fetchval(
            QUERIES["digest_finish_members"],
            d.digest_id,
            completion.status,
            d.attempts + len(completion.attempts),
            storable(completion.last_error),  # as complete_deliveries writes the carrier's
            completion.next_attempt_at,
        )
        if completion.status == DEAD:
            # The failover complete_deliveries gave the carrier, for every member too.
            await conn.execute(QUERIES["digest_fail_over_members"], d.digest_id)
    return True, int(finished)


async def purge_windows(pool: asyncpg.Pool, cutoff: datetime, limit: int) -> int:
    """Delete one batch of windows that closed before ``cutoff`` and held nothing, or whose
    digest is gone (its carrier delivery and the carrier's audit rows purged)."""
    status = await pool.execute(QUERIES["purge_digest_windows"], cutoff, limit)
    return int(status.split()[-1])
