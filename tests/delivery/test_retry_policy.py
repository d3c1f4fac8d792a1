"""The retry decisions: in-claim retries, the durable schedule with its jitter, the verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from air_relay.config import RetryConfig
from air_relay.delivery.retry_policy import durable_delay, retry_in_claim, verdict
from air_relay.model import DEAD, DELIVERED, PENDING
from air_relay.sinks.base import SendResult

CFG = RetryConfig(schedule_seconds=[10, 100], jitter=0.2, backoff_max_seconds=5)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TRANSIENT = SendResult(ok=False, error="http_503", transient=True)
PERMANENT = SendResult(ok=False, error="http_404", transient=False)


def test_only_transient_failures_retry_within_the_claim() -> None:
    assert retry_in_claim(TRANSIENT, CFG)
    assert not retry_in_claim(PERMANENT, CFG)
    assert not retry_in_claim(SendResult(ok=True, status_code=200), CFG)


def test_a_retry_after_longer_than_the_in_claim_waits_ends_the_claim() -> None:
    short = SendResult(ok=False, transient=True, retry_after=5)
    long = SendResult(ok=False, transient=True, retry_after=5.5)
    assert retry_in_claim(short, CFG)
    assert not retry_in_claim(long, CFG)


@pytest.mark.parametrize(("claims", "step"), [(1, 10), (2, 100)])
def test_durable_delay_follows_the_schedule_within_the_jitter(claims: int, step: float) -> None:
    delays = [durable_delay(claims, CFG, None) for _ in range(200)]
    assert all(d is not None and step * 0.8 <= d <= step * 1.2 for d in delays)
    assert len(set(delays)) > 1  # jittered, not fixed


def test_the_schedule_used_up_means_no_delay() -> None:
    assert durable_delay(3, CFG, None) is None


def test_retry_after_lengthens_a_step_up_to_its_cap() -> None:
    capped = RetryConfig(schedule_seconds=[1], jitter=0.0, retry_after_max_seconds=60)
    assert durable_delay(1, capped, 30) == 30
    assert durable_delay(1, capped, 3600) == 60
    assert durable_delay(1, capped, 0.5) == 1


def test_verdicts() -> None:
    assert verdict(SendResult(ok=True), 1, CFG, NOW).status == DELIVERED
    assert verdict(PERMANENT, 1, CFG, NOW).status == DEAD
    rescheduled = verdict(TRANSIENT, 1, CFG, NOW)
    assert rescheduled.status == PENDING
    assert rescheduled.next_attempt_at is not None
    assert NOW + timedelta(seconds=8) <= rescheduled.next_attempt_at <= NOW + timedelta(seconds=12)
    used_up = verdict(TRANSIENT, 3, CFG, NOW)
    assert (used_up.status, used_up.next_attempt_at) == (DEAD, None)
