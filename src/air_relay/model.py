"""Domain records and statuses: what ingest, the database, delivery, the senders and the API
hand each other. Plain frozen dataclasses, no I/O, and nothing else of air-relay imported."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# AIR sends organizationId as an integer or a string; it is kept as sent.
JsonScalar = int | str

# Delivery statuses. ``pending`` covers queued, backing off and being sent; ``dead`` is a
# final state (permanent failure or schedule used up), never a deletion.
PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
# Waiting for its storm digest: never claimed itself, finished with the digest.
HELD = "held"
# What a replay may requeue: finished deliveries only (a pending one is already queued).
FINISHED_STATUSES = (DELIVERED, DEAD)

# Attempt outcomes, as the audit log shows them.
SUCCESS = "success"
FAILURE = "failure"


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
    digest_id: uuid.UUID | None = None  # the storm digest it went out in (or waits for)


@dataclass(frozen=True)
class RetryResult:
    previous_status: str
    delivery: DeliveryEntry | None  # the requeued delivery; None when it was not dead


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
