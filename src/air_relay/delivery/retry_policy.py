"""The retry decisions, as functions of a send result and the configuration (no I/O; the
schedule's jitter is their only randomness): whether to try again within the claim (and after
how long), and the verdict that ends a claim (delivered, rescheduled along
``schedule_seconds``, or dead)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from tenacity import RetryCallState, wait_random_exponential

from air_relay.config import RetryConfig
from air_relay.model import DEAD, DELIVERED, PENDING
from air_relay.sinks.base import SendResult


def retry_in_claim(result: SendResult, cfg: RetryConfig) -> bool:
    """Whether a failed attempt is tried again within the claim.

    Only transient failures are. A Retry-After longer than the in-claim waits ends the claim:
    the durable schedule honours it instead of holding a lease and a task that long.
    """
    return (
        not result.ok
        and result.transient
        and (result.retry_after is None or result.retry_after <= cfg.backoff_max_seconds)
    )


class InClaimWait:
    """Tenacity's wait between the attempts of one claim: the sink's Retry-After when it
    gave one, otherwise exponential backoff with full jitter."""

    def __init__(self, cfg: RetryConfig) -> None:
        self._backoff = wait_random_exponential(
            multiplier=cfg.backoff_initial_seconds, max=cfg.backoff_max_seconds
        )

    def __call__(self, state: RetryCallState) -> float:
        last: SendResult | None = state.outcome.result() if state.outcome else None
        if last is not None and last.retry_after is not None:
            return last.retry_after
        return float(self._backoff(state))


def durable_delay(claims: int, cfg: RetryConfig, retry_after: float | None) -> float | None:
    """Seconds until the next claim after claim number ``claims`` failed; None = schedule done."""
    schedule = cfg.schedule_seconds
    if claims > len(schedule):
        return None
    delay = schedule[claims - 1] * random.uniform(1 - cfg.jitter, 1 + cfg.jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cfg.retry_after_max_seconds))
    return delay


@dataclass(frozen=True)
class Verdict:
    status: str  # DELIVERED, PENDING (rescheduled) or DEAD
    next_attempt_at: datetime | None  # when a rescheduled delivery is due again


def verdict(result: SendResult, claims: int, cfg: RetryConfig, now: datetime) -> Verdict:
    """How a claim ends, given its last attempt's result and how many claims it has had."""
    if result.ok:
        return Verdict(DELIVERED, None)
    delay = durable_delay(claims, cfg, result.retry_after)
    if result.transient and delay is not None:
        return Verdict(PENDING, now + timedelta(seconds=delay))
    return Verdict(DEAD, None)
