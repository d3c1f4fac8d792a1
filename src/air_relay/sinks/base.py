"""What every sender returns, and the HTTP failure classification they share (SPEC 4)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import aiohttp

from air_relay.db.repository import ClaimedDelivery
from air_relay.sinks.egress_guard import refused_in

RESPONSE_BODY_LIMIT = 2048
TRANSIENT_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True)
class SendResult:
    ok: bool
    status_code: int | None = None
    # Short text for the audit row: http_404, timeout, connection_refused, channel_not_found ...
    error: str | None = None
    # The metrics reason: client_error, server_error, rate_limited, auth_error, timeout,
    # connection_error, other.
    reason: str | None = None
    transient: bool = False
    response_body: str | None = None
    retry_after: float | None = None


class Sender(Protocol):
    sink_type: str

    async def send(self, delivery: ClaimedDelivery) -> SendResult: ...


@runtime_checkable
class PacedSender(Protocol):
    """A sender whose destination takes messages at a set pace (Slack: one per channel per
    second). Asked before a claim's first send how long this delivery would wait for its
    turn; a long wait is spent back in the queue, not holding a delivery worker."""

    def defer_seconds(self, delivery: ClaimedDelivery) -> float | None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def reason_for_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_error"
    if 500 <= status < 600:
        return "server_error"
    if 400 <= status < 500:
        return "client_error"
    return "other"


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or 500 <= status < 600


def http_failure(status: int, body: str | None, retry_after: float | None) -> SendResult:
    return SendResult(
        ok=False,
        status_code=status,
        error=f"http_{status}",
        reason=reason_for_status(status),
        transient=is_transient_status(status),
        response_body=body,
        retry_after=retry_after,
    )


# The SSRF guard refused the address: permanent, the sink's URL must change.
DESTINATION_NOT_ALLOWED = SendResult(
    ok=False, error="destination_not_allowed", reason="other", transient=False
)


def exception_failure(exc: BaseException) -> SendResult:
    """A send that got no HTTP response: transient, unless the URL itself is unusable."""
    if refused_in(exc) is not None:
        return DESTINATION_NOT_ALLOWED
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return SendResult(ok=False, error="timeout", reason="timeout", transient=True)
    if isinstance(exc, aiohttp.InvalidURL):
        return SendResult(ok=False, error="invalid_url", reason="other", transient=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        return SendResult(
            ok=False,
            error="connection_refused" if refused else "connection_error",
            reason="connection_error",
            transient=True,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return SendResult(
            ok=False, error="connection_error", reason="connection_error", transient=True
        )
    return SendResult(ok=False, error=type(exc).__name__, reason="other", transient=True)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``.

    A response body goes into the audit log and the log line; a sink that echoes the request
    (many test receivers do) would otherwise copy its own credentials there.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def audit_text(text: str, secrets: Iterable[str | None]) -> str:
    """The first RESPONSE_BODY_LIMIT bytes of a response body for the audit row.

    Redacted before the cut: a secret straddling the cut would otherwise leave its first
    characters in the row. ``text`` must run at least the longest secret past the limit.
    """
    head = redact(text[: RESPONSE_BODY_LIMIT + _longest(secrets)], secrets)
    return head.encode("utf-8")[:RESPONSE_BODY_LIMIT].decode("utf-8", errors="ignore")


async def read_audit_text(resp: aiohttp.ClientResponse, secrets: Sequence[str | None]) -> str:
    """A response body as the audit row keeps it: its head, the sink's own secrets redacted."""
    return audit_text(await read_limited(resp, RESPONSE_BODY_LIMIT + _longest(secrets)), secrets)


def _longest(secrets: Iterable[str | None]) -> int:
    return max((len(s.encode("utf-8")) for s in secrets if s), default=0)


async def read_limited(resp: aiohttp.ClientResponse, limit: int = RESPONSE_BODY_LIMIT) -> str:
    """The first ``limit`` bytes of a response body as text, never the whole of a huge one."""
    # One read returns what has arrived so far, which may be less than ``limit``.
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf).decode("utf-8", errors="replace")
