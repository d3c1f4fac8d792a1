"""Typed calls for the outbox queries of ``queries.sql``: model records in, model records out.

Nothing above the database layer sees SQL or an ``asyncpg.Record``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from air_relay.db.notify import NOTIFY_CHANNEL
from air_relay.db.queries import QUERIES
from air_relay.model import (
    AuditBatch,
    AuditEntry,
    AuditFilter,
    AuditSeal,
    BulkAction,
    BulkResult,
    ClaimedDelivery,
    Completion,
    DeliveryDetail,
    DeliveryEntry,
    DeliveryFilter,
    NewEvent,
    Replay,
    RetryResult,
    Sink,
    SinkFields,
    SpooledEvent,
    StoredAttempt,
)

R = TypeVar("R")

# Advisory-lock keys (arbitrary, fixed; beside migrate.MIGRATION_LOCK_KEY). Attempt rows are
# inserted holding AUDIT_WRITE_LOCK_KEY shared; the sealer takes it exclusively for a moment
# to learn its horizon. AUDIT_SEALER_LOCK_KEY: one instance at a time inserts a seal.
AUDIT_WRITE_LOCK_KEY = 0x6169722D61756477  # "air-audw"
AUDIT_SEALER_LOCK_KEY = 0x6169722D7365616C  # "air-seal"


def _as(record_type: type[R], r: asyncpg.Record) -> R:
    """A model record from a row whose columns are named like its fields (extra ones ignored;
    a field with a default may be missing from the row)."""
    fields = dataclasses.fields(record_type)  # type: ignore[arg-type]
    return record_type(
        **{f.name: r[f.name] for f in fields if f.name in r or f.default is dataclasses.MISSING}
    )


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``UPDATE 3``."""
    return int(status.split()[-1])


# --- ingest and delivery ---------------------------------------------------------------------


def _event_columns(events: Sequence[NewEvent]) -> list[list[Any]]:
    """The events as the ingest statements' column arrays ($1-$6)."""
    return [
        [e.event_id for e in events],
        [e.tenant_id for e in events],
        [e.event_name for e in events],
        [e.organization_id for e in events],
        [str(e.organization_id) for e in events],
        [e.body for e in events],
    ]


def _order_key_columns(events: Sequence[NewEvent]) -> list[list[str | None]]:
    """The events' case, endpoint and task keys as three column arrays (sink ``ordering``)."""
    return [[e.order_keys[k] for e in events] for k in range(3)]


async def ingest_events(
    pool: asyncpg.Pool, events: Sequence[NewEvent], *, timeout: float
) -> dict[uuid.UUID, int]:
    """Commit events and their routed deliveries; returns deliveries made per event id."""
    async with pool.acquire(timeout=timeout) as conn:
        rows = await conn.fetch(
            QUERIES["ingest_events"],
            *_event_columns(events),
            NOTIFY_CHANNEL,
            *_order_key_columns(events),
        )
    return {r["id"]: r["n"] for r in rows}


async def ingest_spooled_events(
    pool: asyncpg.Pool, spooled: Sequence[SpooledEvent], *, timeout: float
) -> tuple[int, int]:
    """Commit spooled events (idempotent by event id) with their arrival times, routing only
    those not already stored; returns (events inserted, deliveries made)."""
    events = [s.event for s in spooled]
    async with pool.acquire(timeout=timeout) as conn:
        row = await conn.fetchrow(
            QUERIES["ingest_spooled_events"],
            *_event_columns(events),
            [s.received_at for s in spooled],
            NOTIFY_CHANNEL,
            *_order_key_columns(events),
        )
    assert row is not None
    return row["inserted"], row["routed"]


async def claim_deliveries(
    pool: asyncpg.Pool,
    *,
    sink_types: Sequence[str],
    limit: int,
    lease_seconds: float,
    worker: str,
    per_sink: int | None = None,
    running: Mapping[uuid.UUID, int] | None = None,
    held: Collection[uuid.UUID] = (),
    spill_barred: Collection[uuid.UUID] | None = None,
    spill_limit: int | None = None,
) -> list[ClaimedDelivery]:
    """Claim up to ``limit`` due deliveries, oldest first, at most ``per_sink`` (default
    ``limit``) per sink less what ``running`` says the sink already holds; never one of
    ``held`` (the deliveries the caller still runs, whatever their lease says). With
    ``spill_barred`` (a collection, maybe empty), what that leaves of ``limit`` (at most
    ``spill_limit`` of it) goes to sinks with more due, except those named in it."""
    running = running or {}
    rows = await pool.fetch(
        QUERIES["claim_deliveries"],
        list(sink_types),
        limit,
        lease_seconds,
        worker,
        list(running),
        limit if per_sink is None else per_sink,
        list(running.values()),
        list(held),
        spill_barred is not None,
        list(spill_barred or ()),
        limit if spill_limit is None else spill_limit,
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
            sink_args=r["sink_args"],
            received_at=r["received_at"],
            digest_id=r["digest_id"],
            sink_digest=r["sink_digest"],
        )
        for r in rows
    ]


