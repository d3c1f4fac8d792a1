"""One claim of one delivery: up to ``attempts_per_claim`` sends (tenacity), then the verdict.

The verdict is delivered, rescheduled along ``schedule_seconds`` (durably, in the row), or dead.
Every attempt becomes an audit row, written with the verdict in one statement; every failed
attempt is also one ``delivery_failed`` log line carrying the same fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from air_relay.config import DeliveryConfig
from air_relay.db import repository as repo
from air_relay.db.pool import DB_UNAVAILABLE
from air_relay.metrics import Metrics
from air_relay.sinks.base import PacedSender, Sender, SendResult
from air_relay.timestamps import rfc3339

log = structlog.get_logger(__name__)

SINK_DELETED = SendResult(ok=False, error="sink_deleted", reason="other", transient=False)


def durable_delay(claims: int, cfg: DeliveryConfig, retry_after: float | None) -> float | None:
    """Seconds until the next claim after claim number ``claims`` failed; None = schedule done."""
    schedule = cfg.retry.schedule_seconds
    if claims > len(schedule):
        return None
    jitter = cfg.retry.jitter
    delay = schedule[claims - 1] * random.uniform(1 - jitter, 1 + jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cfg.retry.retry_after_max_seconds))
    return delay


class ClaimRunner:
    def __init__(self, pool: asyncpg.Pool, cfg: DeliveryConfig, metrics: Metrics) -> None:
        self._pool = pool
        self._cfg = cfg
        self._metrics = metrics
        self._backoff = wait_random_exponential(
            multiplier=cfg.retry.backoff_initial_seconds, max=cfg.retry.backoff_max_seconds
        )

    def _wait(self, state: RetryCallState) -> float:
        last: SendResult | None = state.outcome.result() if state.outcome else None
        if last is not None and last.retry_after is not None:
            return last.retry_after
        return float(self._backoff(state))

    def _retry_in_claim(self, result: SendResult) -> bool:
        # A Retry-After longer than the in-claim waits ends the claim: the durable schedule
        # honours it instead of holding a lease and a task that long.
        return (
            not result.ok
            and result.transient
            and (
                result.retry_after is None
                or result.retry_after <= self._cfg.retry.backoff_max_seconds
            )
        )

    async def run(self, sender: Sender, delivery: repo.ClaimedDelivery) -> None:
        if await self._deferred(sender, delivery):
            return
        records: list[repo.AttemptRecord] = []
        fields = _log_fields(delivery)

        async def attempt() -> SendResult:
            began = datetime.now(UTC)  # the audit timestamp is when the attempt started
            if delivery.sink_args is None:
                result = SINK_DELETED
                duration = 0.0
            else:
                started = time.monotonic()
                try:
                    result = await sender.send(delivery)
                except Exception as exc:
                    # A sender bug must still end in an audit row and, in time, "dead":
                    # never a task that dies and a delivery re-claimed forever.
                    log.exception("sender_crashed", delivery_id=str(delivery.id))
                    result = SendResult(
                        ok=False,
                        error=f"internal_error:{type(exc).__name__}",
                        reason="other",
                        transient=True,
                    )
                duration = time.monotonic() - started
                self._metrics.delivery_duration.labels(delivery.sink_type).observe(duration)
            if not result.ok:
                self._metrics.attempts_failed.labels(
                    delivery.sink_type, result.reason or "other"
                ).inc()
            records.append(_record(delivery.attempts + len(records) + 1, result, duration, began))
            return result

        def before_sleep(state: RetryCallState) -> None:
            sleep = state.next_action.sleep if state.next_action else 0.0
            last = records[-1]
            records[-1] = dataclasses.replace(
                last, next_attempt_at=datetime.now(UTC) + timedelta(seconds=sleep)
            )
            _log_failure(fields, records[-1])

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._cfg.retry.attempts_per_claim),
            wait=self._wait,
            retry=retry_if_result(self._retry_in_claim),
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        renewal = asyncio.create_task(self._keep_lease(delivery))
        try:
            result: SendResult = await retrying(attempt)
        finally:
            renewal.cancel()
        await self._conclude(delivery, result, records, fields)

    async def _deferred(self, sender: Sender, delivery: repo.ClaimedDelivery) -> bool:
        """Requeue the delivery unsent when a paced sender's turn for it is far off."""
        if delivery.sink_args is None or not isinstance(sender, PacedSender):
            return False
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

    async def _keep_lease(self, delivery: repo.ClaimedDelivery) -> None:
        """Renew the claim's lease while it runs, so no other process takes it meanwhile."""
        lease = self._cfg.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await repo.renew_lease(self._pool, delivery, lease):
                    log.warning("lease_lost", delivery_id=str(delivery.id))
                    return
            except DB_UNAVAILABLE as exc:
                # Keep trying: the lease may still be saved before it lapses.
                log.warning(
                    "lease_renewal_failed", delivery_id=str(delivery.id), error=type(exc).__name__
                )

    async def _conclude(
        self,
        delivery: repo.ClaimedDelivery,
        result: SendResult,
        records: list[repo.AttemptRecord],
        fields: dict[str, Any],
    ) -> None:
        next_at: datetime | None = None
        if result.ok:
            status = "delivered"
        else:
            delay = durable_delay(delivery.claims, self._cfg, result.retry_after)
            if result.transient and delay is not None:
                status = "pending"
                next_at = datetime.now(UTC) + timedelta(seconds=delay)
            else:
                status = "dead"
            records[-1] = dataclasses.replace(records[-1], next_attempt_at=next_at)
            _log_failure(fields, records[-1])
        await self._record(delivery, status, next_at, result, records)
        last = records[-1]
        if status == "delivered" and last.attempt > 1:
            await self._wake_backlog(delivery)
        if status == "delivered":
            self._metrics.deliveries.labels(delivery.sink_type, "delivered").inc()
            log.info(
                "delivery_succeeded",
                **fields,
                attempt=last.attempt,
                status_code=last.status_code,
                duration_ms=last.duration_ms,
            )
        elif status == "dead":
            self._metrics.deliveries.labels(delivery.sink_type, "dead").inc()
            log.warning("delivery_dead", **fields, attempts=last.attempt, error=last.error)
        else:
            log.info(
                "retry_scheduled",
                **fields,
                claim=delivery.claims,
                next_attempt_at=rfc3339(next_at),
                error=last.error,
            )

    async def _wake_backlog(self, delivery: repo.ClaimedDelivery) -> None:
        """The sink recovered: its other backed-off deliveries need not wait out their delays."""
        try:
            woken = await repo.wake_sink_backlog(self._pool, delivery.event_sink_id, delivery.id)
        except DB_UNAVAILABLE as exc:
            # Only a speed-up: without it the backlog still drains along its schedule.
            log.warning("backlog_wake_failed", error=type(exc).__name__)
            return
        if woken:
            log.info("sink_recovered", event_sink_id=str(delivery.event_sink_id), woken=woken)

    async def _record(
        self,
        delivery: repo.ClaimedDelivery,
        status: str,
        next_at: datetime | None,
        result: SendResult,
        records: list[repo.AttemptRecord],
    ) -> None:
        # The sends happened: keep trying to record them while the lease lasts. If we cannot,
        # the lease expires and the delivery is sent again (at-least-once, never lost).
        delay = 0.5
        deadline = time.monotonic() + 60
        while True:
            try:
                kept = await repo.complete_delivery(
                    self._pool,
                    delivery,
                    status=status,
                    next_attempt_at=next_at,
                    last_error=None if result.ok else result.error,
                    attempts=records,
                )
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
                delay = min(delay * 2, 5.0)


def _record(
    number: int, result: SendResult, duration: float, began: datetime
) -> repo.AttemptRecord:
    return repo.AttemptRecord(
        attempt=number,
        outcome="success" if result.ok else "failure",
        status_code=result.status_code,
        error=result.error,
        response_body=result.response_body,
        duration_ms=round(duration * 1000),
        next_attempt_at=None,
        created_at=began,
    )


def _log_fields(d: repo.ClaimedDelivery) -> dict[str, Any]:
    return {
        "delivery_id": str(d.id),
        "tenant_id": d.tenant_id,
        "event_id": str(d.event_id),
        "event_name": d.event_name,
        "organization_id": d.organization_id,
        "event_sink_id": str(d.event_sink_id),
        "event_sink_type": d.sink_type,
    }


def _log_failure(fields: dict[str, Any], r: repo.AttemptRecord) -> None:
    log.warning(
        "delivery_failed",
        **fields,
        attempt=r.attempt,
        outcome=r.outcome,
        status_code=r.status_code,
        error=r.error,
        response_body=r.response_body,
        duration_ms=r.duration_ms,
        next_attempt_at=rfc3339(r.next_attempt_at),
    )
