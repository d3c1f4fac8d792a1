"""Running one claim of one delivery: up to ``attempts_per_claim`` sends (tenacity), then the
verdict (``retry_policy``) written with the claim's attempts. (The dispatcher keeps the
leases of all running claims alive.)

Every attempt becomes an audit row, written with the verdict in one statement; every failed
attempt is also one ``delivery_failed`` log line carrying the same fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from air_relay.config import DeliveryConfig
from air_relay.db import repository as repo
from air_relay.db.batcher import CompletionBatcher
from air_relay.db.pool import DB_UNAVAILABLE, error_hint
from air_relay.delivery.digests import Digests, is_digest_claim
from air_relay.delivery.retry_policy import InClaimWait, Verdict, retry_in_claim, verdict
from air_relay.metrics import Metrics
from air_relay.model import (
    DEAD,
    DELIVERED,
    FAILURE,
    SUCCESS,
    AttemptRecord,
    ClaimedDelivery,
    Completion,
)
from air_relay.sinks.base import PacedSender, Sender, SendResult, crash_failure
from air_relay.sinks.failures import DNS_NOT_FOUND
from air_relay.timestamps import rfc3339

log = structlog.get_logger(__name__)

SINK_DELETED = SendResult(ok=False, error="sink_deleted", reason="other", transient=False)
# How long a claim keeps trying to record its attempts while the database is away; after
# that its lease lapses and the delivery is sent again (at-least-once, never lost).
COMPLETION_DEADLINE_SECONDS = 60.0
WAKE_INTERVAL_SECONDS = 10.0
# A recovered sink's backlog is woken this many at a time, oldest first; the next chunk once
# half of one has been delivered here (waking a million rows in one statement held the whole
# drain back until it ended).
WAKE_CHUNK = 5000


def attempt_record(
    number: int, result: SendResult, duration: float, began: datetime
) -> AttemptRecord:
    return AttemptRecord(
        attempt=number,
        outcome=SUCCESS if result.ok else FAILURE,
        status_code=result.status_code,
        error=result.error,
        response_body=result.response_body,
        duration_ms=round(duration * 1000),
        next_attempt_at=None,
        created_at=began,
        error_detail=result.error_detail,
    )


def all_not_found(records: list[AttemptRecord]) -> bool:
    """Whether every attempt of a claim found no such host name."""
    return bool(records) and all(r.error == DNS_NOT_FOUND for r in records)


def log_fields(d: ClaimedDelivery) -> dict[str, Any]:
    """The fields every log line about a delivery carries."""
    return {
        "delivery_id": str(d.id),
        "tenant_id": d.tenant_id,
        "event_id": str(d.event_id),
        "event_name": d.event_name,
        "organization_id": d.organization_id,
        "event_sink_id": str(d.event_sink_id),
        "event_sink_type": d.sink_type,
    }


class Claim:
    """The attempts of one claim: sends through the sender and keeps the audit records."""

    def __init__(self, delivery: ClaimedDelivery, sender: Sender, metrics: Metrics) -> None:
        self.delivery = delivery
        self.records: list[AttemptRecord] = []
        self.fields = log_fields(delivery)
        self._sender = sender
        self._metrics = metrics

    async def attempt(self) -> SendResult:
        """One send, recorded; a sender that raises is an attempt that failed."""
        delivery = self.delivery
        began = datetime.now(UTC)  # the audit timestamp is when the attempt started
        duration = 0.0
        if delivery.sink_args is None:
            result = SINK_DELETED
        else:
            started = time.monotonic()
            try:
                result = await self._sender.send(delivery)
            except Exception as exc:
                # A sender bug must still end in an audit row and, in time, "dead":
                # never a task that dies and a delivery re-claimed forever.
                log.exception("sender_crashed", delivery_id=str(delivery.id))
                result = crash_failure(exc)
            duration = time.monotonic() - started
            self._metrics.delivery_duration.labels(delivery.sink_type).observe(duration)
        if not result.ok:
            self._metrics.attempts_failed.labels(delivery.sink_type, result.reason or "other").inc()
        number = delivery.attempts + len(self.records) + 1
        self.records.append(attempt_record(number, result, duration, began))
        return result

    def retrying_after(self, state: RetryCallState) -> None:
        """Tenacity's before_sleep: the last attempt failed and another follows."""
        sleep = state.next_action.sleep if state.next_action else 0.0
        self.note_failure(datetime.now(UTC) + timedelta(seconds=sleep))

    def note_failure(self, next_attempt_at: datetime | None) -> None:
        """Stamp the last (failed) attempt with what follows it, and log it."""
        last = dataclasses.replace(self.records[-1], next_attempt_at=next_attempt_at)
        self.records[-1] = last
        log.warning(
            "delivery_failed",
            **self.fields,
            attempt=last.attempt,
            outcome=last.outcome,
            status_code=last.status_code,
            error=last.error,
            error_detail=last.error_detail,
            response_body=last.response_body,
            duration_ms=last.duration_ms,
            next_attempt_at=rfc3339(last.next_attempt_at),
        )