def storable(text: str | None) -> str | None:
    """Text from a sink (a response body, an error it named) as PostgreSQL text takes it: no
    NUL, no unpaired surrogate. One such character must not fail a whole batch of
    completions."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


async def complete_deliveries(
    conn: asyncpg.Pool | asyncpg.Connection, completions: Sequence[Completion]
) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """Write the claims' attempts and new states in one statement (on a pool, or on a
    connection inside the caller's transaction); returns the (delivery id, claim token) of
    the claims whose state was kept (the others had lost their lease).

    The commit does not wait for its WAL flush (``synchronous_commit = off``): a completion
    lost in a crash of PostgreSQL leaves its delivery claimed, so the lease lapses and it is
    sent again. At least once holds; ingest commits stay fully durable.
    """
    attempts = [(i, a) for i, c in enumerate(completions, 1) for a in c.attempts]
    rows = await conn.fetch(
        QUERIES["complete_deliveries"],
        [c.delivery.id for c in completions],
        [c.delivery.claim_token for c in completions],
        [c.status for c in completions],
        [c.next_attempt_at for c in completions],
        [storable(c.last_error) for c in completions],
        [len(c.attempts) for c in completions],
        [c.delivery.tenant_id for c in completions],
        [c.delivery.event_id for c in completions],
        [c.delivery.event_name for c in completions],
        [json.dumps(c.delivery.organization_id) for c in completions],
        [c.delivery.event_sink_id for c in completions],
        [c.delivery.sink_type for c in completions],
        [i for i, _ in attempts],
        [a.attempt for _, a in attempts],
        [a.outcome for _, a in attempts],
        [a.status_code for _, a in attempts],
        [storable(a.error) for _, a in attempts],
        [storable(a.response_body) for _, a in attempts],
        [a.duration_ms for _, a in attempts],
        [a.next_attempt_at for _, a in attempts],
        [a.created_at for _, a in attempts],
        AUDIT_WRITE_LOCK_KEY,
        [storable(a.error_detail) for _, a in attempts],
    )
    return {(r["id"], r["claim_token"]) for r in rows}


async def renew_leases(
    pool: asyncpg.Pool, deliveries: Sequence[ClaimedDelivery], lease_seconds: float
) -> set[uuid.UUID]:
    """Extend the claims' leases; returns the ids of the deliveries still held."""
    rows = await pool.fetch(
        QUERIES["renew_leases"],
        [d.id for d in deliveries],
        [d.claim_token for d in deliveries],
        lease_seconds,
    )
    return {r["id"] for r in rows}


async def wake_sink_backlog(
    pool: asyncpg.Pool, sink_id: uuid.UUID, recovered_at: datetime, *, limit: int
) -> int:
    """Make the oldest ``limit`` of a recovered sink's backlog due now, in order of arrival;
    returns how many (``limit``: more may be left).

    ``recovered_at``: when the attempt that succeeded after failures began. Rows whose last
    claim ended before then are woken; rows that failed since keep their backoff.
    """
    return _count(await pool.execute(QUERIES["wake_sink_backlog"], sink_id, recovered_at, limit))


async def defer_delivery(pool: asyncpg.Pool, delivery: ClaimedDelivery, seconds: float) -> bool:
    """Requeue an unsent claim, due in ``seconds``; False if the claim was no longer ours."""
    row = await pool.fetchrow(QUERIES["defer_delivery"], delivery.id, delivery.claim_token, seconds)
    return row is not None


async def release_deliveries(pool: asyncpg.Pool, claim_tokens: Sequence[uuid.UUID]) -> int:
    if not claim_tokens:
        return 0
    return _count(await pool.execute(QUERIES["release_deliveries"], list(claim_tokens)))


async def pending_stats(pool: asyncpg.Pool) -> tuple[int, float]:
    """Pending deliveries and the age in seconds of the oldest."""
    row = await pool.fetchrow(QUERIES["pending_stats"])
    assert row is not None
    return int(row["pending"]), float(row["oldest_age_seconds"])


# --- sinks -----------------------------------------------------------------------------------


