"""Typed calls for every query in ``queries.sql``; the rest of the code never writes SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from air_relay.db.queries import QUERIES

JsonScalar = int | str


def storable(value: str) -> bool:
    """PostgreSQL text and jsonb take neither NUL nor an unpaired surrogate (JSON allows both)."""
    if "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Sink:
    id: uuid.UUID
    tenant_id: str
    name: str
    description: str
    sink_type: str
    args: dict[str, Any]
    events: list[str] | None
    organization_ids: list[str] | None
    active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Sink:
        return cls(
            id=r["id"],
            tenant_id=r["tenant_id"],
            name=r["name"],
            description=r["description"],
            sink_type=r["sink_type"],
            args=r["args"],
            events=r["events"],
            organization_ids=r["organization_ids"],
            active=r["active"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )


@dataclass(frozen=True)
class SinkFields:
    """What a create or update writes."""

    tenant_id: str
    name: str
    description: str
    sink_type: str
    args: dict[str, Any]
    events: list[str] | None
    organization_ids: list[str] | None
    active: bool


@dataclass(frozen=True)
class ClaimedDelivery:
    id: uuid.UUID
    event_id: uuid.UUID
    event_sink_id: uuid.UUID
    tenant_id: str
    sink_type: str
    attempts: int  # attempts made before this claim
    claims: int  # including this claim
    claim_token: uuid.UUID
    event_name: str
    organization_id: JsonScalar
    body: bytes
    sink_args: dict[str, Any] | None  # None when the sink was deleted since routing
    received_at: datetime  # when ingest committed the event


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    outcome: str  # success | failure
    status_code: int | None
    error: str | None
    response_body: str | None
    duration_ms: int
    next_attempt_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class AuditFilter:
    tenant_id: str
    event_sink_id: uuid.UUID | None = None
    event_name: str | None = None
    status_code: int | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


@dataclass(frozen=True)
class NewEvent:
    event_id: uuid.UUID
    tenant_id: str
    event_name: str
    organization_id: JsonScalar
    body: bytes


async def ingest_events(
    pool: asyncpg.Pool, events: Sequence[NewEvent], *, timeout: float
) -> dict[uuid.UUID, int]:
    """Commit events and their routed deliveries; returns deliveries made per event id."""
    async with pool.acquire(timeout=timeout) as conn:
        rows = await conn.fetch(
            QUERIES["ingest_events"],
            [e.event_id for e in events],
            [e.tenant_id for e in events],
            [e.event_name for e in events],
            [e.organization_id for e in events],
            [str(e.organization_id) for e in events],
            [e.body for e in events],
        )
    return {r["id"]: r["n"] for r in rows}


async def claim_deliveries(
    pool: asyncpg.Pool,
    *,
    sink_types: Sequence[str],
    limit: int,
    lease_seconds: float,
    worker: str,
    skip_sinks: Sequence[uuid.UUID] = (),
) -> list[ClaimedDelivery]:
    rows = await pool.fetch(
        QUERIES["claim_deliveries"],
        list(sink_types),
        limit,
        lease_seconds,
        worker,
        list(skip_sinks),
    )
    return [
        ClaimedDelivery(
            id=r["id"],
            event_id=r["event_id"],
            event_sink_id=r["event_sink_id"],
            tenant_id=r["tenant_id"],
            sink_type=r["sink_type"],
            attempts=r["attempts"],
            claims=r["claims"],
            claim_token=r["claim_token"],
            event_name=r["event_name"],
            organization_id=r["organization_id"],
            body=r["body"],
            sink_args=r["sink_args"] if r["sink_exists"] else None,
            received_at=r["received_at"],
        )
        for r in rows
    ]


async def complete_delivery(
    pool: asyncpg.Pool,
    delivery: ClaimedDelivery,
    *,
    status: str,
    next_attempt_at: datetime | None,
    last_error: str | None,
    attempts: Sequence[AttemptRecord],
) -> bool:
    """Write the claim's attempts and the new state; False if the lease had been lost."""
    row = await pool.fetchrow(
        QUERIES["complete_delivery"],
        delivery.id,
        delivery.claim_token,
        status,
        next_attempt_at,
        last_error,
        [a.attempt for a in attempts],
        delivery.tenant_id,
        delivery.event_id,
        delivery.event_name,
        delivery.organization_id,
        delivery.event_sink_id,
        delivery.sink_type,
        [a.outcome for a in attempts],
        [a.status_code for a in attempts],
        [a.error for a in attempts],
        [a.response_body for a in attempts],
        [a.duration_ms for a in attempts],
        [a.next_attempt_at for a in attempts],
        [a.created_at for a in attempts],
    )
    assert row is not None
    return bool(row["updated"])


async def renew_lease(pool: asyncpg.Pool, delivery: ClaimedDelivery, lease_seconds: float) -> bool:
    row = await pool.fetchrow(
        QUERIES["renew_lease"], delivery.id, delivery.claim_token, lease_seconds
    )
    return row is not None


async def wake_sink_backlog(
    pool: asyncpg.Pool, sink_id: uuid.UUID, recovered_delivery_id: uuid.UUID
) -> int:
    """Make a recovered sink's backlog due now, in order of arrival; returns how many.

    ``recovered_delivery_id`` has just succeeded after failing: rows that failed no later
    than its last failure are woken; rows that failed since keep their backoff.
    """
    result: str = await pool.execute(QUERIES["wake_sink_backlog"], sink_id, recovered_delivery_id)
    return int(result.split()[-1])


async def defer_delivery(pool: asyncpg.Pool, delivery: ClaimedDelivery, seconds: float) -> bool:
    """Requeue an unsent claim, due in ``seconds``; False if the claim was no longer ours."""
    row = await pool.fetchrow(QUERIES["defer_delivery"], delivery.id, delivery.claim_token, seconds)
    return row is not None


