"""Storm digests in the claim path (the sink option ``digest``).

A claimed delivery of a digest sink is routed before anything is sent: the first of its
(eventName, organizationId) in a while goes out at once and opens a window of
``window_seconds``; one that falls in an open window is held there instead (the first one
held becomes the window's carrier, due when the window closes). Claiming the carrier seals
the window and sends one digest of its members through the usual attempts, retries and
backoff; its completion finishes every member in the same transaction. With the option off
and no digest pending, a claim never comes here.
"""

from __future__ import annotations

import asyncpg
import structlog

from air_relay.db import digests as store
from air_relay.db.pool import DB_UNAVAILABLE, error_hint
from air_relay.metrics import Metrics
from air_relay.model import DEAD, DELIVERED, ClaimedDelivery, Completion, Digest
from air_relay.sinks.args import DIGEST_DEFAULT_MAX_LISTED
from air_relay.sinks.base import DigestSender, Sender, SendResult

log = structlog.get_logger(__name__)


class DigestSend:
    """The sender of one claim that carries a digest: each attempt sends the digest."""

    def __init__(self, sender: DigestSender, digest: Digest) -> None:
        self._sender = sender
        self.digest = digest

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        return await self._sender.send_digest(delivery, self.digest)


def is_digest_claim(delivery: ClaimedDelivery) -> bool:
    """Whether a claim goes through here: a digest sink's, or one carrying a digest."""
    return delivery.digest_id is not None or delivery.sink_digest is not None


class Digests:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def prepare(self, sender: Sender, delivery: ClaimedDelivery) -> Sender | None:
        """The sender this claim runs with, or None when the claim ends here (the delivery
        was held for a digest, or the database could not be asked: its lease then lapses
        and it is claimed again)."""
        try:
            if delivery.digest_id is not None:
                return await self._carrier(sender, delivery)
            return await self._route(sender, delivery)
        except DB_UNAVAILABLE as exc:
            log.warning(
                "digest_route_failed", delivery_id=str(delivery.id), error=type(exc).__name__
            )
            return None

    async def _carrier(self, sender: Sender, delivery: ClaimedDelivery) -> Sender | None:
        if delivery.sink_args is None:
            return sender  # the sink is gone: the claim ends dead, and its members with it
        digest = await store.seal(self._pool, delivery)
        if digest is None:
            # Not its window's carrier: on its own. (A member requeued without its carrier
            # leaves its digest, so it does not come here; this is a safety net.)
            return sender
        if not isinstance(sender, DigestSender):
            log.error("digest_not_supported", sink_type=delivery.sink_type)
            return None
        log.info(
            "digest_claimed",
            delivery_id=str(delivery.id),
            digest_id=str(digest.id),
            event_sink_id=str(delivery.event_sink_id),
            event_name=digest.event_name,
            count=digest.count,
        )
        return DigestSend(sender, digest)

    async def _route(self, sender: Sender, delivery: ClaimedDelivery) -> Sender | None:
        option = delivery.sink_digest
        if option is None or delivery.attempts > 0:
            return sender  # a retry of a delivery that already went out on its own
        try:
            route = await store.route(
                self._pool,
                delivery,
                int(option["window_seconds"]),
                int(option.get("max_listed", DIGEST_DEFAULT_MAX_LISTED)),
            )
        except DB_UNAVAILABLE:
            raise
        except Exception as exc:
            # Never let a digest fault lose an event: it goes out on its own.
            log.exception("digest_route_failed", delivery_id=str(delivery.id), **error_hint(exc))
            return sender
        if route is store.Route.SEND:
            return sender
        log.debug("delivery_held", delivery_id=str(delivery.id), route=route.value)
        return None

    async def complete(self, completion: Completion) -> bool:
        """Write a digest carrier's completion and its members'; whether it was kept."""
        kept, finished = await store.complete(self._pool, completion)
        if finished and completion.status in (DELIVERED, DEAD):
            sink_type = completion.delivery.sink_type
            self._metrics.deliveries.labels(sink_type, completion.status).inc(finished)
        return kept