async def insert_sink(
    pool: asyncpg.Pool, sink_id: uuid.UUID, f: SinkFields, max_per_tenant: int
) -> Sink | None:
    """The new sink, or None when its tenant already has ``max_per_tenant`` sinks."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["lock_tenant_sinks"], f.tenant_id)
        if await conn.fetchval(QUERIES["count_sinks"], f.tenant_id) >= max_per_tenant:
            return None
        row = await conn.fetchrow(
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
            f.ordering,
            f.fallback_event_sink_id,
            f.digest,
        )
    assert row is not None
    return _as(Sink, row)


async def list_sinks(
    pool: asyncpg.Pool,
    tenant_id: str,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[Sink]:
    """Up to ``limit`` sinks of the tenant, oldest first, after the keyset ``after``."""
    after_at, after_id = after or (None, None)
    rows = await pool.fetch(QUERIES["list_sinks"], tenant_id, after_at, after_id, limit)
    return [_as(Sink, r) for r in rows]


async def get_sink(pool: asyncpg.Pool, sink_id: uuid.UUID) -> Sink | None:
    row = await pool.fetchrow(QUERIES["get_sink"], sink_id)
    return _as(Sink, row) if row else None


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
        f.ordering,
        f.fallback_event_sink_id,
        f.digest,
    )
    return _as(Sink, row) if row else None


async def delete_sink(pool: asyncpg.Pool, sink_id: uuid.UUID) -> bool:
    row = await pool.fetchrow(QUERIES["delete_sink"], sink_id)
    return row is not None


async def fallback_dependents(
    pool: asyncpg.Pool, sink_id: uuid.UUID
) -> list[tuple[uuid.UUID, str]]:
    """(id, name) of the sinks naming ``sink_id`` as their fallback."""
    rows = await pool.fetch(QUERIES["fallback_dependents"], sink_id)
    return [(r["id"], r["name"]) for r in rows]


async def delete_sink_unless_fallback(
    pool: asyncpg.Pool, sink_id: uuid.UUID
) -> tuple[bool, list[tuple[uuid.UUID, str]]]:
    """Delete the sink unless another names it as fallback: (deleted, the dependants).

    The foreign key decides, so a dependant added at the same moment is seen as well.
    """
    try:
        return await delete_sink(pool, sink_id), []
    except asyncpg.ForeignKeyViolationError:
        return False, await fallback_dependents(pool, sink_id)


async def fallback_chain(
    pool: asyncpg.Pool, sink_id: uuid.UUID, limit: int
) -> list[tuple[uuid.UUID, str]]:
    """(id, tenant) of ``sink_id`` and the sinks its failover reaches, in order, at most
    ``limit``; [] when there is no such sink."""
    rows = await pool.fetch(QUERIES["fallback_chain"], sink_id, limit)
    return [(r["id"], r["tenant_id"]) for r in rows]


# --- audit log, dead letters, retry, replay --------------------------------------------------


async def audit_log_page(pool: asyncpg.Pool, f: AuditFilter) -> list[AuditEntry]:
    rows = await pool.fetch(
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
    return [_as(AuditEntry, r) for r in rows]


async def delivery_page(pool: asyncpg.Pool, f: DeliveryFilter) -> list[DeliveryEntry]:
    before_at, before_id = f.before if f.before else (None, None)
    rows = await pool.fetch(
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
    return [_as(DeliveryEntry, r) for r in rows]


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
        NOTIFY_CHANNEL,
    )
    if row is None:
        return None
    requeued = _as(DeliveryEntry, row) if row["id"] is not None else None
    return RetryResult(row["previous_status"], requeued, row["sink_exists"])


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
        NOTIFY_CHANNEL,
    )
    assert row is not None
    return int(row["affected"])


async def delivery_detail(
    pool: asyncpg.Pool,
    delivery_id: uuid.UUID,
    *,
    tenant_ids: Sequence[str] | None,
    max_attempts: int,
) -> DeliveryDetail | None:
    """A delivery with its event and its newest ``max_attempts`` attempts; None when no
    delivery visible to ``tenant_ids`` (None = every tenant) has that id."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            QUERIES["delivery_detail"],
            delivery_id,
            list(tenant_ids) if tenant_ids is not None else None,
        )
        if row is None:
            return None
        attempts = await conn.fetch(QUERIES["delivery_attempts"], delivery_id, max_attempts + 1)
    return DeliveryDetail(
        delivery=_as(DeliveryEntry, row),
        body=bytes(row["body"]),
        received_at=row["received_at"],
        sink_exists=row["sink_exists"],
        attempts=[_as(AuditEntry, a) for a in attempts[:max_attempts]],
        more_attempts=len(attempts) > max_attempts,
    )