async def release_deliveries(pool: asyncpg.Pool, claim_tokens: Sequence[uuid.UUID]) -> int:
    if not claim_tokens:
        return 0
    result: str = await pool.execute(QUERIES["release_deliveries"], list(claim_tokens))
    return int(result.split()[-1])


async def insert_sink(pool: asyncpg.Pool, sink_id: uuid.UUID, f: SinkFields) -> Sink:
    row = await pool.fetchrow(
        QUERIES["insert_sink"],
        sink_id,
        f.tenant_id,
        f.name,
        f.description,
        f.sink_type,
        f.args,
        f.events,
        f.organization_ids,
        f.active,
    )
    assert row is not None
    return Sink.from_record(row)


async def list_sinks(pool: asyncpg.Pool, tenant_id: str) -> list[Sink]:
    return [Sink.from_record(r) for r in await pool.fetch(QUERIES["list_sinks"], tenant_id)]


async def get_sink(pool: asyncpg.Pool, sink_id: uuid.UUID) -> Sink | None:
    row = await pool.fetchrow(QUERIES["get_sink"], sink_id)
    return Sink.from_record(row) if row else None


async def update_sink(pool: asyncpg.Pool, sink_id: uuid.UUID, f: SinkFields) -> Sink | None:
    row = await pool.fetchrow(
        QUERIES["update_sink"],
        sink_id,
        f.name,
        f.description,
        f.sink_type,
        f.args,
        f.events,
        f.organization_ids,
        f.active,
    )
    return Sink.from_record(row) if row else None


async def delete_sink(pool: asyncpg.Pool, sink_id: uuid.UUID) -> bool:
    row = await pool.fetchrow(QUERIES["delete_sink"], sink_id)
    return row is not None


async def audit_log_page(pool: asyncpg.Pool, f: AuditFilter) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        QUERIES["audit_log_page"],
        f.tenant_id,
        f.event_sink_id,
        f.event_name,
        f.status_code,
        f.outcome,
        f.since,
        f.until,
        f.before_id,
        f.limit,
    )
    return rows


async def pending_stats(pool: asyncpg.Pool) -> tuple[int, float]:
    row = await pool.fetchrow(QUERIES["pending_stats"])
    assert row is not None
    return int(row["pending"]), float(row["oldest_age_seconds"])


# --- dead letters, retry, replay, retention ------------------------------------------------

# What a replay may requeue: finished deliveries only (a pending one is already queued).
REPLAYABLE_STATUSES = ("delivered", "dead")


@dataclass(frozen=True)
class DeliveryFilter:
    tenant_id: str
    status: str | None = None
    event_sink_id: uuid.UUID | None = None
    event_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    # Keyset position: the (created_at, id) of the last row of the previous page.
    before: tuple[datetime, uuid.UUID] | None = None
    limit: int = 100


async def delivery_page(pool: asyncpg.Pool, f: DeliveryFilter) -> list[asyncpg.Record]:
    before_at, before_id = f.before if f.before else (None, None)
    rows: list[asyncpg.Record] = await pool.fetch(
        QUERIES["delivery_page"],
        f.tenant_id,
        f.status,
        f.event_sink_id,
        f.event_name,
        f.since,
        f.until,
        before_at,
        before_id,
        f.limit,
    )
    return rows


@dataclass(frozen=True)
class RetryResult:
    previous_status: str
    delivery: asyncpg.Record | None  # the requeued delivery; None when it was not dead


async def retry_delivery(
    pool: asyncpg.Pool, delivery_id: uuid.UUID, *, tenant_ids: Sequence[str] | None, actor: str
) -> RetryResult | None:
    """Requeue a dead delivery (and record who did); None when no visible delivery has that id.

    ``tenant_ids`` limits what is visible (None = every tenant).
    """
    row = await pool.fetchrow(
        QUERIES["retry_delivery"],
        delivery_id,
        list(tenant_ids) if tenant_ids is not None else None,
        actor,
    )
    if row is None:
        return None
    return RetryResult(row["previous_status"], row if row["id"] is not None else None)


@dataclass(frozen=True)
class Replay:
    tenant_id: str
    event_sink_id: uuid.UUID
    statuses: Sequence[str]  # a subset of REPLAYABLE_STATUSES
    since: datetime
    until: datetime
    actor: str
    params: dict[str, Any]  # what the operator asked for, as recorded


async def replay_sink(pool: asyncpg.Pool, r: Replay) -> int:
    """Requeue the sink's finished deliveries in the window; returns how many."""
    row = await pool.fetchrow(
        QUERIES["replay_sink"],
        r.tenant_id,
        r.event_sink_id,
        list(r.statuses),
        r.since,
        r.until,
        r.actor,
        r.params,
    )
    assert row is not None
    return int(row["affected"])


async def retention_cutoff(pool: asyncpg.Pool, days: float) -> datetime:
    cutoff: datetime = await pool.fetchval(QUERIES["retention_cutoff"], days * 86400.0)
    return cutoff


async def purge_deliveries(pool: asyncpg.Pool, cutoff: datetime, limit: int) -> int:
    """Delete one batch of finished deliveries (and their attempts) older than ``cutoff``."""
    result: str = await pool.execute(QUERIES["purge_deliveries"], cutoff, limit)
    return int(result.split()[-1])


async def purge_events(pool: asyncpg.Pool, cutoff: datetime, limit: int) -> int:
    """Delete one batch of events older than ``cutoff`` that have no deliveries left."""
    result: str = await pool.execute(QUERIES["purge_events"], cutoff, limit)
    return int(result.split()[-1])
