"""The dispatcher: claims due deliveries and runs each through its sender, with retries.

Woken by LISTEN/NOTIFY when ingest commits a delivery, and by a slow poll as the safety net
(NOTIFY is a hint: a lost notification, or a retry that has become due, is found by the poll).
With no DSN to LISTEN on (behind a transaction-mode pooler, where LISTEN has no session to
live in, and no ``database.listen_dsn``), the poll alone finds new work.
Claims commit before any HTTP request; no connection is held across a send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping

import asyncpg
import structlog

from air_relay.config import DeliveryConfig
from air_relay.db import repository as repo
from air_relay.db.notify import listen
from air_relay.db.pool import DB_UNAVAILABLE, error_hint
from air_relay.delivery.claim import ClaimRunner
from air_relay.delivery.send_slots import SendSlots
from air_relay.metrics import Metrics
from air_relay.model import ClaimedDelivery
from air_relay.sinks.base import Sender

log = structlog.get_logger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        listen_dsn: str | None,
        cfg: DeliveryConfig,
        senders: Mapping[str, Sender],
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._listen_dsn = listen_dsn
        self._cfg = cfg
        self._senders = dict(senders)
        self._runner = ClaimRunner(pool, cfg, metrics)
        self.worker = worker_name()
        self._wake = asyncio.Event()
        self._stopping = False
        # Every claim this process holds: those sending (at most ``concurrency``) and up to
        # ``batch_size`` more claimed ahead, waiting for a send slot.
        self._inflight: dict[asyncio.Task[None], ClaimedDelivery] = {}
        self._slots = SendSlots(cfg.concurrency)
        # Claims run ahead of the senders by up to a batch, so a sender that frees up starts
        # its next delivery at once instead of waiting out a claim's round trip.
        self._capacity = cfg.concurrency + cfg.batch_size
        self._started: set[asyncio.Task[None]] = set()
        # When each claim's lease ends as far as this process knows (monotonic clock): a
        # claim still waiting for a sender when it has lapsed is another process's to send.
        self._lease_ends: dict[uuid.UUID, float] = {}
        self._per_sink: Counter[uuid.UUID] = Counter()
        self._sink_share = cfg.sink_concurrency or max(1, cfg.concurrency // 4)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = []
        if self._listen_dsn:
            log.info(
                "dispatcher_wakeup", mode="listen", poll_seconds=self._cfg.poll_interval_seconds
            )
            self._tasks.append(
                asyncio.create_task(listen(self._listen_dsn, self.wake), name="air-relay-listen")
            )
        else:
            log.info(
                "dispatcher_wakeup",
                mode="poll",
                poll_seconds=self._cfg.poll_interval_seconds,
                reason="database.prepared_statements is false and database.listen_dsn is not set",
            )
        self._tasks += [
            asyncio.create_task(self._claim_loop(), name="air-relay-claim"),
            asyncio.create_task(self._renew_loop(), name="air-relay-leases"),
        ]

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming; in-flight sends get ``grace_seconds`` to finish; release the rest."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Claimed ahead but not started: not sent now, released below with the rest.
        queued = {t: d for t, d in self._inflight.items() if t not in self._started}
        for task in queued:
            task.cancel()
        sending = [t for t in self._inflight if t not in queued]
        if sending:
            log.info("dispatcher_draining", in_flight=len(sending))
            await asyncio.wait(sending, timeout=grace_seconds)
        unfinished = {**queued, **self._inflight}
        for task in unfinished:
            task.cancel()
        for task in unfinished:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if unfinished:
            tokens = [d.claim_token for d in unfinished.values()]
            try:
                released = await repo.release_deliveries(self._pool, tokens)
                log.info("deliveries_released", count=released)
            except DB_UNAVAILABLE as exc:
                # Their leases expire on their own; another process takes them then.
                log.warning("release_failed", error=type(exc).__name__, count=len(tokens))

    async def _claim_loop(self) -> None:
        backoff = 0.5
        while not self._stopping:
            free = self._capacity - len(self._inflight)
            want = min(free, self._cfg.batch_size)
            claimed: list[ClaimedDelivery] = []
            if want > 0:
                self._wake.clear()
                try:
                    lease_end = time.monotonic() + self._cfg.lease_seconds
                    claimed = await self._claim(want)
                    backoff = 0.5
                except DB_UNAVAILABLE as exc:
                    log.warning("claim_failed", error=type(exc).__name__, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                except Exception as exc:
                    # A bug or a misconfigured database: loud, but the loop must live on.
                    log.exception("claim_failed", retry_in=backoff, **error_hint(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                for delivery in claimed:
                    self._spawn(delivery, lease_end)
                if len(claimed) == want:
                    continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._cfg.poll_interval_seconds)

    async def _renew_loop(self) -> None:
        """Renew the leases of every running claim, in one statement, every third of a lease,
        so that no other process takes them meanwhile."""
        lease = self._cfg.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            claims = list(self._inflight.items())
            if not claims:
                continue
            running = [delivery for _, delivery in claims]
            renewed_at = time.monotonic()
            try:
                held = await repo.renew_leases(self._pool, running, lease)
            except DB_UNAVAILABLE as exc:
                # Keep trying: the leases may still be saved before they lapse.
                log.warning("lease_renewal_failed", count=len(running), error=type(exc).__name__)
                continue
            except Exception as exc:
                log.exception("lease_renewal_failed", count=len(running), **error_hint(exc))
                continue
            for task, delivery in claims:
                # The same claim still running (not finished meanwhile, nor followed by a new
                # claim of the same delivery, whose token this renewal did not know).
                if self._inflight.get(task) is not delivery:
                    continue
                if delivery.id in held:
                    self._lease_ends[delivery.id] = renewed_at + lease
                    continue
                log.warning("lease_lost", delivery_id=str(delivery.id))
                if task not in self._started:
                    task.cancel()  # not sent yet: it is no longer ours to send

    async def _claim(self, want: int) -> list[ClaimedDelivery]:
        """Claim up to ``want`` due deliveries, fairly: each sink gets at most its share
        (``sink_concurrency``) of the claims waiting here for a sender, however many of its
        deliveries are due; a sink failing here, at most its share of all claims, sending or
        not (more parallel sends to a sink that is down only hold senders longer). What the
        shares leave goes to sinks with more due that are not failing, never the last share
        of the capacity (kept for a sink whose deliveries arrive next). One statement does
        both (a second round trip per claim slowed a one-sink backlog). Which claim is sent
        next is the send slots' choice."""
        failing = self._runner.failing_sinks()
        counted = {
            sink: n if sink in failing else n - self._slots.sending(sink)
            for sink, n in self._per_sink.items()
        }
        return await repo.claim_deliveries(
            self._pool,
            sink_types=list(self._senders),
            limit=want,
            lease_seconds=self._cfg.lease_seconds,
            worker=self.worker,
            per_sink=self._sink_share,
            running={sink: n for sink, n in counted.items() if n > 0},
            held=[d.id for d in self._inflight.values()],
            spill_barred=failing,
            spill_limit=max(0, self._capacity - self._sink_share - len(self._inflight)),
        )

    def _spawn(self, delivery: ClaimedDelivery, lease_end: float) -> None:
        log.debug(
            "delivery_claimed",
            delivery_id=str(delivery.id),
            event_id=str(delivery.event_id),
            event_sink_id=str(delivery.event_sink_id),
            claim=delivery.claims,
        )
        sender = self._senders[delivery.sink_type]
        task = asyncio.create_task(self._send(sender, delivery))
        self._inflight[task] = delivery
        self._lease_ends[delivery.id] = lease_end
        self._per_sink[delivery.event_sink_id] += 1
        task.add_done_callback(self._finished)

    async def _send(self, sender: Sender, delivery: ClaimedDelivery) -> None:
        await self._slots.acquire(delivery.event_sink_id)
        try:
            if time.monotonic() >= self._lease_ends[delivery.id]:
                # Waited out its lease (a database outage held the senders): another process
                # may be sending it now. Handed back in case it is still ours (a release
                # matches the claim's token, so it never touches another process's claim).
                log.warning("lease_lost", delivery_id=str(delivery.id), sent=False)
                with contextlib.suppress(*DB_UNAVAILABLE):
                    await repo.release_deliveries(self._pool, [delivery.claim_token])
                return
            task = asyncio.current_task()
            assert task is not None
            self._started.add(task)
            await self._runner.run(sender, delivery)
        finally:
            self._slots.release(delivery.event_sink_id)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._started.discard(task)
        delivery = self._inflight.pop(task, None)
        if delivery is not None:
            self._lease_ends.pop(delivery.id, None)
            self._per_sink[delivery.event_sink_id] -= 1
            if self._per_sink[delivery.event_sink_id] <= 0:
                del self._per_sink[delivery.event_sink_id]
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("delivery_task_crashed", error=repr(exc), **error_hint(exc))
        self._wake.set()  # a slot is free
