"""What every sender shares: the ``Sender`` protocol, the ``SendResult`` of one attempt, the
classification of HTTP answers and client errors (transient or permanent, metrics reason),
and ``post``, the one way a sender sends a request and reads its answer."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import aiohttp
from yarl import URL

from air_relay.model import ClaimedDelivery, Digest
from air_relay.redaction import redact_forms, redaction_forms
from air_relay.sinks.failures import classify

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
    # Why, in a few words, when there was no answer to keep: the host and the system's own
    # words ("certificate verify failed: self-signed certificate"), credentials redacted.
    error_detail: str | None = None


class Sender(Protocol):
    async def send(self, delivery: ClaimedDelivery) -> SendResult: ...


@runtime_checkable
class DigestSender(Protocol):
    """A sender that can send a storm digest (many held deliveries as one message) for the
    delivery that carries it: every sink type's sender."""

    async def send_digest(self, delivery: ClaimedDelivery, digest: Digest) -> SendResult: ...


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


def exception_failure(exc: BaseException, forms: Sequence[str] = (), where: str = "") -> SendResult:
    """A send that got no HTTP response, by its precise cause (``failures.classify``):
    transient, unless the URL itself is unusable."""
    failure = classify(exc, forms, where)
    return SendResult(
        ok=False,
        error=failure.error,
        reason=failure.reason,
        transient=failure.transient,
        error_detail=failure.detail,
    )


# Raised while building the request from the sink's arguments and the event: the same input
# fails the same way on every retry, so retrying only delays "dead" (by up to a day).
_DETERMINISTIC_ERRORS = (ValueError, TypeError, LookupError, AttributeError)


def crash_failure(exc: BaseException) -> SendResult:
    """A sender that raised instead of answering: permanent when retrying cannot help."""
    return SendResult(
        ok=False,
        error=f"internal_error:{type(exc).__name__}",
        reason="other",
        transient=not isinstance(exc, _DETERMINISTIC_ERRORS),
    )


def audit_text(text: str, secrets: Iterable[str | None]) -> str:
    """The first RESPONSE_BODY_LIMIT bytes of a response body for the audit row.

    Redacted before the cut: a secret straddling the cut would otherwise leave its first
    characters in the row. ``text`` must run at least the longest secret past the limit.
    """
    return _audit_text(text, redaction_forms(secrets))


def _audit_text(text: str, forms: Sequence[str]) -> str:
    head = redact_forms(text[: RESPONSE_BODY_LIMIT + _longest(forms)], forms)
    return head.encode("utf-8")[:RESPONSE_BODY_LIMIT].decode("utf-8", errors="ignore")


def _longest(forms: Sequence[str]) -> int:
    return max((len(form.encode("utf-8")) for form in forms), default=0)


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


@dataclass(frozen=True)
class Answer:
    """A sink's HTTP answer, as a sender's classifier sees it."""

    status: int
    text: str  # the body as read (up to the read limit); may hold the sink's secrets
    audit_body: str  # its head with the sink's secrets redacted: what the audit row keeps
    retry_after: float | None


def success_or_http_failure(answer: Answer) -> SendResult:
    """The plain HTTP rule: any 2xx is delivered, anything else an ``http_<status>`` failure."""
    if 200 <= answer.status < 300:
        return SendResult(ok=True, status_code=answer.status, response_body=answer.audit_body)
    return http_failure(answer.status, answer.audit_body, answer.retry_after)


def send_timeout(total: float, connect: float | None = None) -> aiohttp.ClientTimeout:
    """A send's timeout: ``total`` for all of it, of which connecting (DNS, TCP, TLS) may take
    ``connect``. A connect that runs out is ``timeout_connect``, anything later
    ``timeout_read``."""
    if connect is None or connect >= total:
        return aiohttp.ClientTimeout(total=total)
    return aiohttp.ClientTimeout(total=total, connect=connect)


def _where(url: str) -> str:
    """``host:port`` of a URL, without its user info, path or query (they may hold tokens)."""
    try:
        parsed = URL(url)
    except ValueError:
        return ""
    return f"{parsed.raw_host}:{parsed.port}" if parsed.raw_host else ""


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    secrets: Sequence[str | None],
    classify: Callable[[Answer], SendResult] = success_or_http_failure,
    read_limit: int | None = None,
) -> SendResult:
    """POST ``body``, read the head of the answer and classify it; a request that gets no
    answer is classified by ``exception_failure``. Redirects are never followed.

    ``secrets`` are the credentials this request carries: a sink that echoes them has them
    redacted from ``Answer.audit_body``. ``read_limit`` reads more than the audit row keeps,
    for a sender that must parse the answer.
    """
    # Every form of every credential, worked out once per request.
    forms = redaction_forms(secrets)
    limit = max(read_limit or 0, RESPONSE_BODY_LIMIT + _longest(forms))
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            text = await read_limited(resp, limit)
            return classify(
                Answer(
                    status=resp.status,
                    text=text,
                    audit_body=_audit_text(text, forms),
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return exception_failure(exc, forms, _where(url))
