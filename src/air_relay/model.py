"""Domain records and statuses: what ingest, the database, delivery, the senders and the API
hand each other. Plain frozen dataclasses, no I/O, and nothing else of air-relay imported."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# AIR sends organizationId as an integer or a string; it is kept as sent.
JsonScalar = int | str

# Delivery statuses. ``pending`` covers queued, backing off and being sent; ``dead`` is a
# final state (permanent failure or schedule used up), never a deletion.
PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
# A dead delivery an operator let go: out of the dead list, never sent again, its attempts
# still in the audit log.
DISMISSED = "dismissed"
# Waiting for its storm digest: never claimed itself, finished with the digest.
HELD = "held"
# What a replay may requeue: finished deliveries only (a pending one is already queued).
FINISHED_STATUSES = (DELIVERED, DEAD)

# The sink option ``ordering``: none, or the key whose deliveries go out in arrival order.
ORDERING_NONE = "none"
ORDERING_KINDS = ("case", "endpoint", "task")
ORDERINGS = (ORDERING_NONE, *ORDERING_KINDS)
# An event's keys, one per ORDERING_KINDS (None: it has no such key).
OrderKeys = tuple[str | None, str | None, str | None]
NO_ORDER_KEYS: OrderKeys = (None, None, None)

# Attempt outcomes, as the audit log shows them.
SUCCESS = "success"
FAILURE = "failure"

# Sink health states: the latest attempt succeeded, failed, there was none yet, or the sink is
# switched off (whatever its attempts said).
HEALTHY = "healthy"
FAILING = "failing"
IDLE = "idle"
INACTIVE = "inactive"
SINK_STATES = (HEALTHY, FAILING, IDLE, INACTIVE)


@dataclass(frozen=True)
class SinkFields:
    """What a sink create or update writes."""

    tenant_id: str
    name: str
    description: str
    sink_type: str
    args: dict[str, Any]
    events: list[str] | None
    organization_ids: list[str] | None
    active: bool
    # Per-sink options; keyword-only so that they sit beside the others' without reshaping.
    ordering: str = field(default=ORDERING_NONE, kw_only=True)
    fallback_event_sink_id: uuid.UUID | None = field(default=None, kw_only=True)
    # Storm digests: {"window_seconds": N, "max_listed": M}; None = off.
    digest: dict[str, Any] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Sink(SinkFields):
    """A stored event sink."""

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NewEvent:
    """An accepted AIR event on its way into the outbox: ``body`` is the exact bytes sent."""

    event_id: uuid.UUID
    tenant_id: str
    event_name: str
    organization_id: JsonScalar
    body: bytes
    # Its case, endpoint and task keys (air_relay.ordering), for sinks with ``ordering``.
    order_keys: OrderKeys = NO_ORDER_KEYS


@dataclass(frozen=True)
class SpooledEvent:
    """An accepted event kept in the local spool while the database could not take it, with
    the time it arrived (its ``received_at`` once drained into the outbox)."""

    event: NewEvent
    received_at: datetime


@dataclass(frozen=True)
class ClaimedDelivery:
    """One delivery claimed by a dispatcher, with everything its sender needs."""

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
    # Storm digests: the window this delivery carries or went out in, and the sink's option.
    digest_id: uuid.UUID | None = None
    sink_digest: dict[str, Any] | None = None


@dataclass(frozen=True)
class DigestMember:
    """One event listed in a digest: the envelope as AIR sent it."""

    event_id: uuid.UUID
    body: bytes
    received_at: datetime


@dataclass(frozen=True)
class Digest:
    """A storm digest: ``count`` deliveries of one (eventName, organizationId) to one sink,
    held during a window, sent as one message listing the first ``max_listed``."""

    id: uuid.UUID
    event_name: str
    organization_id: JsonScalar
    count: int
    window_seconds: int
    window_start: datetime
    window_end: datetime
    listed: Sequence[DigestMember]


@dataclass(frozen=True)
class AttemptRecord:
    """One send attempt, as the audit log keeps it."""

    attempt: int
    outcome: str  # SUCCESS | FAILURE
    status_code: int | None
    error: str | None
    response_body: str | None
    duration_ms: int
    next_attempt_at: datetime | None
    created_at: datetime
    error_detail: str | None = None  # why, in a few words, when there was no answer


@dataclass(frozen=True)
class Completion:
    """The end of one claim: its attempts and the delivery's new state, to be written."""

    delivery: ClaimedDelivery
    status: str  # PENDING (a retry follows) | DELIVERED | DEAD
    next_attempt_at: datetime | None
    last_error: str | None
    attempts: Sequence[AttemptRecord]