class ClaimRunner:
    """Runs claims for the dispatcher: the sends, the lease, the verdict and its record."""

    def __init__(self, pool: asyncpg.Pool, cfg: DeliveryConfig, metrics: Metrics) -> None:
        self._pool = pool
        self._cfg = cfg
        self._metrics = metrics
        self._wait = InClaimWait(cfg.retry)
        # Completions of concurrent claims share one statement and one commit.
        self._completions = CompletionBatcher(pool)
        self._digests = Digests(pool, metrics)
        self._paced: dict[type, bool] = {}
        # Per sink, when this process last woke its backlog, saw it fail, saw it succeed.
        self._woken_at: dict[uuid.UUID, float] = {}
        self._failed_at: dict[uuid.UUID, float] = {}
        self._ok_at: dict[uuid.UUID, float] = {}
        # Per sink whose last wake was a full chunk: deliveries to go before the next chunk.
        self._chunk_left: dict[uuid.UUID, int] = {}

    async def run(self, sender: Sender, delivery: ClaimedDelivery) -> None:
        if is_digest_claim(delivery):
            routed = await self._digests.prepare(sender, delivery)
            if routed is None:
                return  # held for a digest
            sender = routed
        if await self._deferred(sender, delivery):
            return
        claim = Claim(delivery, sender, self._metrics)
        result = await claim.attempt()
        # Most claims end with their first attempt: tenacity only when another one follows.
        if self._cfg.retry.attempts_per_claim > 1 and retry_in_claim(result, self._cfg.retry):
            result = await self._retry(claim, result)
        if self._cfg.dns_not_found_is_permanent and all_not_found(claim.records):
            # The operator's choice: a name that did not resolve for a whole claim is a typo.
            result = dataclasses.replace(result, transient=False)
        await self._conclude(claim, result)

    async def _retry(self, claim: Claim, first: SendResult) -> SendResult:
        """The rest of the claim's attempts; tenacity sees ``first`` as its attempt 1."""
        done = [first]

        async def attempt() -> SendResult:
            return done.pop() if done else await claim.attempt()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._cfg.retry.attempts_per_claim),
            wait=self._wait,
            retry=retry_if_result(lambda r: retry_in_claim(r, self._cfg.retry)),
            before_sleep=claim.retrying_after,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        result: SendResult = await retrying(attempt)
        return result

    def _is_paced(self, sender: Sender) -> bool:
        # Checking a runtime Protocol costs several microseconds: once per sender class.
        kind = type(sender)
        if kind not in self._paced:
            self._paced[kind] = isinstance(sender, PacedSender)
        return self._paced[kind]

    async def _deferred(self, sender: Sender, delivery: ClaimedDelivery) -> bool:
        """Requeue the delivery unsent when a paced sender's turn for it is far off."""
        if delivery.sink_args is None or not self._is_paced(sender):
            return False
        assert isinstance(sender, PacedSender)
        seconds = sender.defer_seconds(delivery)
        if seconds is None:
            return False
        try:
            await repo.defer_delivery(self._pool, delivery, seconds)
        except DB_UNAVAILABLE as exc:
            # Its lease lapses and it is claimed again; only the pacing is lost.
            log.warning("defer_failed", delivery_id=str(delivery.id), error=type(exc).__name__)
        log.debug("delivery_deferred", delivery_id=str(delivery.id), seconds=round(seconds, 3))
        return True

    async def _conclude(self, claim: Claim, result: SendResult) -> None:
        delivery = claim.delivery
        outcome = verdict(result, delivery.claims, self._cfg.retry, datetime.now(UTC))
        if result.ok:
            self._ok_at[delivery.event_sink_id] = time.monotonic()
        else:
            claim.note_failure(outcome.next_attempt_at)
            self._failed_at[delivery.event_sink_id] = time.monotonic()
        await self._complete(claim, outcome, result)
        last = claim.records[-1]
        if outcome.status == DELIVERED:
            sink = delivery.event_sink_id
            if self._chunk_drained(sink) or (last.attempt > 1 and self._wake_due(sink)):
                await self._wake_backlog(delivery, last.created_at)
            self._metrics.deliveries.labels(delivery.sink_type, DELIVERED).inc()
            log.info(
                "delivery_succeeded",
                **claim.fields,
                attempt=last.attempt,
                status_code=last.status_code,
                duration_ms=last.duration_ms,
            )
        elif outcome.status == DEAD:
            self._metrics.deliveries.labels(delivery.sink_type, DEAD).inc()
            log.warning("delivery_dead", **claim.fields, attempts=last.attempt, error=last.error)
        else:
            log.info(
                "retry_scheduled",
                **claim.fields,
                claim=delivery.claims,
                next_attempt_at=rfc3339(outcome.next_attempt_at),
                error=last.error,
            )

    def failing_sinks(self) -> set[uuid.UUID]:
        """Sinks whose last claim here ended in failure."""
        return {s for s, at in self._failed_at.items() if at > self._ok_at.get(s, 0.0)}

    def _wake_due(self, sink_id: uuid.UUID) -> bool:
        """Whether a success after failures should wake the sink's backlog: once per
        recovery, not once per delivery of the backlog (each of which succeeds after failing,
        and each wake reads the whole backlog). Again after WAKE_INTERVAL_SECONDS, or at once
        if the sink has failed since, so another process's recovery is not missed for long."""
        now = time.monotonic()
        woken = self._woken_at.get(sink_id)
        if (
            woken is not None
            and now - woken < WAKE_INTERVAL_SECONDS
            and self._failed_at.get(sink_id, 0.0) < woken
        ):
            return False
        self._woken_at[sink_id] = now
        return True

    def _chunk_drained(self, sink_id: uuid.UUID) -> bool:
        """Counts a delivery of a sink whose backlog is being woken chunk by chunk: whether it
        is time to wake the next one."""
        left = self._chunk_left.get(sink_id)
        if left is None:
            return False
        if left > 1:
            self._chunk_left[sink_id] = left - 1
            return False
        del self._chunk_left[sink_id]
        return True

    async def _wake_backlog(self, delivery: ClaimedDelivery, recovered_at: datetime) -> None:
        """The sink recovered: its other backed-off deliveries need not wait out their delays.

        Everything that failed before the successful attempt began is woken, not only what
        failed before this delivery's own last failure: with one wake per recovery (see
        _wake_due), rows that failed later in the outage must not keep their backoff."""
        try:
            woken = await repo.wake_sink_backlog(
                self._pool, delivery.event_sink_id, recovered_at, limit=WAKE_CHUNK
            )
        except DB_UNAVAILABLE as exc:
            # Only a speed-up: without it the backlog still drains along its schedule. The
            # sink's next delivery here tries again.
            self._chunk_left[delivery.event_sink_id] = 1
            log.warning("backlog_wake_failed", error=type(exc).__name__)
            return
        except Exception as exc:
            log.exception("backlog_wake_failed", **error_hint(exc))
            return
        if woken >= WAKE_CHUNK:
            self._chunk_left[delivery.event_sink_id] = max(1, WAKE_CHUNK // 2)
        else:
            self._chunk_left.pop(delivery.event_sink_id, None)
        if woken:
            log.info("sink_recovered", event_sink_id=str(delivery.event_sink_id), woken=woken)

    async def _complete(self, claim: Claim, outcome: Verdict, result: SendResult) -> None:
        """Write the claim's attempts and its verdict, retrying while the database is away."""
        delivery = claim.delivery
        completion = Completion(
            delivery=delivery,
            status=outcome.status,
            next_attempt_at=outcome.next_attempt_at,
            last_error=None if result.ok else result.error,
            attempts=tuple(claim.records),
        )
        delay = 0.5
        deadline = time.monotonic() + COMPLETION_DEADLINE_SECONDS
        while True:
            try:
                if delivery.digest_id is None:
                    kept = await self._completions.submit(completion)
                else:
                    kept = await self._digests.complete(completion)
                if not kept:
                    log.warning("lease_lost", delivery_id=str(delivery.id))
                return
            except DB_UNAVAILABLE as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "completion_abandoned",
                        delivery_id=str(delivery.id),
                        error=type(exc).__name__,
                    )
                    return
                log.warning(
                    "completion_retry", delivery_id=str(delivery.id), error=type(exc).__name__
                )
                await asyncio.sleep(delay)
                # Short: once the database is back, the verdict should land before other
                # processes see the lease lapse and send the delivery again.
                delay = min(delay * 2, 1.0)