async def _bulk(pool: asyncpg.Pool, query: str, a: BulkAction, *extra: Any) -> BulkResult:
    row = await pool.fetchrow(
        QUERIES[query],
        a.tenant_id,
        a.event_sink_id,
        a.event_name,
        a.since,
        a.until,
        a.limit,
        a.actor,
        a.params,
        *extra,
    )
    assert row is not None
    return BulkResult(int(row["affected"]), bool(row["more"]), int(row["sink_deleted"]))


async def retry_deliveries(pool: asyncpg.Pool, a: BulkAction) -> BulkResult:
    """Requeue up to ``a.limit`` matching dead deliveries whose sink exists (and record it)."""
    return await _bulk(pool, "retry_deliveries", a, NOTIFY_CHANNEL)


async def dismiss_deliveries(pool: asyncpg.Pool, a: BulkAction) -> BulkResult:
    """Dismiss up to ``a.limit`` matching dead deliveries (and record it)."""
    return await _bulk(pool, "dismiss_deliveries", a)


# --- retention -------------------------------------------------------------------------------


async def retention_cutoff(pool: asyncpg.Pool, days: float) -> datetime:
    cutoff: datetime = await pool.fetchval(QUERIES["retention_cutoff"], days * 86400.0)
    return cutoff


async def purge_deliveries(pool: asyncpg.Pool, cutoff: datetime, limit: int) -> int:
    """Delete one batch of finished deliveries (and their attempts) older than ``cutoff``."""
    return _count(await pool.execute(QUERIES["purge_deliveries"], cutoff, limit))


async def purge_events(pool: asyncpg.Pool, cutoff: datetime, limit: int) -> int:
    """Delete one batch of events older than ``cutoff`` that have no deliveries left."""
    return _count(await pool.execute(QUERIES["purge_events"], cutoff, limit))


async def purge_audit_seal(pool: asyncpg.Pool, cutoff: datetime) -> tuple[int, int]:
    """Delete the oldest seal made before ``cutoff`` (never the newest) and every audit row it
    covers; returns (seals, rows) deleted: (0, 0) when none is due."""
    row = await pool.fetchrow(QUERIES["purge_audit_seal"], cutoff)
    assert row is not None
    return int(row["seals"]), int(row["rows"])


# --- planner statistics ------------------------------------------------------------------

# The busiest tables, the only ones analyze_table runs ANALYZE on (it takes no parameter).
ANALYZABLE = ("deliveries", "delivery_attempts", "events")


class MayNotAnalyze(Exception):
    """The database user does not own the relay's tables, so ANALYZE would skip them."""


async def tables_to_analyze(pool: asyncpg.Pool, *, young_rows: int, min_rows: int) -> list[str]:
    """The hot tables whose planner statistics lag far behind them while they are young;
    MayNotAnalyze when one of them belongs to another role."""
    rows = await pool.fetch(QUERIES["tables_to_analyze"], young_rows, min_rows, list(ANALYZABLE))
    if not all(r["may_analyze"] for r in rows):
        raise MayNotAnalyze
    return [r["name"] for r in rows]


async def analyze_table(pool: asyncpg.Pool, name: str, *, lock_timeout_seconds: float) -> None:
    """ANALYZE one of ANALYZABLE; gives up rather than wait long for a lock (a VACUUM)."""
    if name not in ANALYZABLE:
        raise ValueError(f"not a table to analyze: {name}")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["set_lock_timeout"], f"{int(lock_timeout_seconds * 1000)}ms")
        await conn.execute(f"ANALYZE {name}")


# --- the audit seals ---------------------------------------------------------------------


class SealerBusy(Exception):
    """Another instance is sealing right now (or sealed the rows first)."""


async def try_audit_horizon(pool: asyncpg.Pool) -> int | None:
    """The sealer's horizon (every audit row up to it has committed), or None when a delivery
    is recording attempts at this very moment (try again shortly)."""
    horizon: int | None = await pool.fetchval(QUERIES["audit_seal_horizon"], AUDIT_WRITE_LOCK_KEY)
    return horizon