@dataclass(frozen=True)
class AuditFilter:
    tenant_id: str
    event_sink_id: uuid.UUID | None = None
    event_name: str | None = None
    status_code: int | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # keyset position: the id of the previous page's last entry
    limit: int = 100


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log: an attempt with its event and sink."""

    id: int
    created_at: datetime
    tenant_id: str
    event_id: uuid.UUID
    event_name: str
    organization_id: JsonScalar
    event_sink_id: uuid.UUID
    event_sink_type: str
    attempt: int
    outcome: str
    status_code: int | None
    error: str | None
    response_body: str | None
    duration_ms: int
    next_attempt_at: datetime | None
    seal_id: int | None = None  # the seal covering this row; None until it is sealed
    error_detail: str | None = None
    # Failover: the delivery this row's delivery failed over to, or came from by failover.
    failed_over_to: uuid.UUID | None = None
    failed_over_from: uuid.UUID | None = None
    # An attempt to send a storm digest: the digest, and how many deliveries it carries.
    digest_id: uuid.UUID | None = None
    digest_count: int | None = None


@dataclass(frozen=True)
class StoredAttempt:
    """An audit row with every stored column, as the audit seals hash it."""

    id: int
    delivery_id: uuid.UUID
    tenant_id: str
    event_id: uuid.UUID
    event_name: str
    organization_id: JsonScalar
    event_sink_id: uuid.UUID
    event_sink_type: str
    attempt: int
    outcome: str
    status_code: int | None
    error: str | None
    response_body: str | None
    duration_ms: int
    next_attempt_at: datetime | None
    created_at: datetime
    # Added after the first seals: hashed only when set, so rows from before keep their hash.
    error_detail: str | None = None


@dataclass(frozen=True)
class AuditSeal:
    """One link of the audit log's hash chain: the rows with ids first_id..last_id."""

    id: int  # its place in the chain: 1, 2, 3 ...
    sealed_at: datetime
    first_id: int
    last_id: int
    row_count: int
    prev_hash: str  # the previous seal's hash (64 zeros for the first seal)
    hash: str


@dataclass(frozen=True)
class AuditBatch:
    """The audit rows the next seal covers, counted before they are read: the seal's header
    (hashed first) names its last id and its row count."""

    first_id: int
    last_id: int
    row_count: int


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


@dataclass(frozen=True)
class DeliveryEntry:
    """A delivery as the delivery listing shows it."""

    id: uuid.UUID
    tenant_id: str
    event_id: uuid.UUID
    event_name: str
    organization_id: JsonScalar
    event_sink_id: uuid.UUID
    event_sink_type: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None  # pending only; while a send runs, the end of its lease
    created_at: datetime  # when the event arrived (ingest writes both in one statement)
    updated_at: datetime
    failed_over_to: uuid.UUID | None = None  # the fallback's delivery, once this one died
    failed_over_from: uuid.UUID | None = None  # the dead delivery this one replaces
    digest_id: uuid.UUID | None = None  # the storm digest it went out in (or waits for)


@dataclass(frozen=True)
class RetryResult:
    previous_status: str
    delivery: DeliveryEntry | None  # the requeued delivery; None when it was not requeued
    sink_exists: bool = True  # False: the sink was deleted, so a dead delivery stays dead


@dataclass(frozen=True)
class DeliveryDetail:
    """One delivery with its event as stored and its newest attempts."""

    delivery: DeliveryEntry
    body: bytes  # the exact bytes AIR sent
    received_at: datetime
    sink_exists: bool
    attempts: Sequence[AuditEntry]  # newest first
    more_attempts: bool  # older attempts exist beyond ``attempts``


@dataclass(frozen=True)
class BulkAction:
    """An operator's retry or dismiss of one tenant's dead deliveries matched by the
    listing's filters, at most ``limit`` of them, oldest first."""

    tenant_id: str
    event_sink_id: uuid.UUID | None
    event_name: str | None
    since: datetime | None
    until: datetime | None
    limit: int
    actor: str
    params: dict[str, Any]  # what the operator asked for, as recorded


@dataclass(frozen=True)
class BulkResult:
    affected: int
    more: bool  # more matching deliveries remain for another call
    sink_deleted: int  # retry only: matching dead deliveries of deleted sinks (up to limit)


@dataclass(frozen=True)
class Replay:
    """An operator's request to requeue a sink's finished deliveries of a time window."""

    tenant_id: str
    event_sink_id: uuid.UUID
    statuses: Sequence[str]  # a subset of FINISHED_STATUSES
    since: datetime
    until: datetime
    actor: str
    params: dict[str, Any]  # what the operator asked for, as recorded


def iso_time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, full precision, as the audit log writes times."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class SinkHealth:
    """One sink's health: its latest attempts' outcome (kept as attempts complete), its queue,
    and the last hour's counters.

    ``state``: HEALTHY (latest attempt succeeded), FAILING (it failed; ``since`` is the first
    failure of the current run), IDLE (no attempt yet) or INACTIVE (switched off). ``since``
    is when the current state began (None for IDLE and INACTIVE). ``last_error`` and
    ``last_status_code`` are those of the latest failed attempt (kept after a recovery, with
    ``last_failure_at``); the status code is None when that attempt got no response.
    """

    event_sink_id: uuid.UUID
    tenant_id: str
    name: str
    type: str
    active: bool
    state: str
    since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    last_status_code: int | None
    consecutive_failures: int
    pending: int
    dead: int
    oldest_pending_at: datetime | None
    delivered_last_hour: int
    failed_attempts_last_hour: int

    def as_json(self) -> dict[str, object]:
        """The API's health object (``GET /v1/event_sink/{id}/health``)."""
        return {
            "event_sink_id": str(self.event_sink_id),
            "tenant_id": self.tenant_id,
            "state": self.state,
            "since": iso_time(self.since),
            "last_success_at": iso_time(self.last_success_at),
            "last_failure_at": iso_time(self.last_failure_at),
            "last_error": self.last_error,
            "last_status_code": self.last_status_code,
            "consecutive_failures": self.consecutive_failures,
            "pending": self.pending,
            "dead": self.dead,
            "oldest_pending_at": iso_time(self.oldest_pending_at),
            "delivered_last_hour": self.delivered_last_hour,
            "failed_attempts_last_hour": self.failed_attempts_last_hour,
        }