async def wait_audit_horizon(pool: asyncpg.Pool, lock_timeout_seconds: float) -> int:
    """The horizon, waiting up to ``lock_timeout_seconds`` for the audit-write lock (raises
    asyncpg's LockNotAvailableError after that)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["set_lock_timeout"], f"{round(lock_timeout_seconds * 1000)}ms")
        horizon: int = await conn.fetchval(QUERIES["audit_seal_horizon_wait"], AUDIT_WRITE_LOCK_KEY)
    return horizon


async def latest_audit_seal(pool: asyncpg.Pool) -> AuditSeal | None:
    row = await pool.fetchrow(QUERIES["latest_audit_seal"])
    return _as(AuditSeal, row) if row else None


SealBuilder = Callable[
    [AuditSeal | None, datetime, AuditBatch, AsyncIterator[list[StoredAttempt]]],
    Awaitable[AuditSeal],
]


_STORED_ATTEMPT_FIELDS = [f.name for f in dataclasses.fields(StoredAttempt)]


def _stored_attempts(rows: list[asyncpg.Record]) -> list[StoredAttempt]:
    """Audit rows as the seals hash them. By position: the query selects the columns in the
    order of the fields (checked), a third of the time of ``_as`` for thousands of rows."""
    if list(rows[0].keys()) != _STORED_ATTEMPT_FIELDS:
        raise AssertionError("audit_rows_to_seal must select StoredAttempt's fields in order")
    return [StoredAttempt(*r) for r in rows]


async def audit_pages(
    pool: asyncpg.Pool, batch: AuditBatch, page_rows: int
) -> AsyncIterator[list[StoredAttempt]]:
    """The batch's rows in id order, ``page_rows`` at a time: reading (and decoding) a whole
    batch of thousands of rows in one go held the event loop for tens of milliseconds, and
    kept them all alive until the seal was made."""
    next_id = batch.first_id
    while next_id <= batch.last_id:
        rows = await pool.fetch(QUERIES["audit_rows_to_seal"], next_id, batch.last_id, page_rows)
        if not rows:
            return
        page = _stored_attempts(rows)
        yield page
        next_id = page[-1].id + 1


async def seal_next_batch(
    pool: asyncpg.Pool, *, horizon: int, max_rows: int, page_rows: int, build: SealBuilder
) -> AuditSeal | None:
    """Seal the next batch of audit rows up to ``horizon`` (at most ``max_rows``): ``build``
    makes the seal from the previous one, the time, the batch and its rows (read in pages).

    The rows are read and hashed outside any transaction (hashing is paced and takes a while:
    no connection waits idle in a transaction meanwhile); the seal is then inserted in one
    short transaction under the sealer lock, only if it still follows the newest seal. None
    when nothing up to the horizon is left to seal; SealerBusy when another instance holds the
    sealer lock or sealed these rows first.
    """
    async with pool.acquire() as conn:
        latest = await conn.fetchrow(QUERIES["latest_audit_seal"])
        previous = _as(AuditSeal, latest) if latest else None
        first_id = previous.last_id + 1 if previous else 1
        if first_id > horizon:
            return None
        span = await conn.fetchrow(QUERIES["audit_batch_span"], first_id, horizon, max_rows)
        if span is None or not span["row_count"]:
            return None
        sealed_at: datetime = await conn.fetchval(QUERIES["seal_clock"])
    batch = AuditBatch(first_id, span["last_id"], span["row_count"])
    seal = await build(previous, sealed_at, batch, audit_pages(pool, batch, page_rows))
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(QUERIES["audit_sealer_lock"], AUDIT_SEALER_LOCK_KEY):
            raise SealerBusy
        newest = await conn.fetchval(QUERIES["latest_audit_seal_id"])
        if newest != (previous.id if previous else None):
            raise SealerBusy
        await conn.execute(
            QUERIES["insert_audit_seal"],
            seal.id,
            seal.sealed_at,
            seal.first_id,
            seal.last_id,
            seal.row_count,
            seal.prev_hash,
            seal.hash,
        )
    return seal


class AuditSnapshot:
    """The seals and the audit rows as of one moment (a repeatable-read, read-only
    transaction), read through cursors so a long log is never held in memory."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def seals(self) -> AsyncIterator[AuditSeal]:
        async for r in self._conn.cursor(QUERIES["audit_seals_in_order"], prefetch=500):
            yield _as(AuditSeal, r)

    async def rows_from(self, first_id: int) -> AsyncIterator[StoredAttempt]:
        async for r in self._conn.cursor(QUERIES["audit_rows_from"], first_id, prefetch=500):
            yield _as(StoredAttempt, r)

    async def rows_before(self, first_id: int) -> int:
        count: int = await self._conn.fetchval(QUERIES["audit_rows_before"], first_id)
        return count


@contextlib.asynccontextmanager
async def audit_snapshot(conn: asyncpg.Connection) -> AsyncIterator[AuditSnapshot]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        yield AuditSnapshot(conn)
